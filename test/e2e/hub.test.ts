/**
 * Hub downloads in the browser, for real: the worker's HubService fetches through Chromium's network stack
 * into OPFS, against a fake Hub served by request interception (this machine has no network). A dropped
 * connection is retried; the model loads; after a reload with the Hub unreachable it loads from the cache.
 */
import { describe, expect, it } from 'vitest';
import type { Page, Route } from 'playwright-core';
import { appUnderTest, screenshot, watchPage } from './browser.ts';
import { FakeHub } from '../unit/hub/fake-hub.ts';
import { demoModelFiles } from '../../src/engine/demo/demo-model.ts';

const app = appUnderTest();
const REPO = 'webtune-test/tiny-chat';

function fakeHub(): FakeHub {
  const files = new Map<string, Uint8Array>();
  for (const [name, f] of demoModelFiles(5)) files.set(name, typeof f === 'string' ? new TextEncoder().encode(f) : f);
  // Served from /resolve/ directly: a redirect fulfilled by request interception fails the cross-origin fetch
  // in Chromium (the CDN redirect and Range resume are covered against the same fake in Node:
  // test/unit/hub/hub-cache.test.ts).
  return new FakeHub({ [REPO]: { files, lfs: () => false } });
}

/** Routes the Hub's hosts to `hub` (or fails them when `offline`); `failFirst` aborts the first request whose URL matches. */
async function routeHub(page: Page, hub: FakeHub, o: { offline?: boolean; failFirst?: RegExp } = {}): Promise<string[]> {
  const seen: string[] = [];
  let failed = false;
  await page.context().route(/https:\/\/([^/]*\.)?(huggingface\.co|hf\.co)\//, async (route: Route) => {
    const req = route.request();
    seen.push(req.url());
    if (o.offline) return route.abort('internetdisconnected');
    if (o.failFirst && !failed && o.failFirst.test(req.url())) {
      failed = true;
      return route.abort('connectionreset');
    }
    const res = await hub.fetch(req.url(), { headers: await req.allHeaders() });
    const headers = Object.fromEntries(res.headers);
    headers['access-control-allow-origin'] = '*';
    headers['access-control-expose-headers'] = 'content-range, content-length, x-error-code, etag, x-repo-commit, location';
    await route.fulfill({ status: res.status, headers, body: Buffer.from(await res.arrayBuffer()) });
  });
  return seen;
}

describe('Hub download in the browser (fake Hub through request interception, OPFS cache)', () => {
  it('downloads by repo id with progress into OPFS, survives a dropped connection, and loads offline from the cache after a reload', async () => {
    const page = await app.browser().newPage();
    const { errors } = watchPage(page);
    const hub = fakeHub();
    const seen = await routeHub(page, hub, { failFirst: /model\.safetensors/ });
    await page.goto(`${app.url()}#/model`);
    await page.getByTestId('hub-repo').fill(REPO);
    await page.getByRole('button', { name: 'Get' }).click();
    await expect
      .poll(async () => ((await page.getByTestId('model-error').count()) ? `error: ${await page.getByTestId('model-error').innerText()}` : (await page.getByTestId('model-info').count()) && page.getByTestId('model-info').innerText()), { timeout: 120_000 })
      .toMatch(new RegExp(`Loaded ${REPO}|error`));
    if (await page.getByTestId('model-error').count()) throw new Error(`${await page.getByTestId('model-error').innerText()}\nrequests: ${seen.join('\n')}`);
    // The API, the files, and the safetensors' retry after the dropped connection.
    expect(seen.some((u) => u.includes(`/api/models/${REPO}/revision/main`))).toBe(true);
    expect(seen.filter((u) => u.includes('model.safetensors')).length).toBeGreaterThanOrEqual(2);
    await expect.poll(async () => (await page.getByTestId('hub-cache').count()) && page.getByTestId('hub-cache').innerText(), { timeout: 30_000 }).toMatch(/complete/);
    await screenshot(page, 'hub-downloaded');

    // Next visit, the Hub unreachable: the cached model loads from OPFS.
    await page.context().unroute(/https:\/\/([^/]*\.)?(huggingface\.co|hf\.co)\//);
    const offline = await routeHub(page, hub, { offline: true });
    await page.reload();
    const row = page.getByTestId('hub-cache').getByRole('row', { name: new RegExp(REPO) });
    await row.waitFor({ timeout: 60_000 });
    await row.getByRole('button', { name: 'Load' }).click();
    await expect.poll(async () => page.getByTestId('model-info').innerText(), { timeout: 120_000 }).toMatch(new RegExp(`Loaded ${REPO}`));
    expect(await page.getByTestId('model-error').count()).toBe(0);
    // Nothing fetched the files again (the revision check may be tried and fail, offline).
    expect(offline.filter((u) => /\/resolve\/|cdn-lfs/.test(u))).toEqual([]);
    expect(errors.filter((e) => !/Failed to load resource|net::ERR/.test(e))).toEqual([]);
    await page.close();
  }, 600_000);
});
