/**
 * GPU device lost mid-run: the session says so clearly (DeviceLostError naming the step and that the run
 * can be resumed), a session on a new device loads the same model again and reports the run's last
 * checkpoint, and resuming from it ends with the same adapter as an uninterrupted run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { EngineSession, type RunEvent } from '../../src/engine/session.ts';
import { DeviceLostError } from '../../src/engine/gpu/errors.ts';
import { importAdapterZip } from '../../src/engine/share/adapter-zip.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { DEMO_CONFIG, DEMO_MODEL_ID } from '../../src/engine/demo/demo-model.ts';
import { NodeDirBlobStore } from '../../src/engine/share/node.ts';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import type { TrainConfig, TrainRow } from '../../src/engine/train/trainer.ts';
import { createNodeGpuContext } from '../../src/node/gpu.ts';
import { identityDataset } from '../helpers/identity.ts';

const dir = mkdtempSync(join(tmpdir(), 'webtune-device-lost-'));
const contexts: GpuContext[] = [];
afterAll(() => {
  for (const c of contexts) if (!c.isLost) c.destroy();
  rmSync(dir, { recursive: true, force: true });
});

const config: Partial<TrainConfig> = { loraRank: 4, loraAlpha: 8, loraDropout: 0.1, lr: 1e-2, epochs: 1, microBatch: 2, gradAccum: 1, warmupRatio: 0.2, weightDecay: 0.01, seed: 5 };
const every2 = { everySteps: 2, everyMinutes: 0 };

async function adapterBytes(zip: Uint8Array): Promise<string> {
  const back = await importAdapterZip(zip, parseModelConfig(JSON.stringify(DEMO_CONFIG)));
  return [...back.adapter.tensors].sort(([a], [b]) => a.localeCompare(b)).map(([k, t]) => `${k}:${Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64')}`).join('\n');
}

it('device.destroy() mid-run: clear report, model reloaded on a new device, the run resumes from its checkpoint to the same adapter', async () => {
  const store = new NodeDirBlobStore(dir);
  const ctxA = await createNodeGpuContext();
  contexts.push(ctxA);
  const session = new EngineSession(ctxA, store);
  await session.loadDemoModel(3);
  const rows: TrainRow[] = identityDataset(session.tokenizerSource()!, 64).train.slice(0, 8);

  const events: RunEvent[] = [];
  const run = session.trainRun(rows, config, { runId: 'lost', checkpoint: every2 }, (e) => {
    events.push(e);
    // The GPU goes away right after the step-2 checkpoint was written, while step 3 is being set up.
    if (e.type === 'checkpoint' && e.checkpoint.step === 2) ctxA.device.destroy();
  });
  const err = await run.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(DeviceLostError);
  expect((err as Error).message).toMatch(/^the GPU device was lost \(destroyed\): .*training stopped after step [23]; the run keeps its last checkpoint and can be resumed/);
  expect(ctxA.isLost).toBe(true);

  const ctxB = await createNodeGpuContext();
  contexts.push(ctxB);
  const { session: again, report } = await EngineSession.afterDeviceLoss(session, ctxB);
  expect(report).toMatchObject({ runId: 'lost', wasTraining: true, checkpoint: { step: 2 }, model: { id: DEMO_MODEL_ID } });
  expect(report.message).toMatch(/GPU device was lost.*A new GPU device was set up and .*demo-tiny-llama is loaded again\. The training run paused; its last checkpoint \(step 2\) is intact and it can be resumed from there\./);
  // What the page shows when it continues the run itself: the message without the advice about the run.
  expect(report.restored).toMatch(/A new GPU device was set up and .*demo-tiny-llama is loaded again\.$/);
  expect(report.message.startsWith(report.restored)).toBe(true);
  expect(again.ctx).toBe(ctxB);

  const resumed = await again.resumeRun({ runId: 'lost', checkpoint: every2 }, (e) => events.push(e));
  expect(resumed).toMatchObject({ steps: 4, stopped: false, paused: false });
  const lostAdapter = await adapterBytes(await again.exportRunAdapter('lost'));

  // The same run, never interrupted, on the new device.
  const full = await again.trainRun(rows, config, { runId: 'full', checkpoint: every2 }, () => undefined);
  expect(full.steps).toBe(4);
  expect(lostAdapter).toBe(await adapterBytes(await again.exportRunAdapter('full')));
  again.unload();
}, 600_000);
