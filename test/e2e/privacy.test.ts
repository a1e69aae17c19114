/**
 * Nothing leaves the machine. The page's Content-Security-Policy allows only this origin and the Hugging
 * Face Hub's hosts (here). Requests themselves are intercepted through the whole offline demo flow — demo
 * model, identity data, training, chat, adapter export, reload, import — in demo-flow.test.ts (guardOrigin):
 * any request outside the app's origin fails that test.
 */
import { describe, expect, it } from 'vitest';
import { appUnderTest } from './browser.ts';

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
});
