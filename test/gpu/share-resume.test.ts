/**
 * Resume equals uninterrupted, bit for bit: a run stopped after k steps, saved through a checkpoint store,
 * reloaded into a fresh Trainer and continued ends with the same params, AdamW moments and step losses.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileSource } from '../../src/node/files.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { CheckpointIndex } from '../../src/engine/model/weights.ts';
import { loadBaseWeights, releaseBaseWeights } from '../../src/engine/model/base-weights.ts';
import { Trainer, type TrainConfig, type TrainRow } from '../../src/engine/train/trainer.ts';
import { loadCheckpoint, saveCheckpoint } from '../../src/engine/share/checkpoint.ts';
import { NodeDirBlobStore } from '../../src/engine/share/node.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { freshSeed, rng } from '../helpers/numeric.ts';

function syntheticRows(n: number, seq: number, vocab: number, seed: number): TrainRow[] {
  const random = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const len = seq - (i % 3);
    const inputIds = Int32Array.from({ length: len }, () => Math.floor(random() * vocab));
    const labels = Int32Array.from(inputIds, (t, j) => (j < 3 ? -100 : t));
    return { inputIds, labels, positionIds: Int32Array.from({ length: len }, (_, j) => j), documentIds: new Int32Array(len) };
  });
}

describe('checkpoint and resume', () => {
  it('interrupted after 2 steps + resumed from the checkpoint == uninterrupted (params, m, v, losses bitwise)', async () => {
    const ctx = await gpu();
    const dir = fixturesDir('llama');
    const spec = parseModelConfig(readFileSync(`${dir}/config.json`, 'utf8'));
    const weights = await loadBaseWeights(ctx, await CheckpointIndex.open(spec, (n) => fileSource(`${dir}/${n}`), ['model.safetensors']), { quantize: false });
    const seed = freshSeed();
    const rows = syntheticRows(6, 12, spec.vocabSize, seed);
    const config: Partial<TrainConfig> = { loraRank: 4, loraAlpha: 8, lr: 1e-2, microBatch: 1, gradAccum: 2, epochs: 2, warmupRatio: 0.2, schedule: 'cosine', weightDecay: 0.01, seed: seed % 1000 };
    const store = new NodeDirBlobStore(mkdtempSync(join(tmpdir(), 'webtune-resume-')));
    try {
      const full = new Trainer(ctx, weights, rows, config);
      const fullLosses: number[] = [];
      await full.train((p) => fullLosses.push(p.loss));
      expect(full.step).toBe(6);
      const ref = await full.saveState();
      full.release();

      const first = new Trainer(ctx, weights, rows, config);
      const losses: number[] = [];
      await first.train((p) => losses.push(p.loss), () => first.step >= 2);
      expect(first.step).toBe(2);
      await saveCheckpoint(store, 'run', await first.saveState());
      first.release();

      const resumed = new Trainer(ctx, weights, rows, config);
      const saved = (await loadCheckpoint(store, 'run'))!;
      expect(saved).toMatchObject({ step: 2, epoch: 0, position: 4, totalSteps: 6 });
      resumed.loadState(saved);
      await resumed.train((p) => losses.push(p.loss));
      const end = await resumed.saveState();
      resumed.release();
      expect(losses, `seed ${seed}`).toEqual(fullLosses);
      expect(Buffer.from(end.params.buffer).equals(Buffer.from(ref.params.buffer)), 'params').toBe(true);
      expect(Buffer.from(end.m.buffer).equals(Buffer.from(ref.m.buffer)), 'm').toBe(true);
      expect(Buffer.from(end.v.buffer).equals(Buffer.from(ref.v.buffer)), 'v').toBe(true);
      const other = new Trainer(ctx, weights, rows, { ...config, lr: 2e-2 });
      expect(() => other.loadState(saved)).toThrow(/trained with lr = 0.01, this run has 0.02/);
      other.release();
    } finally {
      rmSync(store.dir, { recursive: true, force: true });
      releaseBaseWeights(ctx, weights);
    }
  }, 300_000);
});
