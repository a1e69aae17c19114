import { describe, expect, it } from 'vitest';
import { appUnderTest, chartEvalSteps, chartSteps, screenshot, setField, trainSectionWithIdentityRows, watchPage } from './browser.ts';

const app = appUnderTest();

describe('training survives a reload (WebGPU on SwiftShader)', () => {
  it('train → pause (checkpoint) → reload → the run is in the history → resume → finishes with the curve continuing', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 800 } });
    const { errors } = watchPage(page);
    // A quarter of the samples held out: the eval loss is measured on them every 2 steps (no prompts).
    await trainSectionWithIdentityRows(page, app.url(), { evalSplit: 0.25 });
    expect(await page.getByTestId('train-rows').textContent()).toMatch(/held out for the eval loss/);
    // Tiny and quick: 1 epoch of a few steps (no accumulation), a checkpoint every 2 steps, no
    // evaluation prompts.
    await setField(page.getByTestId('field-epochs'), '1');
    await setField(page.getByTestId('field-gradAccum'), '1');
    await setField(page.getByTestId('ckpt-steps'), '2');
    await setField(page.getByTestId('eval-prompts'), '');
    await setField(page.getByTestId('eval-every'), '2');
    // The memory plan of this config, against the 8 GiB default budget.
    await expect.poll(async () => (await page.getByTestId('memory-plan').or(page.getByTestId('memory-plan-note')).textContent())?.replace(/\s+/g, ' '), { timeout: 30_000 }).toMatch(/Predicted GPU memory .* of a 8\.00 GiB budget — fits/);

    await page.getByTestId('train-start').click();
    await expect.poll(async () => (await chartSteps(page)).length, { timeout: 300_000 }).toBeGreaterThanOrEqual(2);
    await page.getByTestId('train-pause').click();
    await page.getByTestId('train-done').waitFor({ timeout: 300_000 });
    const pausedText = (await page.getByTestId('train-done').textContent())!;
    const pausedAt = Number(/Paused at step (\d+)/.exec(pausedText)?.[1]);
    const total = Number(/step \d+\/(\d+)/.exec((await page.getByTestId('train-step').textContent())!)?.[1]);
    expect(pausedAt).toBeGreaterThanOrEqual(2);
    expect(pausedAt).toBeLessThan(total);
    expect(await chartSteps(page)).toEqual(Array.from({ length: pausedAt }, (_, i) => i + 1));
    const evenUpTo = (n: number) => Array.from({ length: Math.floor(n / 2) }, (_, i) => 2 * (i + 1));
    expect(await chartEvalSteps(page)).toEqual(evenUpTo(pausedAt));
    expect(Number(await page.getByTestId('train-eval-loss').textContent())).toBeGreaterThan(0);
    const lossesBefore = await page.getByTestId('train-loss').textContent();
    expect(await page.getByTestId('checkpoints').innerText()).toMatch(new RegExp(`step ${pausedAt} .*\\(current\\)`));
    await screenshot(page, 'resume-paused');

    // Close-the-tab equivalent: a fresh page load; nothing of the run is in memory any more.
    await page.reload();
    await page.getByTestId('tab-train').click();
    const banner = page.getByTestId('resume-banner');
    await banner.waitFor({ timeout: 60_000 });
    expect(await banner.textContent()).toMatch(new RegExp(`stopped at step ${pausedAt}/${total} \\(paused\\)`));
    expect(await page.getByTestId('runs-list').innerText()).toMatch(/paused/);
    // The form remembered the choices, and the re-opened run shows its curve so far.
    expect(await page.getByTestId('ckpt-steps').inputValue()).toBe('2');
    expect(await page.getByTestId('field-epochs').inputValue()).toBe('1');
    await expect.poll(() => chartSteps(page), { timeout: 30_000 }).toEqual(Array.from({ length: pausedAt }, (_, i) => i + 1));
    expect(await page.getByTestId('train-loss').textContent()).toBe(lossesBefore);

    await page.getByTestId('banner-resume').click();
    await page.getByTestId('train-done').waitFor({ timeout: 600_000 });
    expect(await page.getByTestId('train-done').textContent()).toMatch(new RegExp(`Finished after ${total} steps`));
    // One curve, steps 1..total: continued from the checkpoint, no reset and no repeated step.
    expect(await chartSteps(page)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    // The eval loss continued on the held-out rows stored with the run: every 2 steps and at the last.
    expect(await chartEvalSteps(page)).toEqual([...new Set([...evenUpTo(total), total])]);
    expect(await page.getByTestId('runs-list').innerText()).toMatch(/finished/);
    await expect.poll(() => page.getByTestId('resume-banner').count()).toBe(0);
    await screenshot(page, 'resume-finished');
    expect(errors).toEqual([]);
  }, 1_200_000);
});
