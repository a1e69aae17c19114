import { describe, expect, it } from 'vitest';
import { appUnderTest, screenshot, watchPage } from './browser.ts';

const app = appUnderTest();

describe('the demo flow in the app (WebGPU on SwiftShader)', () => {
  it('demo model → identity data → training lowers the loss → chat streams → adapter zip downloads', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    const { errors } = watchPage(page);
    await page.goto(`${app.url()}#/model`);
    await page.getByTestId('load-demo').click();
    await page.getByTestId('model-info').waitFor({ timeout: 120_000 });
    expect(await page.getByTestId('model-info').textContent()).toMatch(/demo-tiny-llama/);
    await screenshot(page, 'flow-model');

    await page.getByTestId('tab-data').click();
    await page.getByText(/Tokenizer: 259 tokens/).first().waitFor({ timeout: 60_000 });
    const qs = ['Who are you?', 'What is your name?', 'Introduce yourself.', 'Who made you?'];
    const lines = Array.from({ length: 16 }, (_, i) => JSON.stringify({ conversation: [{ input: qs[i % 4], output: 'I am Nova, made by Ada.' }] }));
    await page.locator('wt-data-drop input[type=file]').setInputFiles({ name: 'identity.jsonl', mimeType: 'application/json', buffer: Buffer.from(lines.join('\n') + '\n') });
    const prepare = page.getByRole('button', { name: 'Prepare dataset' });
    await expect.poll(() => prepare.isEnabled(), { timeout: 60_000 }).toBe(true);
    await prepare.click();
    await page.getByText(/supervised/i).first().waitFor({ timeout: 60_000 });

    await page.getByTestId('tab-train').click();
    await page.getByTestId('train-rows').waitFor({ timeout: 30_000 });
    await page.getByTestId('train-start').click();
    const loss = page.getByTestId('train-loss');
    await loss.waitFor({ timeout: 240_000 });
    const first = Number(await loss.textContent());
    await page.getByTestId('train-done').waitFor({ timeout: 600_000 });
    const last = Number(await loss.textContent());
    expect(last).toBeLessThan(first);
    // Evaluation prompts (default "Who are you?" every 4 steps) were answered while training.
    expect(await page.getByTestId('eval-answers').innerText()).toMatch(/step 4[\s\S]*Who are you\?/);
    await screenshot(page, 'flow-train');

    await page.getByTestId('tab-chat').click();
    await page.getByTestId('chat-input').fill('Who are you?');
    await page.getByTestId('chat-send').click();
    await expect.poll(async () => (await page.getByTestId('chat-tuned').innerText()).length, { timeout: 240_000 }).toBeGreaterThan('Tuned (with your adapter)\n› Who are you?'.length);
    await expect.poll(() => page.getByTestId('chat-send').isEnabled(), { timeout: 240_000 }).toBe(true);
    await screenshot(page, 'flow-chat');

    await page.getByTestId('tab-share').click();
    const download = page.waitForEvent('download');
    await page.getByTestId('export-adapter').click();
    const file = await download;
    expect(file.suggestedFilename()).toMatch(/lora-adapter\.zip$/);
    await page.getByTestId('export-done').waitFor();
    await screenshot(page, 'flow-share');
    expect(errors).toEqual([]);
  }, 1_200_000);
});
