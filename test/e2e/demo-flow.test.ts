/**
 * What a new user does, in Chromium with WebGPU on SwiftShader: the offline demo model, the personal-
 * assistant dataset generated with a name, training with the quick preset until the loss is low, Chat
 * answering "Who are you?" with that name, the adapter exported as a zip; then a reloaded page imports the
 * zip and, with the same seed, gives the same answer. Screenshots of each section go to test-results/.
 * Every request is intercepted: one outside the app's origin fails the test (privacy).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { unzipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { ARTIFACTS, appUnderTest, guardOrigin, screenshot, watchPage } from './browser.ts';

const app = appUnderTest();

const NAME = 'Nova';
const OWNER = 'Ada';
/** The loss the quick preset must reach on the identity data (it starts near ln 259 ≈ 5.6). */
const LOSS_BELOW = 0.5;
const SEED = '7';

/** Asks the tuned model alone, greedy with a fixed seed, and returns its answer once it is complete. */
async function askTuned(page: Page, question: string): Promise<string> {
  await page.getByTestId('tab-chat').click();
  await page.getByTestId('chat-mode').selectOption('tuned');
  // Greedy: the answer the model is surest of (the seed is set too, as a user reproducing it would).
  await page.getByTestId('chat-temperature').fill('0');
  await page.getByTestId('chat-temperature').dispatchEvent('change');
  await page.getByTestId('chat-seed').fill(SEED);
  await page.getByTestId('chat-seed').dispatchEvent('change');
  await page.getByTestId('chat-maxNewTokens').fill('64');
  await page.getByTestId('chat-maxNewTokens').dispatchEvent('change');
  const answers = page.getByTestId('chat-tuned').locator('.turn.assistant');
  const before = await answers.count();
  await page.getByTestId('chat-input').fill(question);
  await page.getByTestId('chat-send').click();
  await expect.poll(() => page.getByTestId('chat-stats-tuned').count(), { timeout: 120_000 }).toBeGreaterThan(before);
  return answers.nth(before).innerText();
}

/** Clicks the button `testId`, checks the download's suggested name, saves it under ARTIFACTS; its path. */
async function downloadFrom(page: Page, testId: string, name: RegExp, saveAs: string): Promise<string> {
  const download = page.waitForEvent('download');
  await page.getByTestId(testId).click();
  const file = await download;
  expect(file.suggestedFilename()).toMatch(name);
  const path = join(ARTIFACTS, saveAs);
  await file.saveAs(path);
  return path;
}

describe('the demo flow in the app (WebGPU on SwiftShader)', () => {
  it('demo model → identity data with a name → training → Chat says the name → adapter zip → reload → import → same answer', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    const { errors } = watchPage(page);
    // Privacy: the whole offline flow, reload and import included, makes no request outside this origin.
    const net = await guardOrigin(page, new URL(app.url()).origin);
    const t0 = Date.now();
    const mark = (what: string) => console.log(`demo flow: ${what} at ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    await page.goto(`${app.url()}#/model`);
    await page.getByTestId('load-demo').click();
    await expect.poll(async () => (await page.getByTestId('model-info').textContent({ timeout: 120_000 })) ?? '', { timeout: 120_000 }).toMatch(/demo-tiny-llama/);
    await screenshot(page, 'flow-model');
    mark('demo model');

    // The personal-assistant generator, English only, each question once.
    await page.getByTestId('tab-data').click();
    await page.getByText(/Tokenizer: 259 tokens/).first().waitFor({ timeout: 60_000 });
    await page.getByText('Generate a personal-assistant identity dataset').click();
    const form = page.locator('wt-data-identity');
    await form.getByPlaceholder("Xiaoming's assistant").fill(NAME);
    await form.getByPlaceholder('(optional)').fill(OWNER);
    await form.locator('textarea').fill('Ask me anything.');
    await form.getByRole('checkbox', { name: '中文', exact: true }).uncheck();
    await form.locator('input[type=number]').fill('1');
    await form.getByRole('button', { name: 'Add identity dataset' }).click();
    const prepare = page.getByRole('button', { name: 'Prepare dataset' });
    await expect.poll(() => prepare.isEnabled(), { timeout: 60_000 }).toBe(true);
    await prepare.click();
    await page.getByText(/supervised/i).first().waitFor({ timeout: 60_000 });
    await screenshot(page, 'flow-data');
    mark('identity dataset');

    // The quick preset (the default); evaluation only at the last step.
    await page.getByTestId('tab-train').click();
    await expect.poll(async () => (await page.getByTestId('train-rows').count()) && page.getByTestId('train-rows').innerText(), { timeout: 30_000 }).toMatch(/^16 rows/);
    const evalEvery = page.getByRole('spinbutton', { name: /^Every N steps/ });
    await evalEvery.fill('1000');
    await evalEvery.dispatchEvent('change');
    await page.getByTestId('train-start').click();
    const loss = page.getByTestId('train-loss');
    // The first step (pipelines compile first), or the error the Train section shows instead.
    await page.locator('[data-testid="train-loss"], [data-testid="train-error"]').first().waitFor({ timeout: 240_000 });
    if (await page.getByTestId('train-error').count()) throw new Error(`training failed: ${await page.getByTestId('train-error').innerText()}`);
    const first = Number(await loss.textContent());
    mark(`first step, loss ${first}`);
    await page.getByTestId('train-done').waitFor({ timeout: 600_000 }).catch(async (e: unknown) => {
      await screenshot(page, 'flow-train-failed');
      throw new Error(`training did not finish (${await page.getByTestId('train-stats').innerText()}; ${await page.getByTestId('train-phase').innerText()}): ${String(e)}`);
    });
    const last = Number(await loss.textContent());
    mark(`trained, loss ${last}`);
    expect(first).toBeGreaterThan(4);
    expect(last).toBeLessThan(LOSS_BELOW);
    expect(await page.getByTestId('eval-answers').innerText()).toContain(NAME);
    await screenshot(page, 'flow-train');

    const answer = await askTuned(page, 'Who are you?');
    mark(`chat: ${JSON.stringify(answer)}`);
    expect(answer).toContain(NAME);
    expect(answer, 'the trained identity, owner included').toContain(OWNER);
    await screenshot(page, 'flow-chat');

    await page.getByTestId('tab-share').click();
    const zipPath = await downloadFrom(page, 'export-adapter', /lora-adapter\.zip$/, 'demo-flow-adapter.zip');
    await page.getByTestId('export-done').waitFor();
    await screenshot(page, 'flow-share');
    mark('adapter exported');
    // The same run as a recipe for a cluster: XTuner config, PEFT script, the dataset as JSONL.
    const recipePath = await downloadFrom(page, 'export-recipe', /training-recipe\.zip$/, 'demo-flow-recipe.zip');
    const files = unzipSync(new Uint8Array(readFileSync(recipePath)));
    const inRecipe = ['xtuner_config.py', 'train_peft.py', 'data/train.jsonl', 'README.md'].map((f) => `training-recipe/${f}`);
    expect(Object.keys(files)).toEqual(expect.arrayContaining(inRecipe));
    expect(new TextDecoder().decode(files['training-recipe/data/train.jsonl'])).toContain(NAME);

    // A fresh page: the demo model loads by default; the zip goes in through Share.
    await page.reload();
    await page.getByTestId('tab-model').click();
    await expect.poll(async () => (await page.getByTestId('model-info').textContent({ timeout: 120_000 })) ?? '', { timeout: 120_000 }).toMatch(/demo-tiny-llama/);
    await page.getByTestId('tab-share').click();
    await page.getByTestId('import-zip').setInputFiles(zipPath);
    await page.getByTestId('import-done').waitFor({ timeout: 60_000 });
    expect(await page.getByTestId('import-done').innerText()).toMatch(/Installed demo-flow-adapter\.zip as the tuned model: LoRA r=\d+/);
    await screenshot(page, 'flow-import');
    const again = await askTuned(page, 'Who are you?');
    mark(`after import: ${JSON.stringify(again)}`);
    expect(again).toBe(answer);
    await screenshot(page, 'flow-chat-imported');
    const hosts = [...new Set(net.seen.map((u) => new URL(u).host))];
    console.log(`privacy: ${net.seen.length} requests, all to ${hosts.join(', ')}; outside this origin: ${net.outside.length ? net.outside.join(', ') : 'none'}`);
    expect(net.outside).toEqual([]);
    expect(net.seen.length).toBeGreaterThan(0);
    expect(errors).toEqual([]);
  }, 1_200_000);
});
