/**
 * Out of GPU memory: a pool budget smaller than the step needs (a small GPU simulated on this one) makes
 * training fail with an error that names the buffer, carries the memory plan of the settings and says what
 * to change; half-built step buffers go back to the pool, a run's last checkpoint stays as it was, and the
 * same session trains to the end once the memory is there.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { EngineSession, type RunEvent } from '../../src/engine/session.ts';
import { formatBytes, GpuOutOfMemoryError } from '../../src/engine/gpu/errors.ts';
import { ExplainedOutOfMemoryError } from '../../src/engine/train/out-of-memory.ts';
import { NodeDirBlobStore } from '../../src/engine/share/node.ts';
import { readRunManifest } from '../../src/engine/runs/run-store.ts';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import type { TrainConfig, TrainRow } from '../../src/engine/train/trainer.ts';
import { createNodeGpuContext } from '../../src/node/gpu.ts';
import { DEMO_CONFIG, DEMO_MODEL_ID, demoModelFiles } from '../../src/engine/demo/demo-model.ts';
import { identityDataset } from '../helpers/identity.ts';

const dir = mkdtempSync(join(tmpdir(), 'webtune-oom-'));
let ctx: GpuContext;
let session: EngineSession;
let rows: TrainRow[];
const config: Partial<TrainConfig> = { loraRank: 8, loraAlpha: 16, loraDropout: 0, lr: 1e-2, epochs: 1, microBatch: 2, gradAccum: 1, warmupRatio: 0, seed: 5 };

beforeAll(async () => {
  ctx = await createNodeGpuContext();
  session = new EngineSession(ctx, new NodeDirBlobStore(dir));
  await session.loadDemoModel(3);
  rows = identityDataset(session.tokenizerSource()!, 64).train.slice(0, 8);
}, 300_000);

afterAll(() => {
  session?.unload();
  if (ctx && !ctx.isLost) ctx.destroy();
  rmSync(dir, { recursive: true, force: true });
});

it('the pool budget refuses an allocation by name and size; a scope that fails gives its buffers back', () => {
  const live = ctx.pool.liveBytes;
  ctx.pool.budgetBytes = live + 4096;
  try {
    const scope = ctx.pool.openScope();
    ctx.tensor('fits', [512]);
    expect(ctx.pool.liveBytes).toBe(live + 2048);
    let err: unknown = null;
    try {
      ctx.tensor('too big', [1024]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(GpuOutOfMemoryError);
    expect((err as GpuOutOfMemoryError).message).toBe(`out of GPU memory allocating too big (4.00 KiB; ${formatBytes(live + 2048)} already in use of a ${formatBytes(live + 4096)} budget)`);
    scope.rollback();
    expect(ctx.pool.liveBytes).toBe(live);
  } finally {
    ctx.pool.budgetBytes = null;
  }
});

it('training beyond the budget: a clear error with the plan and what to change, no leak, and the session trains afterwards', async () => {
  let atStart = 0;
  const err = await session
    .trainRun(rows, config, { runId: 'tight', checkpoint: { everySteps: 2, everyMinutes: 0 } }, (e: RunEvent) => {
      // The adapter and its optimizer state are allocated by now; the step buffers are not.
      if (e.type === 'started') {
        atStart = ctx.pool.liveBytes;
        ctx.pool.budgetBytes = atStart + 1024;
      }
    })
    .then(() => null, (e: unknown) => e);
  ctx.pool.budgetBytes = null;
  expect(err).toBeInstanceOf(ExplainedOutOfMemoryError);
  const e = err as ExplainedOutOfMemoryError;
  expect(e.name).toBe('GpuOutOfMemoryError');
  const msg = e.message;
  expect(msg).toMatch(/^Training ran out of GPU memory allocating \S.* \(\d.*already in use of a .* budget\)\.\n/);
  expect(msg).toMatch(/Memory plan for these settings \(maximum length \d+, micro-batch 2, LoRA rank 8, f32 base, optimizer state on the GPU\)/);
  expect(msg).toMatch(/base weights [\d.]+ [KM]iB · LoRA params \+ grads [\d.]+ [KM]iB · optimizer moments .* at the training peak/);
  expect(msg).toMatch(/What to change:\n {2}• /);
  expect(e.plan).not.toBeNull();
  expect(e.plan!.fits).toBe(false);
  // Concrete changes for these settings, each with its predicted peak (the planner's advice).
  expect(e.suggestions.some((s) => /optimizer|micro-batch|rank|maximum length/i.test(s))).toBe(true);
  expect(msg).toMatch(/Run tight had no checkpoint yet/);
  // The half-built step plan went back to the pool: only the adapter's state is still held.
  expect(ctx.pool.liveBytes).toBe(atStart);

  const ok = await session.trainRun(rows, config, { runId: 'roomy', checkpoint: { everySteps: 2, everyMinutes: 0 } }, () => undefined);
  expect(ok).toMatchObject({ steps: 4, stopped: false, paused: false });
  expect(Number.isFinite(ok.finalLoss)).toBe(true);
}, 600_000);

it("a run is held to the user's memory budget (RunOptions.memoryBudgetBytes): refused with the plan, the pool's cap restored after", async () => {
  // Below the loaded weights alone: the run's first allocation is refused.
  const err = await session.trainRun(rows, config, { runId: 'budget', memoryBudgetBytes: 4096 }, () => undefined).then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(ExplainedOutOfMemoryError);
  expect((err as Error).message).toMatch(/^Training ran out of GPU memory allocating .* budget\)\.\n[\s\S]*Nothing was trained yet; no checkpoint was touched\./);
  expect(ctx.pool.budgetBytes).toBeNull();
  await expect(session.trainRun(rows, config, { runId: 'budget-bad', memoryBudgetBytes: -1 }, () => undefined)).rejects.toThrow(/memory budget must be a positive number/);
  // A roomy budget: trains to the end under the cap.
  const ok = await session.trainRun(rows, config, { runId: 'budget-ok', memoryBudgetBytes: 2 ** 30 }, () => undefined);
  expect(ok).toMatchObject({ steps: 4, stopped: false, paused: false });
  expect(ctx.pool.budgetBytes).toBeNull();
}, 600_000);

it('under a budget that fits only with attention recomputed, the run recomputes it (and stores that) instead of being refused', async () => {
  // Two layers (with one, the kept output replaces the shared scratch and costs nothing).
  const session = new EngineSession(ctx, new NodeDirBlobStore(dir));
  await session.loadModelFiles(demoModelFiles(3, { ...DEMO_CONFIG, num_hidden_layers: 2 }), { id: 'demo-2-layers', quantize: false });
  const seq = Math.max(...rows.map((r) => r.inputIds.length));
  const kept = session.planTraining({ ...config, keepAttention: true }, seq);
  const recomputed = session.planTraining({ ...config, keepAttention: false }, seq);
  expect(kept.totalBytes).toBeGreaterThan(recomputed.totalBytes);
  const budget = Math.floor((kept.totalBytes + recomputed.totalBytes) / 2);
  // The Train section's plan makes the same choice as the run.
  const shown = session.planTraining(config, seq, budget);
  expect(shown.fits).toBe(true);
  expect(shown.activations.terms.some((t) => t.name === 'kept attention outputs')).toBe(false);
  expect(session.planTraining(config, seq, kept.totalBytes).activations.terms.some((t) => t.name === 'kept attention outputs')).toBe(true);
  const done = await session.trainRun(rows, config, { runId: 'recomputed', memoryBudgetBytes: budget }, () => undefined);
  expect(done).toMatchObject({ steps: 4, stopped: false, paused: false });
  expect((await readRunManifest(new NodeDirBlobStore(dir), 'recomputed')).config.keepAttention).toBe(false);
  // A roomy budget keeps them.
  await session.trainRun(rows, config, { runId: 'kept-attention', memoryBudgetBytes: 2 ** 30 }, () => undefined);
  expect((await readRunManifest(new NodeDirBlobStore(dir), 'kept-attention')).config.keepAttention).toBe(true);
  session.unload();
}, 600_000);

it('a run that runs out of memory on resume keeps its checkpoint and resumes to the end later', async () => {
  const paused = await session.trainRun(rows, config, { runId: 'kept', checkpoint: { everySteps: 0, everyMinutes: 0 } }, (e) => {
    if (e.type === 'progress' && e.progress.step === 2) session.pause();
  });
  expect(paused).toMatchObject({ steps: 2, paused: true, checkpoint: { step: 2 } });
  const before = await session.runCheckpoint('kept');

  const err = await session
    .resumeRun({ runId: 'kept' }, (e) => {
      if (e.type === 'started') ctx.pool.budgetBytes = ctx.pool.liveBytes + 1024;
    })
    .then(() => null, (e: unknown) => e);
  ctx.pool.budgetBytes = null;
  expect(err).toBeInstanceOf(ExplainedOutOfMemoryError);
  expect((err as Error).message).toMatch(/Nothing was lost: run kept keeps its last checkpoint \(step 2\), intact/);
  expect(await session.runCheckpoint('kept')).toEqual(before);

  const done = await session.resumeRun({ runId: 'kept' }, () => undefined);
  expect(done).toMatchObject({ steps: 4, stopped: false, paused: false });
}, 600_000);

it('a model that does not fit: the load names the model and its size, leaves nothing allocated, and loads once there is room', async () => {
  session.unload();
  const base = ctx.pool.liveBytes;
  ctx.pool.budgetBytes = base + 64 * 1024;
  const err = await session.loadDemoModel(3).then(() => null, (e: unknown) => e);
  ctx.pool.budgetBytes = null;
  expect(err).toBeInstanceOf(ExplainedOutOfMemoryError);
  const msg = (err as Error).message;
  expect(msg).toMatch(new RegExp(`^Loading ${DEMO_MODEL_ID} ran out of GPU memory allocating .* budget\\)\\. No model is loaded now; nothing stored was changed\\.\\nIts f32 weights need about [\\d.]+ KiB on the GPU`));
  expect(msg).toMatch(/What to change:\n {2}• Load it in 4 bits \(QLoRA\)/);
  expect(ctx.pool.liveBytes).toBe(base);
  expect((await session.loadDemoModel(3)).id).toBe(DEMO_MODEL_ID);
}, 300_000);
