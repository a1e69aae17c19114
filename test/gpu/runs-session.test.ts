/**
 * Stored runs through the engine session (what the app's worker does, with OPFS replaced by a folder):
 * a run paused mid-way and resumed by a fresh session — which has to re-create the demo model from the
 * run's seed and read the rows back from the store — continues with the same step numbers and the same
 * losses, bit for bit, as the uninterrupted run (whose moments stay on the GPU while the paused one
 * offloads them to CPU memory: the checkpoint carries them either way). Deleting the run removes its files.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { EngineSession, type RunEvent } from '../../src/engine/session.ts';
import { importAdapterZip } from '../../src/engine/share/adapter-zip.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { DEMO_CONFIG } from '../../src/engine/demo/demo-model.ts';
import { NodeDirBlobStore } from '../../src/engine/share/node.ts';
import type { TrainConfig, TrainRow } from '../../src/engine/train/trainer.ts';
import { gpu } from '../helpers/gpu.ts';
import { identityDataset } from '../helpers/identity.ts';

const dir = mkdtempSync(join(tmpdir(), 'webtune-runs-session-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config: Partial<TrainConfig> = { loraRank: 4, loraAlpha: 8, loraDropout: 0.1, lr: 1e-2, epochs: 1, microBatch: 2, gradAccum: 1, warmupRatio: 0.2, weightDecay: 0.01, seed: 5 };

function collect(events: RunEvent[]) {
  return {
    steps: events.flatMap((e) => (e.type === 'progress' ? [e.progress.step] : [])),
    losses: events.flatMap((e) => (e.type === 'progress' ? [e.progress.loss] : [])),
    checkpoints: events.flatMap((e) => (e.type === 'checkpoint' ? [e.checkpoint.step] : [])),
  };
}

async function adapterTensors(zip: Uint8Array) {
  const back = await importAdapterZip(zip, parseModelConfig(JSON.stringify(DEMO_CONFIG)));
  return back.adapter.tensors;
}

it('pause → fresh session resumes the stored run: same steps, losses and adapter as uninterrupted', async () => {
  const ctx = await gpu();
  const store = new NodeDirBlobStore(dir);
  const first = new EngineSession(ctx, store);
  await first.loadDemoModel(3);
  const rows: TrainRow[] = identityDataset(first.tokenizerSource()!, 64).train.slice(0, 8);

  // The uninterrupted run, checkpointing every 2 steps.
  const full: RunEvent[] = [];
  const done = await first.trainRun(rows, config, { runId: 'full', checkpoint: { everySteps: 2, everyMinutes: 0 } }, (e) => full.push(e));
  const total = done.steps;
  expect(total).toBe(4);
  expect(done).toMatchObject({ stopped: false, paused: false, runId: 'full' });
  expect(full[0]).toMatchObject({ type: 'started', runId: 'full', step: 0, totalSteps: total, model: { kind: 'demo', seed: 3 } });
  const ref = collect(full);
  expect(ref.steps).toEqual([1, 2, 3, 4]);
  expect(ref.checkpoints).toEqual([2, 4]);
  expect((await first.runCheckpoint('full'))?.step).toBe(4);
  const refAdapter = await adapterTensors(await first.exportRunAdapter('full'));

  for (const [runId, offload] of [['paused-cpu', 'cpu']] as const) {
    const events: RunEvent[] = [];
    const session = new EngineSession(ctx, store);
    await session.loadDemoModel(3);
    const paused = await session.trainRun(rows, { ...config, optimizerOffload: offload }, { runId, checkpoint: { everySteps: 0, everyMinutes: 0 } }, (e) => {
      events.push(e);
      if (e.type === 'progress' && e.progress.step === 2) session.pause();
    });
    expect(paused).toMatchObject({ steps: 2, stopped: false, paused: true, checkpoint: { step: 2 } });
    expect(await store.get(`runs/${runId}/adapter.zip`)).toBeNull(); // a paused run has no final adapter yet
    session.unload();

    // A fresh page: nothing loaded; the run says which model (demo, seed 3) and holds its rows.
    const fresh = new EngineSession(ctx, store);
    expect(await fresh.storedRuns()).toContain(runId);
    const resumed = await fresh.resumeRun({ runId, checkpoint: { everySteps: 0, everyMinutes: 0 } }, (e) => events.push(e));
    expect(resumed).toMatchObject({ steps: total, paused: false, stopped: false, checkpoint: { step: total } });
    expect(fresh.info().id).toBe('webtune/demo-tiny-llama');
    const starts = events.filter((e) => e.type === 'started').map((e) => (e.type === 'started' ? e.step : -1));
    expect(starts).toEqual([0, 2]);
    const got = collect(events);
    expect(got.steps, offload).toEqual(ref.steps);
    expect(got.losses, offload).toEqual(ref.losses);
    expect(got.checkpoints).toEqual([2, total]);
    const adapter = await adapterTensors(await fresh.exportRunAdapter(runId));
    expect([...adapter.keys()]).toEqual([...refAdapter.keys()]);
    for (const [name, t] of refAdapter) expect(Buffer.from(adapter.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer)), `${offload} ${name}`).toBe(true);
    fresh.unload();
  }

  // Deleting a run removes its files; others stay.
  await first.deleteRun('paused-cpu');
  expect(await store.list('runs/paused-cpu/')).toEqual([]);
  expect(await first.storedRuns()).toEqual(['full']);
  await expect(first.resumeRun({ runId: 'paused-cpu' }, () => {})).rejects.toThrow(/not stored in this browser/);
  first.unload();
}, 600_000);
