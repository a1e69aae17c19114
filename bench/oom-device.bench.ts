/**
 * Out of GPU memory on a real device (issue "Reliability"): the GPU test suite simulates a small GPU with the
 * pool's budget; this fills a real one. A run trains 2 steps and pauses (checkpoint at step 2); the GPU is then
 * filled with ballast buffers until the device refuses one; resuming the run must fail with the explained
 * out-of-memory error (its memory plan, what to change, the checkpoint intact) and nothing else (no device
 * loss); once the ballast is gone the same session resumes the run to its end.
 * `node bench/build.mjs bench/oom-device.bench.ts`, then on the GPU `node dist-bench/oom-device.bench.mjs`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EngineSession } from '../src/engine/session.ts';
import { NodeDirBlobStore } from '../src/engine/share/node.ts';
import { ExplainedOutOfMemoryError } from '../src/engine/train/out-of-memory.ts';
import type { TrainConfig } from '../src/engine/train/trainer.ts';
import { formatBytes } from '../src/engine/gpu/errors.ts';
import { createNodeGpuContext } from '../src/node/gpu.ts';
import { identityDataset } from '../test/helpers/identity.ts';

/** Device buffers (outside the pool) until the device refuses one: halving from 1 GiB down to 1 MiB. */
async function fillDevice(device: GPUDevice): Promise<{ buffers: GPUBuffer[]; bytes: number }> {
  const buffers: GPUBuffer[] = [];
  let bytes = 0;
  for (let size = 1 << 30; size >= 1 << 20; ) {
    device.pushErrorScope('out-of-memory');
    const b = device.createBuffer({ label: `ballast ${buffers.length}`, size, usage: GPUBufferUsage.STORAGE });
    const err = await device.popErrorScope();
    if (err) {
      b.destroy();
      size /= 2;
      continue;
    }
    buffers.push(b);
    bytes += size;
  }
  return { buffers, bytes };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'webtune-oom-device-'));
  const ctx = await createNodeGpuContext();
  const checks: [string, boolean][] = [];
  try {
    console.log(`adapter: ${ctx.summary().adapter.description || ctx.summary().adapter.device}`);
    // A CPU adapter's "GPU memory" is this machine's memory: filling it is not a test.
    if (ctx.features.software) throw new Error('needs a real GPU (this adapter runs on the CPU)');
    const session = new EngineSession(ctx, new NodeDirBlobStore(dir));
    await session.loadDemoModel(3);
    const rows = identityDataset(session.tokenizerSource()!, 64).train.slice(0, 8);
    const config: Partial<TrainConfig> = { loraRank: 8, loraAlpha: 16, loraDropout: 0, lr: 1e-2, epochs: 1, microBatch: 2, gradAccum: 1, warmupRatio: 0, seed: 5 };
    const paused = await session.trainRun(rows, config, { runId: 'kept', checkpoint: { everySteps: 0, everyMinutes: 0 } }, (e) => {
      if (e.type === 'progress' && e.progress.step === 2) session.pause();
    });
    checks.push(['the run paused at step 2 with a checkpoint', !!paused.paused && paused.checkpoint?.step === 2]);
    const before = JSON.stringify(await session.runCheckpoint('kept'));

    const ballast = await fillDevice(ctx.device);
    console.log(`ballast: ${ballast.buffers.length} buffers, ${formatBytes(ballast.bytes)} until the device refused 1 MiB`);
    const err = await session.resumeRun({ runId: 'kept' }, () => undefined).then(
      () => null,
      (e: unknown) => e,
    );
    const message = err instanceof Error ? err.message : String(err);
    console.log(`resume with the GPU full: ${err instanceof Error ? err.name : 'no error'}\n${message}`);
    checks.push(['resuming on a full GPU fails with the explained out-of-memory error', err instanceof ExplainedOutOfMemoryError]);
    checks.push(['the message says the checkpoint is intact', /keeps its last checkpoint \(step 2\), intact/.test(message)]);
    checks.push(['the checkpoint is unchanged', JSON.stringify(await session.runCheckpoint('kept')) === before]);
    checks.push(['the device was not lost', !ctx.isLost]);
    for (const b of ballast.buffers) b.destroy();
    // Dawn returns a destroyed buffer's memory once the queue has passed its last use: give it a submit and
    // some time, and try a few times (a user resumes when the other program has let go).
    let done: Awaited<ReturnType<typeof session.resumeRun>> | null = null;
    for (let attempt = 1; attempt <= 4 && !done; attempt++) {
      ctx.device.queue.submit([ctx.device.createCommandEncoder().finish()]);
      await ctx.device.queue.onSubmittedWorkDone();
      await new Promise((r) => setTimeout(r, 250 * attempt));
      ctx.device.pushErrorScope('out-of-memory');
      const probe = ctx.device.createBuffer({ size: 64 << 20, usage: GPUBufferUsage.STORAGE });
      const probeErr = await ctx.device.popErrorScope();
      probe.destroy();
      console.log(`attempt ${attempt}: a 64 MiB probe buffer ${probeErr ? `was refused (${probeErr.message.split('\n')[0]})` : 'was allocated'}`);
      done = await session.resumeRun({ runId: 'kept' }, () => undefined).catch((e: unknown) => {
        console.log(`attempt ${attempt}: resume failed: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`);
        return null;
      });
    }
    checks.push(['with the ballast gone, the run resumes to its end', !!done && done.steps === 4 && !done.paused && !done.stopped && Number.isFinite(done.finalLoss)]);
    session.unload();
  } finally {
    if (!ctx.isLost) ctx.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  for (const [what, ok] of checks) console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  const ok = checks.every(([, pass]) => pass);
  console.log(`real out-of-memory: ${ok ? 'PASSES' : 'FAILS'}`);
  if (!ok) process.exitCode = 1;
}

await main();
