/**
 * The eval loss (the data split's held-out rows, measured at every evaluation step): it is the loss of the
 * adapter as it stands after that step — the next step's training loss on the same rows, before its update,
 * is the same number — and it is stored with the run, so a resumed run measures it on the same rows.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { EngineSession, type RunEvent } from '../../src/engine/session.ts';
import { NodeDirBlobStore } from '../../src/engine/share/node.ts';
import { countSupervised } from '../../src/engine/kernels/cross_entropy.ts';
import type { TrainConfig, TrainRow } from '../../src/engine/train/trainer.ts';
import { gpu } from '../helpers/gpu.ts';
import { identityDataset } from '../helpers/identity.ts';

const dir = mkdtempSync(join(tmpdir(), 'webtune-eval-loss-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const evalLosses = (events: RunEvent[]) => events.flatMap((e) => (e.type === 'eval-loss' ? [e] : []));
const stepLosses = (events: RunEvent[]) => events.flatMap((e) => (e.type === 'progress' ? [e.progress.loss] : []));

it('is the loss of the adapter after that step: the next step reports the same loss on the same rows', async () => {
  const ctx = await gpu();
  const session = new EngineSession(ctx, new NodeDirBlobStore(dir));
  const info = await session.loadDemoModel(3);
  const rows: TrainRow[] = identityDataset(session.tokenizerSource()!, 64).train.slice(0, 6);
  // One micro-batch holds every row and there is no dropout: a step's loss is the token-weighted mean over
  // all rows with the weights before its update — what the eval loss of the step before measures.
  const config: Partial<TrainConfig> = { loraRank: 4, loraAlpha: 8, loraDropout: 0, lr: 2e-2, epochs: 4, microBatch: rows.length, gradAccum: 1, warmupRatio: 0, seed: 2 };
  const events: RunEvent[] = [];
  const done = await session.trainRun(rows, config, { runId: 'same-rows', evaluation: { prompts: [], every: 1 }, evalRows: rows, checkpoint: { everySteps: 0, everyMinutes: 0 } }, (e) => events.push(e));
  expect(done.steps).toBe(4);
  const ev = evalLosses(events);
  const train = stepLosses(events);
  expect(ev.map((e) => e.step)).toEqual([1, 2, 3, 4]);
  let supervised = 0;
  for (const r of rows) supervised += countSupervised(r.labels, r.labels.length, info.vocab);
  for (const e of ev) expect(e.tokens).toBe(supervised);
  for (let k = 0; k < 3; k++) {
    expect(Number.isFinite(ev[k]!.loss)).toBe(true);
    expect(Math.abs(ev[k]!.loss - train[k + 1]!) / train[k + 1]!, `eval after step ${k + 1} vs loss of step ${k + 2}`).toBeLessThan(1e-4);
  }
  expect(ev[3]!.loss).toBeLessThan(train[0]!); // it learned the rows
  // Each eval-loss event comes after its step's progress and before the next step.
  const order = events.filter((e) => e.type === 'progress' || e.type === 'eval-loss').map((e) => (e.type === 'progress' ? `p${e.progress.step}` : `e${e.step}`));
  expect(order).toEqual(['p1', 'e1', 'p2', 'e2', 'p3', 'e3', 'p4', 'e4']);
});

it('is stored with the run: a fresh page resumes measuring on the same rows; a damaged file is named', async () => {
  const ctx = await gpu();
  const store = new NodeDirBlobStore(dir);
  const config: Partial<TrainConfig> = { loraRank: 4, loraAlpha: 8, loraDropout: 0.1, lr: 1e-2, epochs: 1, microBatch: 2, gradAccum: 1, seed: 5 };
  const first = new EngineSession(ctx, store);
  await first.loadDemoModel(3);
  const all = identityDataset(first.tokenizerSource()!, 64).train;
  const rows = all.slice(0, 8);
  const held = all.slice(8, 11);
  expect(held.length).toBeGreaterThan(0);
  const opts = { evaluation: { prompts: [], every: 2 }, checkpoint: { everySteps: 0, everyMinutes: 0 } };

  const full: RunEvent[] = [];
  await first.trainRun(rows, config, { ...opts, runId: 'eval-full', evalRows: held }, (e) => full.push(e));
  expect(evalLosses(full).map((e) => e.step)).toEqual([2, 4]);
  // Without eval rows there is no eval loss (and the run still trains).
  const none: RunEvent[] = [];
  await first.trainRun(rows, config, { ...opts, runId: 'eval-none' }, (e) => none.push(e));
  expect(evalLosses(none)).toEqual([]);
  expect(await store.get('runs/eval-none/eval-rows.bin')).toBeNull();

  const events: RunEvent[] = [];
  const paused = new EngineSession(ctx, store);
  await paused.loadDemoModel(3);
  await paused.trainRun(rows, config, { ...opts, runId: 'eval-paused', evalRows: held }, (e) => {
    events.push(e);
    if (e.type === 'progress' && e.progress.step === 2) paused.pause();
  });
  paused.unload();
  const fresh = new EngineSession(ctx, store);
  await fresh.resumeRun({ ...opts, runId: 'eval-paused' }, (e) => events.push(e));
  const got = evalLosses(events);
  const want = evalLosses(full);
  expect(got.map((e) => e.step)).toEqual([2, 4]);
  // Same rows, same steps (the resumed run is bit-identical to the uninterrupted one): the same eval losses.
  expect(got.map((e) => [e.loss, e.tokens])).toEqual(want.map((e) => [e.loss, e.tokens]));

  const bytes = (await store.get('runs/eval-paused/eval-rows.bin'))!;
  bytes[bytes.length - 1]! ^= 0xff;
  await store.put('runs/eval-paused/eval-rows.bin', bytes);
  await expect(fresh.openRun('eval-paused')).rejects.toThrow(/eval-rows\.bin is corrupt/);
  fresh.unload();
});
