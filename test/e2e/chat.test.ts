/**
 * The Chat section on the offline demo model (WebGPU on SwiftShader): Enter sends and Shift+Enter makes a
 * new line; the answer streams; the Stop button and Esc end it after the current token, the partial
 * answer staying with its numbers ("stopped", tokens/s); editing the system prompt starts a new
 * conversation; text is shown as text, never as HTML.
 */
import { describe, expect, it } from 'vitest';
import { appUnderTest, screenshot, watchPage } from './browser.ts';

const app = appUnderTest();

describe('chat in the app', () => {
  it('streams, stops on the button and on Esc, keeps the partial answer; the system prompt resets the conversation', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 900 } });
    const { errors } = watchPage(page);
    await page.goto(`${app.url()}#/model`);
    await page.getByTestId('load-demo').click();
    await page.getByTestId('model-info').waitFor({ timeout: 120_000 });
    await page.getByTestId('tab-chat').click();
    const input = page.getByTestId('chat-input');
    await input.waitFor({ timeout: 30_000 });
    // XTuner's defaults in the controls; the demo's plain ChatML has no default system prompt.
    expect(await page.getByTestId('chat-temperature').inputValue()).toBe('0.1');
    expect(await page.getByTestId('chat-topP').inputValue()).toBe('0.75');
    expect(await page.getByTestId('chat-topK').inputValue()).toBe('40');
    expect(await page.getByTestId('chat-repetitionPenalty').inputValue()).toBe('1');
    expect(await page.getByTestId('chat-system').inputValue()).toBe('');
    // A long, varied answer so there is something to stop.
    await page.getByTestId('chat-maxNewTokens').fill('4000');
    await page.getByTestId('chat-temperature').fill('1');
    await page.getByTestId('chat-topK').fill('0');
    await page.getByTestId('chat-topK').dispatchEvent('change');
    await page.getByTestId('chat-temperature').dispatchEvent('change');
    await page.getByTestId('chat-maxNewTokens').dispatchEvent('change');

    const base = page.getByTestId('chat-base');
    const header = 'Base model\n› <b>Hi</b>\n';
    await input.fill('<b>Hi</b>');
    await input.press('Shift+Enter'); // a new line, not a send
    expect(await input.inputValue()).toBe('<b>Hi</b>\n');
    await input.fill('<b>Hi</b>');
    await input.press('Enter');
    const stop = page.getByTestId('chat-stop');
    await stop.waitFor({ timeout: 60_000 });
    await expect.poll(async () => (await base.innerText()).length, { timeout: 120_000 }).toBeGreaterThan(header.length + 2);
    await stop.click();
    await expect.poll(() => page.getByTestId('chat-send').isEnabled(), { timeout: 60_000 }).toBe(true);
    const stats = page.getByTestId('chat-stats-base');
    expect(await stats.innerText()).toMatch(/^\d+ tokens · [\d.]+ tokens\/s · stopped/);
    const tokens = Number((await stats.innerText()).split(' ')[0]);
    expect(tokens).toBeLessThan(4000);
    // The user's text is text: no <b> element was made of it.
    expect(await base.locator('b').count()).toBe(0);
    expect(await base.innerText()).toContain('› <b>Hi</b>');
    await screenshot(page, 'chat-stopped');

    // Esc stops too; the first (partial) answer is still in the conversation.
    await input.fill('More');
    await input.press('Enter');
    await stop.waitFor({ timeout: 60_000 });
    await expect.poll(async () => (await base.innerText()).split('› More')[1]?.length ?? 0, { timeout: 120_000 }).toBeGreaterThan(2);
    await page.keyboard.press('Escape');
    await expect.poll(() => page.getByTestId('chat-send').isEnabled(), { timeout: 60_000 }).toBe(true);
    expect(await page.getByTestId('chat-stats-base').count()).toBe(2);
    expect(await page.getByTestId('chat-stats-base').nth(1).innerText()).toMatch(/stopped/);
    expect(await base.innerText()).toContain('› <b>Hi</b>');

    // A new system prompt: a new conversation.
    await page.getByTestId('chat-system').fill('You are Nova, made by Ada.');
    await page.getByTestId('chat-system').dispatchEvent('change');
    await page.getByTestId('chat-notice').waitFor({ timeout: 30_000 });
    expect(await page.getByTestId('chat-notice').innerText()).toMatch(/new conversation/);
    expect(await base.innerText()).not.toContain('›');
    expect(errors).toEqual([]);
  }, 600_000);
});
