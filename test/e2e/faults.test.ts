import { describe, expect, it } from 'vitest';
import { appUnderTest, chartSteps, screenshot, setField, trainSectionWithIdentityRows, watchPage } from './browser.ts';

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

  it('a run beyond the GPU memory budget: the out-of-memory banner with the plan and what to change; with room it trains', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 900 } });
    const { errors } = watchPage(page);
    await trainSectionWithIdentityRows(page, app.url());
    await setField(page.getByTestId('field-epochs'), '1');
    await setField(page.getByTestId('field-gradAccum'), '1');
    await setField(page.getByTestId('eval-prompts'), '');
    // 0.001 GiB (1.02 MiB): below the demo model's plan (~7 MiB). The plan says so before anything starts.
    await setField(page.getByTestId('budget'), '0.001');
    await expect.poll(async () => (await page.getByTestId('memory-plan').textContent())?.replace(/\s+/g, ' '), { timeout: 30_000 }).toMatch(/of a 1\.02 MiB budget/);
    await page.getByTestId('train-start').click();
    const fault = page.getByTestId('run-fault');
    await fault.waitFor({ timeout: 120_000 });
    expect(await fault.getAttribute('data-kind')).toBe('out-of-memory');
    const message = (await page.getByTestId('run-fault-message').textContent())!;
    expect(message).toMatch(/^Training ran out of GPU memory allocating .* of a 1\.02 MiB budget\)/);
    expect(message).toMatch(/Memory plan for these settings/);
    expect(message).toMatch(/What to change:/);
    expect(message).toMatch(/Or raise the GPU memory budget \(now 1\.0\d? MiB\) in the Train section/);
    expect(message).toMatch(/had no checkpoint yet: start a new run with the changes\.$/);
    await screenshot(page, 'faults-out-of-memory');

    await setField(page.getByTestId('budget'), '8');
    await page.getByTestId('train-start').click();
    await page.getByTestId('train-done').waitFor({ timeout: 600_000 });
    expect(await page.getByTestId('train-done').textContent()).toMatch(/Finished after 4 steps/);
    expect(await page.getByTestId('run-fault').count()).toBe(0);
    expect(errors).toEqual([]);
  }, 900_000);

  it('the GPU device is lost mid-run: the worker sets up a new one, the run continues from its checkpoint by itself and finishes', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 900 } });
    const { errors } = watchPage(page);
    page.on('dialog', (d) => void d.accept());
    await trainSectionWithIdentityRows(page, app.url());
    // 8 steps (4 epochs of 2), a checkpoint every 2 steps, no evaluation prompts.
    await setField(page.getByTestId('field-epochs'), '4');
    await setField(page.getByTestId('ckpt-steps'), '2');
    await setField(page.getByTestId('eval-prompts'), '');
    await page.getByTestId('train-start').click();
    await expect.poll(async () => (await chartSteps(page)).length, { timeout: 300_000 }).toBeGreaterThanOrEqual(3);

    // What a driver reset does: the worker's GPUDevice is destroyed (GPU details › Simulate a GPU loss).
    await page.getByTestId('gpu-badge').click();
    await page.getByTestId('gpu-simulate-loss').click();
    await page.getByTestId('gpu-badge').click();
    const note = page.getByTestId('recovery-note');
    await note.waitFor({ timeout: 120_000 });
    expect(await note.textContent()).toMatch(/GPU device was lost.*Training continued automatically from the checkpoint at step (2|4|6) \(the run had reached step \d\)/s);
    await screenshot(page, 'faults-device-lost-continued');

    await page.getByTestId('train-done').waitFor({ timeout: 600_000 });
    expect(await page.getByTestId('train-done').textContent()).toMatch(/Finished after 8 steps/);
    // One curve 1..8: the steps after the checkpoint were trained again, not duplicated.
    expect(await chartSteps(page)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(await page.getByTestId('runs-list').innerText()).toMatch(/finished/);
    expect(await page.getByTestId('run-fault').count()).toBe(0);
    // The app-wide banner (shown on the other sections) says the same thing, not "resume it yourself".
    await page.getByTestId('tab-chat').click();
    const banner = page.getByTestId('device-lost-banner');
    if (await banner.count()) expect(await banner.textContent()).not.toMatch(/Resume it in the Train section/);
    expect(errors.filter((e) => !/GPU|device/i.test(e))).toEqual([]);
  }, 900_000);

  it('a merged export that a closed tab never finished: the next page load offers to remove exactly its files', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 900 } });
    const { errors } = watchPage(page);
    await page.goto(`${app.url()}#/share`);
    // What a tab closed mid-export leaves: in the folder (here an OPFS folder, a handle like the picker's)
    // the export's note, the files it completed, the swap file of the one it was writing, and a file of the
    // user's; in IndexedDB the page's record of the export it started.
    await page.evaluate(async () => {
      const root = await navigator.storage.getDirectory();
      const dir = await root.getDirectoryHandle('merged-export', { create: true });
      const put = async (name: string, text: string) => {
        const w = await (await dir.getFileHandle(name, { create: true })).createWritable();
        await w.write(text);
        await w.close();
      };
      await put('WEBTUNE-EXPORT-INCOMPLETE.txt', 'This folder holds a WebTune merged-model export that did not finish.\nwritten: config.json\nwritten: model-00001-of-00002.safetensors\nwriting: model-00002-of-00002.safetensors\n');
      await put('config.json', '{}');
      await put('model-00001-of-00002.safetensors', 'x');
      await put('my-notes.txt', 'mine');
      const db = await new Promise<IDBDatabase>((resolve, reject) => {
        const open = indexedDB.open('webtune-exports');
        open.onupgradeneeded = () => open.result.createObjectStore('kv');
        open.onsuccess = () => resolve(open.result);
        open.onerror = () => reject(open.error);
      });
      await new Promise<void>((resolve, reject) => {
        const tx = db.transaction('kv', 'readwrite');
        tx.objectStore('kv').put({ folder: dir, folderName: 'merged-export', startedAt: '2026-11-23T10:00:00.000Z' }, 'merged-export');
        tx.oncomplete = () => resolve();
        tx.onerror = () => reject(tx.error);
      });
      db.close();
    });
    await page.reload();
    const banner = page.getByTestId('export-leftover');
    await banner.waitFor({ timeout: 30_000 });
    expect(await banner.textContent()).toMatch(/merged export into the folder “merged-export” .*did not finish/);
    await screenshot(page, 'share-export-leftover');
    await page.getByTestId('export-leftover-remove').click();
    await expect.poll(() => page.getByTestId('export-leftover-note').textContent(), { timeout: 30_000 }).toMatch(/Removed the unfinished export from “merged-export”: config\.json, model-00001-of-00002\.safetensors and its note/);
    const left = await page.evaluate(async () => {
      const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('merged-export');
      const names: string[] = [];
      for await (const name of (dir as unknown as { keys(): AsyncIterable<string> }).keys()) names.push(name);
      return names;
    });
    expect(left).toEqual(['my-notes.txt']);
    // Nothing pending any more: a reload shows no banner.
    await page.reload();
    await page.getByTestId('tab-share').waitFor();
    await page.waitForTimeout(1000);
    expect(await page.getByTestId('export-leftover').count()).toBe(0);
    expect(errors).toEqual([]);
  }, 120_000);
});
