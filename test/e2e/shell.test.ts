import { describe, expect, it } from 'vitest';
import { appUnderTest, launch, screenshot, watchPage } from './browser.ts';

const app = appUnderTest();

describe('app shell in Chromium with WebGPU (SwiftShader)', () => {
  it('loads, shows the adapter in the badge, and runs a matmul in the worker', async () => {
    const page = await app.browser().newPage();
    const { errors } = watchPage(page);
    await page.goto(app.url());
    const adapter = page.getByTestId('gpu-adapter');
    await expect.poll(async () => adapter.textContent(), { timeout: 60_000 }).toMatch(/swiftshader/i);
    // Each curated card predicts its training memory with the Train settings (planned from its bundled config.json).
    const plan = page.getByTestId('plan-internlm/internlm2-chat-1_8b');
    await expect.poll(async () => plan.textContent(), { timeout: 60_000 }).toMatch(/≈\d+(\.\d+)? GiB GPU to train · (fits|over) 8\.00 GiB/);
    await page.getByTestId('plan-seq-len').fill('256');
    await page.getByTestId('plan-seq-len').dispatchEvent('change');
    await expect.poll(async () => plan.textContent(), { timeout: 30_000 }).toMatch(/fits 8\.00 GiB/);
    for (const id of ['model', 'data', 'train', 'chat', 'share']) {
      await page.getByTestId(`tab-${id}`).click();
      await page.getByTestId(`section-${id}`).waitFor();
      await screenshot(page, `shell-${id}`);
    }
    await page.getByTestId('gpu-badge').click();
    await page.getByTestId('gpu-selftest').click();
    const result = page.getByTestId('gpu-selftest-result');
    await expect.poll(async () => result.textContent(), { timeout: 60_000 }).toMatch(/passed|FAILED/);
    expect(await result.textContent()).toMatch(/^passed/);
    await screenshot(page, 'shell-gpu-details');

    // The page's own check above compares in the page; check the worker's numbers from here too.
    const [M, N, K] = [33, 70, 45];
    // A string, not a function: vitest would rewrite a dynamic import() inside a function body.
    const out = (await page.evaluate(`(async () => {
      const { getEngine } = await import('/src/ui/engine-client.ts');
      const [M, N, K] = [${M}, ${N}, ${K}];
      const a = Float32Array.from({ length: M * K }, (_, i) => ((i * 7919) % 13) - 6);
      const b = Float32Array.from({ length: N * K }, (_, i) => ((i * 104729) % 11) - 5);
      const { c } = await getEngine().matmul({ a, b, M, N, K, transB: true });
      return { a: [...a], b: [...b], c: [...c] };
    })()`)) as { a: number[]; b: number[]; c: number[] };
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += out.a[m * K + k]! * out.b[n * K + k]!;
        expect(out.c[m * N + n]).toBe(s); // small integers: exact in f32
      }
    expect(errors).toEqual([]);
  });

  it('light/dark theme: chosen in the header, applied to the whole page, kept across reloads', async () => {
    const page = await app.browser().newPage();
    const { errors } = watchPage(page);
    await page.emulateMedia({ colorScheme: 'light' });
    await page.goto(app.url());
    const choice = page.getByTestId('theme-choice');
    await choice.waitFor();
    // The app's background as painted (the token is set on <html>, inherited into every shadow root).
    const background = () => page.evaluate(`getComputedStyle(document.querySelector('wt-app')).backgroundColor`);
    expect(await background()).toBe('rgb(255, 255, 255)');
    await choice.selectOption('dark');
    await expect.poll(background).toBe('rgb(21, 23, 27)');
    await screenshot(page, 'shell-dark');
    // Stored: a reload opens dark although the system says light.
    await expect.poll(async () => (await page.reload(), await page.getByTestId('theme-choice').inputValue()), { timeout: 30_000 }).toBe('dark');
    await expect.poll(background).toBe('rgb(21, 23, 27)');
    // 'System' follows the browser's scheme again.
    await page.getByTestId('theme-choice').selectOption('system');
    await expect.poll(background).toBe('rgb(255, 255, 255)');
    await page.emulateMedia({ colorScheme: 'dark' });
    await expect.poll(background).toBe('rgb(21, 23, 27)');
    expect(errors).toEqual([]);
    await page.close();
  });

  it('every control of every section has an accessible name, and the sections are reachable from the keyboard', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 800 } });
    const { errors } = watchPage(page);
    await page.goto(app.url());
    await page.getByTestId('model-info').waitFor({ timeout: 60_000 });
    for (const id of ['model', 'data', 'train', 'chat', 'share']) {
      // Keyboard: focus the section's tab and press Enter (no mouse).
      await page.getByTestId(`tab-${id}`).focus();
      await page.keyboard.press('Enter');
      await page.getByTestId(`section-${id}`).waitFor();
      // The accessibility tree as a screen reader gets it (shadow roots included): no unnamed control.
      const tree = await page.locator('wt-app').ariaSnapshot();
      const unnamed = tree.split('\n').filter((l) => /^\s*- (button|textbox|combobox|spinbutton|checkbox|slider|link|radio)\s*(\[|:|$)/.test(l));
      expect(unnamed, `unnamed controls in ${id}`).toEqual([]);
      expect(tree.split('\n').filter((l) => /- (spinbutton|textbox|combobox|button) "/.test(l)).length, `controls in ${id}`).toBeGreaterThan(1);
      // Every hyper-parameter of the trainer is in the Train form, each with its one-line explanation.
      if (id === 'train')
        for (const name of ['LoRA rank', 'LoRA alpha', 'LoRA dropout', 'Learning rate', 'Epochs', 'Batch', 'Accumulation', 'Warmup', 'Max steps', 'Weight decay', 'Max grad norm', 'Adam β1', 'Adam β2', 'Adam ε', 'Seed', 'Loss chunk'])
          expect(tree, name).toMatch(new RegExp(`- '?spinbutton "${name}( \\(tokens\\))? \\S`)); // YAML quotes a line holding ': '
      if (id === 'train') for (const name of ['Preset', 'Schedule', 'Matmul precision']) expect(tree, name).toMatch(new RegExp(`- '?combobox "${name}`));
      // The loaded model's LoRA targets (the demo model is a Llama: PEFT's seven projection names).
      if (id === 'train') for (const t of ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']) expect(tree, t).toMatch(new RegExp(`- checkbox "${t}" \\[checked\\]`));
    }
    expect(errors).toEqual([]);
    await page.close();
  });

  it('explains what to do when WebGPU is missing', async () => {
    const noGpu = await launch([], false);
    try {
      const page = await noGpu.newPage();
      await page.goto(app.url());
      await page.getByTestId('no-webgpu-title').waitFor({ timeout: 30_000 });
      expect(await page.getByTestId('gpu-adapter').textContent()).toMatch(/unavailable/i);
      await screenshot(page, 'no-webgpu');
    } finally {
      await noGpu.close();
    }
  });
});
