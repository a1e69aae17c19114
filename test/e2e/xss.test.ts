/**
 * Dataset text is rendered as text, never as HTML: a row carrying markup shows the markup in the data
 * studio's preview, and none of it runs.
 */
import { describe, expect, it } from 'vitest';
import { appUnderTest, watchPage } from './browser.ts';

const app = appUnderTest();

describe('no HTML from datasets', () => {
  it('a row with <img onerror> and <script> shows as text in the data preview; nothing executes', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 800 } });
    const { errors } = watchPage(page);
    await page.goto(`${app.url()}#/data`);
    const payload = `<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script><b>bold?</b>`;
    const rows = [
      { instruction: payload, output: `fine <svg onload="window.__xss = 3"></svg>` },
      { instruction: 'plain question', output: 'plain answer' },
    ];
    await page.locator('wt-data-drop input[type=file]').setInputFiles({ name: 'hostile.jsonl', mimeType: 'application/json', buffer: Buffer.from(rows.map((r) => JSON.stringify(r)).join('\n') + '\n') });
    const prepare = page.getByRole('button', { name: 'Prepare dataset' });
    await expect.poll(() => prepare.isEnabled(), { timeout: 60_000 }).toBe(true);
    await prepare.click();
    await page.getByText(/supervised/i).first().waitFor({ timeout: 60_000 });
    // The markup appears literally in the rendered sample…
    const text = page.locator('wt-data-sample-viewer .text').first();
    await text.waitFor({ timeout: 30_000 });
    let shown = '';
    for (let i = 0; i < rows.length; i++) {
      shown = (await text.innerText()).replace(/\s+/g, '');
      if (shown.includes('onerror')) break;
      await page.getByRole('button', { name: 'next sample' }).click();
      await expect.poll(async () => (await text.innerText()).replace(/\s+/g, '')).not.toBe(shown);
    }
    expect(shown).toContain('<imgsrc=xonerror="window.__xss=1"><script>window.__xss=2</script><b>bold?</b>');
    // …and no element was created from it, and nothing ran.
    const created = await page.evaluate(() => {
      const found: string[] = [];
      const walk = (root: Document | ShadowRoot) => {
        for (const el of root.querySelectorAll('img[src="x"], script, svg[onload], b')) if (!(el instanceof HTMLScriptElement && el.type === 'module')) found.push(el.outerHTML.slice(0, 80));
        for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
      };
      walk(document);
      return found;
    });
    expect(created.filter((h) => /xss|bold\?/.test(h))).toEqual([]);
    expect(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss)).toBeUndefined();
    expect(errors).toEqual([]);
    await page.close();
  }, 300_000);
});
