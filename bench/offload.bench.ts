/**
 * Optimizer-state offload (issue "Performance"): the same QLoRA step of the InternLM2-1.8B shape (4-bit
 * base, LoRA r=64 on all projections: 62.9M parameters, 0.5 GB of AdamW moments) with the moments on the
 * GPU, in CPU memory, and in a file, through the Trainer as the app runs it. Reports ms per optimizer step
 * at gradient accumulation 1 (the worst case: every micro-batch pays the moments' round trip) and at
 * XTuner's accumulation of 16 (measured: the readbacks drain while the next step's micro-batches run).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GpuContext } from '../src/engine/gpu/context.ts';
import { modelSpecFromConfig } from '../src/engine/model/config.ts';
import { randomBaseWeights } from '../src/engine/model/random-weights.ts';
import { releaseBaseWeights } from '../src/engine/model/base-weights.ts';
import { Trainer, type TrainRow } from '../src/engine/train/trainer.ts';
import type { OptimizerOffload } from '../src/engine/train/moments.ts';
import { fileMomentStore } from '../src/engine/train/moments.ts';
import { nodeSyncFile } from '../src/node/sync-file.ts';
import { INTERNLM2_1_8B, INTERNLM2_TINY } from './train-step.bench.ts';
import type { BenchRow } from './harness.ts';


const sign = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(1)}`;

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const spec = modelSpecFromConfig(quick ? INTERNLM2_TINY : INTERNLM2_1_8B, 'InternLM2-1.8B shape');
  const weights = await randomBaseWeights(ctx, spec, { seed: 1, quantize: true, poolValues: 1 << 22 });
  const seq = quick ? 32 : 512;
  const steps = quick ? 2 : 4;
  const dir = mkdtempSync(join(tmpdir(), 'webtune-offload-'));
  const out: BenchRow[] = [];
  try {
    for (const accum of quick ? [1, 2] : (process.env.OFFLOAD_ACCUM ?? '1,4,16').split(',').map(Number)) {
      const rows: TrainRow[] = Array.from({ length: steps * accum }, (_, r) => {
        const ids = Int32Array.from({ length: seq }, (_, i) => (i * 7919 + r * 104729) % spec.vocabSize);
        return { inputIds: ids, labels: ids, positionIds: Int32Array.from({ length: seq }, (_, i) => i), documentIds: new Int32Array(seq) };
      });
      let gpuMs = 0;
      for (const offload of ['gpu', 'cpu', 'disk'] as OptimizerOffload[]) {
        const trainer = new Trainer(ctx, weights, rows, { loraRank: quick ? 8 : 64, loraAlpha: 16, loraDropout: 0.1, microBatch: 1, gradAccum: accum, maxSteps: steps, warmupRatio: 0, optimizerOffload: offload }, null, {
          momentStore: (n) => fileMomentStore(nodeSyncFile(join(dir, 'moments.bin')), n),
        });
        const stamps: number[] = [];
        const host: Trainer['offloadTimes'][] = [];
        await trainer.train(() => {
          stamps.push(performance.now());
          host.push({ ...trainer.offloadTimes });
        });
        // Medians past the first step (whose moments start in the upload buffers, with no drain before it).
        const hostMs = (key: keyof Trainer['offloadTimes']) => {
          const xs = host.slice(1).map((h) => h[key]).sort((a, b) => a - b);
          return xs[Math.floor(xs.length / 2)]!.toFixed(1);
        };
        const hostNote = offload === 'gpu' ? '' : `; host: drain maps ${hostMs('drainMap')} ms, readbacks → uploads ${hostMs('drainCopy')} ms, the optimizer step waited ${hostMs('waited')} ms (the GPU work it overlapped included)`;
        const per = stamps.slice(1).map((t, i) => t - stamps[i]!).sort((a, b) => a - b);
        const ms = per[Math.floor(per.length / 2)]!;
        if (offload === 'gpu') gpuMs = ms;
        const over = ms - gpuMs;
        out.push({
          name: `QLoRA step seq ${seq}, accumulation ${accum}, moments on ${offload}`,
          ms,
          note: offload === 'gpu' ? 'per optimizer step' : `${sign(over)} ms = ${sign((over / gpuMs) * 100)}%${hostNote}`,
        });
        console.log(out[out.length - 1]!.name, out[out.length - 1]!.ms.toFixed(1), out[out.length - 1]!.note);
        trainer.release();
        ctx.pool.trim();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    releaseBaseWeights(ctx, weights);
  }
  return out;
}
