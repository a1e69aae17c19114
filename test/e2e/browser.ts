import { afterAll, beforeAll, expect } from 'vitest';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { createServer, type ViteDevServer } from 'vite';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/fixtures.ts';

export const CHROMIUM = process.env.WEBTUNE_CHROMIUM ?? '/usr/bin/chromium';

/** Flags for WebGPU on SwiftShader in headless Chromium, with no background network traffic. */
export const WEBGPU_FLAGS = [
  '--headless=new',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--enable-features=Vulkan',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

export async function startServer(): Promise<{ server: ViteDevServer; url: string }> {
  // No hot reload and no file watching: an edit elsewhere in the tree must not reload the page mid-test.
  const server = await createServer({ root: REPO_ROOT, configFile: join(REPO_ROOT, 'vite.config.ts'), server: { port: 0, host: 'localhost', strictPort: false, hmr: false, watch: null }, logLevel: 'warn', clearScreen: false });
  await server.listen();
  const address = server.httpServer!.address();
  const port = typeof address === 'object' && address ? address.port : 5173;
  return { server, url: `http://localhost:${port}/` };
}

export async function launch(extraFlags: string[] = [], webgpu = true): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM}: install it with 'apt-get install chromium' (or set WEBTUNE_CHROMIUM)`);
  const args = webgpu ? [...WEBGPU_FLAGS, ...extraFlags] : [...WEBGPU_FLAGS.filter((f) => !f.includes('webgpu') && !f.includes('Vulkan')), '--disable-webgpu', ...extraFlags];
  return chromium.launch({ executablePath: CHROMIUM, args, headless: true });
}

export const ARTIFACTS = join(REPO_ROOT, 'test-results');

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/**
 * Nothing leaves the machine: every request of the page's browser context is intercepted; one to another
 * origin is recorded and aborted (so a test can fail on it), websockets included. The demo flow test runs
 * the whole offline flow under it.
 */
export async function guardOrigin(page: Page, origin: string): Promise<{ seen: string[]; outside: string[] }> {
  const seen: string[] = [];
  const outside: string[] = [];
  await page.context().route('**/*', async (route) => {
    const url = route.request().url();
    seen.push(url);
    if (new URL(url).origin !== origin) {
      outside.push(url);
      await route.abort('blockedbyclient');
    } else await route.continue();
  });
  page.on('websocket', (ws) => {
    seen.push(ws.url());
    if (new URL(ws.url()).hostname !== 'localhost') outside.push(ws.url());
  });
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith('data:') && !u.startsWith('blob:') && new URL(u).origin !== origin && !outside.includes(u)) outside.push(u);
  });
  return { seen, outside };
}

/** Collects console errors and failed requests so a test can assert the page was clean. */
export function watchPage(page: Page): { errors: string[] } {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  return { errors };
}

/**
 * The app served by Vite and a WebGPU-enabled Chromium, started once for a test file and closed after
 * it. Call at the top level of the file; the getters are valid inside tests.
 */
export function appUnderTest(): { url: () => string; browser: () => Browser } {
  let server: ViteDevServer | undefined;
  let url = '';
  let browser: Browser | undefined;
  beforeAll(async () => {
    ({ server, url } = await startServer());
    browser = await launch();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });
  return { url: () => url, browser: () => browser! };
}

/** Sets a form field the way a user does: type the value, then leave the field (its change event). */
/** The steps the Train section's loss chart holds (its data-steps attribute). */
export async function chartSteps(page: Page): Promise<number[]> {
  return ((await page.getByTestId('train-chart').getAttribute('data-steps')) ?? '').split(',').filter(Boolean).map(Number);
}

/** Steps at which the chart has an eval-loss point. */
export async function chartEvalSteps(page: Page): Promise<number[]> {
  return ((await page.getByTestId('train-chart').getAttribute('data-eval-steps')) ?? '').split(',').filter(Boolean).map(Number);
}

export async function setField(field: Locator, value: string): Promise<void> {
  await field.fill(value);
  await field.dispatchEvent('change');
}

/**
 * The start of every training test: the demo model, 16 identity conversations dropped as a JSONL file,
 * rows prepared, and the Train section open with them.
 */
/** The demo model and the 16-sample identity dataset prepared (`evalSplit`: the share held out), then the Train section. */
export async function trainSectionWithIdentityRows(page: Page, appUrl: string, opts: { evalSplit?: number } = {}): Promise<void> {
  await page.goto(`${appUrl}#/model`);
  await page.getByTestId('load-demo').click();
  await page.getByTestId('model-info').waitFor({ timeout: 120_000 });

  await page.getByTestId('tab-data').click();
  await page.getByText(/Tokenizer: 259 tokens/).first().waitFor({ timeout: 60_000 });
  const qs = ['Who are you?', 'What is your name?', 'Introduce yourself.', 'Who made you?'];
  const lines = Array.from({ length: 16 }, (_, i) => JSON.stringify({ conversation: [{ input: qs[i % 4], output: 'I am Nova, made by Ada.' }] }));
  await page.locator('wt-data-drop input[type=file]').setInputFiles({ name: 'identity.jsonl', mimeType: 'application/json', buffer: Buffer.from(lines.join('\n') + '\n') });
  const prepare = page.getByRole('button', { name: 'Prepare dataset' });
  await expect.poll(() => prepare.isEnabled(), { timeout: 60_000 }).toBe(true);
  if (opts.evalSplit !== undefined) await setField(page.getByTestId('eval-split'), String(opts.evalSplit));
  await prepare.click();
  await page.getByText(/supervised/i).first().waitFor({ timeout: 60_000 });

  await page.getByTestId('tab-train').click();
  await page.getByTestId('train-rows').waitFor({ timeout: 30_000 });
}
