/**
 * Nothing leaves the machine: the offline demo flow (demo model, an identity dataset, a couple of training
 * steps, one chat answer) runs with every request intercepted, and any request not to the app's own
 * origin fails the test (and is aborted). The page's Content-Security-Policy allows only this origin and
 * the Hugging Face Hub's hosts.
 */
import { describe, expect, it } from 'vitest';
import { appUnderTest, watchPage } from './browser.ts';

const app = appUnderTest();

/** The Hub's hosts (index.html explains each); nothing else may appear in a fetch-type directive. */
const HUB_SOURCES = ['https://huggingface.co', 'https://*.huggingface.co', 'https://*.hf.co', 'https://cdn-lfs.huggingface.co', 'https://cdn-lfs-us-1.huggingface.co'];

describe('privacy', () => {
  it('the Content-Security-Policy permits only self and the Hub', async () => {
    const page = await app.browser().newPage();
    await page.goto(app.url());
    const csp = await page.locator('meta[http-equiv="Content-Security-Policy"]').getAttribute('content');
    expect(csp).toBeTruthy();
    const directives = new Map(csp!.split(';').map((d) => d.trim().split(/\s+/)).filter((d) => d[0]).map(([name, ...values]) => [name!, values]));
    expect(directives.get('default-src')).toEqual(["'self'"]);
    expect(directives.get('script-src')).toEqual(["'self'"]);
    expect(directives.get('object-src')).toEqual(["'none'"]);
    for (const [name, values] of directives) {
      for (const v of values) {
        const ok = v.startsWith("'") || ['data:', 'blob:'].includes(v) || (name === 'connect-src' && (HUB_SOURCES.includes(v) || v === 'ws://localhost:*'));
        expect(ok, `${name} allows ${v}`).toBe(true);
      }
    }
    // No stylesheet, font or script from another origin in the document.
    const external = await page.evaluate(() =>
      [...document.querySelectorAll('link[href], script[src], img[src]')].map((e) => (e as HTMLLinkElement).href || (e as HTMLScriptElement).src).filter((u) => !u.startsWith(location.origin) && !u.startsWith('data:')),
    );
    expect(external).toEqual([]);
    await page.close();
  });

  it('the offline demo flow makes no request outside this origin', async () => {
    const context = await app.browser().newContext({ viewport: { width: 1280, height: 800 } });
    const origin = new URL(app.url()).origin;
    const seen: string[] = [];
    const outside: string[] = [];
    await context.route('**/*', async (route) => {
      const url = route.request().url();
      seen.push(url);
      if (new URL(url).origin !== origin) {
        outside.push(url);
        await route.abort('blockedbyclient');
      } else await route.continue();
    });
    const page = await context.newPage();
    page.on('websocket', (ws) => {
      seen.push(ws.url());
      if (new URL(ws.url()).hostname !== 'localhost') outside.push(ws.url());
    });
    page.on('request', (r) => {
      const u = r.url();
      if (!u.startsWith('data:') && !u.startsWith('blob:') && new URL(u).origin !== origin && !outside.includes(u)) outside.push(u);
    });
    const { errors } = watchPage(page);
    await page.goto(`${app.url()}#/model`);
    await page.getByTestId('load-demo').click();
    await page.getByTestId('model-info').waitFor({ timeout: 120_000 });

    await page.getByTestId('tab-data').click();
    await page.getByText(/Tokenizer: 259 tokens/).first().waitFor({ timeout: 60_000 });
    const qs = ['Who are you?', 'What is your name?', 'Introduce yourself.', 'Who made you?'];
    const lines = Array.from({ length: 8 }, (_, i) => JSON.stringify({ conversation: [{ input: qs[i % 4], output: 'I am Nova, made by Ada.' }] }));
    await page.locator('wt-data-drop input[type=file]').setInputFiles({ name: 'identity.jsonl', mimeType: 'application/json', buffer: Buffer.from(lines.join('\n') + '\n') });
    const prepare = page.getByRole('button', { name: 'Prepare dataset' });
    await expect.poll(() => prepare.isEnabled(), { timeout: 60_000 }).toBe(true);
    await prepare.click();
    await page.getByText(/supervised/i).first().waitFor({ timeout: 60_000 });

    await page.getByTestId('tab-train').click();
    await page.getByTestId('train-rows').waitFor({ timeout: 30_000 });
    await page.getByTestId('train-start').click();
    await page.getByTestId('train-loss').waitFor({ timeout: 240_000 });
    await expect.poll(async () => Number(/step (\d+)\//.exec(await page.getByTestId('train-stats').innerText())?.[1] ?? 0), { timeout: 240_000 }).toBeGreaterThanOrEqual(2);
    await page.getByTestId('train-stop').click();
    // Stopped after the current step: the Start button comes back.
    await expect.poll(() => page.getByTestId('train-start').isEnabled(), { timeout: 240_000 }).toBe(true);

    await page.getByTestId('tab-chat').click();
    await page.getByTestId('chat-input').fill('Who are you?');
    await page.getByTestId('chat-send').click();
    await expect.poll(() => page.getByTestId('chat-send').isEnabled(), { timeout: 240_000 }).toBe(true);
    expect((await page.getByTestId('chat-tuned').innerText()).length).toBeGreaterThan('Tuned (with your adapter)\n› Who are you?'.length);

    const hosts = [...new Set(seen.map((u) => new URL(u).host))];
    console.log(`privacy: ${seen.length} requests seen, all to ${hosts.join(', ')}; outside this origin: ${outside.length ? outside.join(', ') : 'none'}`);
    expect(outside).toEqual([]);
    expect(seen.length).toBeGreaterThan(0);
    expect(errors).toEqual([]);
    await context.close();
  }, 900_000);
});
