import { describe, expect, it } from 'vitest';
import { appUnderTest, screenshot, setField, trainSectionWithIdentityRows, watchPage } from './browser.ts';

const app = appUnderTest();

describe('faults surfaced in the Train section (WebGPU on SwiftShader)', () => {
  it('a learning rate that blows up: skipped steps counted, gaps in the curve, the run pauses itself with the advice and a Resume', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 900 } });
    const { errors } = watchPage(page);
    await trainSectionWithIdentityRows(page, app.url());
    // Adam moves every weight by about lr in the first step: at 1e30 every later step overflows.
    await setField(page.getByTestId('field-lr'), '1e30');
    await setField(page.getByTestId('eval-prompts'), '');
    await page.getByTestId('train-start').click();

    const fault = page.getByTestId('run-fault');
    await fault.waitFor({ timeout: 600_000 });
    expect(await fault.getAttribute('data-kind')).toBe('paused');
    const message = (await page.getByTestId('run-fault-message').textContent())!;
    expect(message).toMatch(/^training paused: 5 steps in a row \(2–6\) had a loss or gradient that is not a finite number/);
    expect(message).toMatch(/The learning rate is probably too high .*lower it/);
    expect(message).toMatch(/identity\.jsonl, line \d+/);
    expect(await page.getByTestId('train-skipped').textContent()).toBe('skipped 5');
    // Every step is on the x axis; the skipped ones are gaps (null), the shown loss is the last finite one.
    expect(await page.getByTestId('train-chart').getAttribute('data-steps')).toBe('1,2,3,4,5,6');
    expect(Number(await page.getByTestId('train-loss').textContent())).toBeGreaterThan(0);
    expect(await page.getByTestId('train-done').textContent()).toMatch(/Paused at step 6/);
    await expect.poll(() => page.getByTestId('fault-resume').isEnabled()).toBe(true);
    // One Resume offer for the run: the fault banner's (the generic resume banner steps aside).
    expect(await page.getByTestId('resume-banner').count()).toBe(0);
    expect(await page.getByTestId('runs-list').innerText()).toMatch(/paused/);
    expect(await page.getByTestId('runs-list').innerText()).not.toMatch(/NaN/);
    await screenshot(page, 'faults-nonfinite-pause');
    expect(errors).toEqual([]);
  }, 900_000);
});
