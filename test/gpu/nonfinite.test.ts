/**
 * Non-finite steps: a NaN/∞ in the gradients or the step's losses makes the AdamW kernel skip the update
 * on the GPU (params, m and v bit-identical, consumed grads zeroed); the trainer counts the skip, names
 * the rows of a skipped step, and pauses after K skipped steps in a row with an explanation.
 */
import { describe, expect, it } from 'vitest';
import { AdamW, createOptimizerState, OptimizerLayout, releaseOptimizerState, type AdamWConfig } from '../../src/engine/kernels/adamw.ts';
import { directoryAccess } from '../../src/node/fixture-dir.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { CheckpointIndex } from '../../src/engine/model/weights.ts';
import { loadBaseWeights, type BaseWeights } from '../../src/engine/model/base-weights.ts';
import { Trainer, type TrainProgress, type TrainRow } from '../../src/engine/train/trainer.ts';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { freshSeed, randn, rng } from '../helpers/numeric.ts';

const CONFIG: AdamWConfig = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1 };
const PARAMS = [
  { name: 'a', shape: [3, 37] },
  { name: 'b', shape: [300] },
];

function bits(x: Float32Array): string {
  return Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('hex');
}

describe('AdamW non-finite guard', () => {
  for (const poison of [
    { what: 'a NaN gradient', grad: Number.NaN, loss: 1 },
    { what: 'an infinite gradient', grad: Number.POSITIVE_INFINITY, loss: 1 },
    { what: 'a NaN loss in the guard', grad: 0.5, loss: Number.NaN },
    { what: 'an infinite loss in the guard', grad: 0.5, loss: Number.NEGATIVE_INFINITY },
  ]) {
    it(`${poison.what}: params, m and v keep their bits, the grads are zeroed`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const random = rng(seed);
      const layout = new OptimizerLayout(PARAMS);
      const state = createOptimizerState(ctx, layout);
      const pack = (scale: number) => layout.pack(new Map(layout.slots.map((s) => [s.name, randn(s.length, random, scale)])));
      const p0 = pack(1);
      const m0 = pack(0.1);
      const v0 = pack(0.1).map(Math.abs);
      const g = pack(1);
      g[layout.slot('b').offset + 17] = poison.grad;
      ctx.write(state.params, p0);
      ctx.write(state.m!, m0);
      ctx.write(state.v!, v0);
      ctx.write(state.grads, g);
      const guard = ctx.upload('losses', [3], new Float32Array([0.7, poison.loss, 0.2]));
      const opt = await AdamW.create(ctx, state, CONFIG, { guard });
      opt.setStep(3);
      await ctx.run(await opt.stepDispatches({ zeroGrad: true }));
      expect(bits(await ctx.read(state.params)), `seed ${seed}`).toBe(bits(p0));
      expect(bits(await ctx.read(state.m!))).toBe(bits(m0));
      expect(bits(await ctx.read(state.v!))).toBe(bits(v0));
      expect((await ctx.read(state.grads)).every((x) => x === 0)).toBe(true);
      const norm = (await ctx.read(opt.gradNorm))[0]!;
      expect(AdamW.isFiniteStep(norm, [0.7, poison.loss, 0.2])).toBe(false);
      // The same state with finite values does update (the guard is not stuck shut).
      g[layout.slot('b').offset + 17] = 0.5;
      ctx.write(state.grads, g);
      ctx.write(guard, new Float32Array([0.7, 0.1, 0.2]));
      await ctx.run(await opt.stepDispatches({ zeroGrad: true }));
      expect(bits(await ctx.read(state.params))).not.toBe(bits(p0));
      opt.release();
      ctx.release(guard);
      releaseOptimizerState(ctx, state);
    });
  }
});

async function fixtureModel(ctx: GpuContext): Promise<BaseWeights> {
  // qwen2: untied embeddings, so a NaN embedding row poisons only the rows that hold its token.
  const io = directoryAccess(fixturesDir('qwen2'));
  const src = await io.open('config.json');
  const spec = parseModelConfig(new TextDecoder().decode(await src.read(0, src.size)));
  return loadBaseWeights(ctx, await CheckpointIndex.open(spec, io.open), { quantize: false });
}

/** Rows of a next-token pattern; each names its source line. Token `bad` is in the rows listed in `badRows`. */
function rows(n: number, len: number, vocab: number, bad: number, badRows: readonly number[]): TrainRow[] {
  return Array.from({ length: n }, (_, r) => {
    const ids = new Int32Array(len);
    let t = 3 + ((r * 37) % (vocab - 3));
    for (let i = 0; i < len; i++) {
      ids[i] = t === bad ? t + 1 : t;
      t = 3 + ((t * 7 + 11) % (vocab - 3));
    }
    if (badRows.includes(r)) ids[len >> 1] = bad;
    return { inputIds: ids, labels: ids.map((x, i) => (i < 1 ? -100 : x)), positionIds: Int32Array.from({ length: len }, (_, i) => i), documentIds: new Int32Array(len), sources: [`data.jsonl, line ${r + 1}`] };
  });
}

/** Writes NaN into the base embedding row of `token`: any row holding that token gets a NaN loss. */
function poisonEmbedding(ctx: GpuContext, w: BaseWeights, token: number): void {
  const block = w.embed.find((b) => token >= b.row0 && token < b.row0 + b.rows)!;
  const hidden = w.spec.hidden;
  ctx.device.queue.writeBuffer(block.tensor.buffer, (token - block.row0) * hidden * 4, new Float32Array(hidden).fill(Number.NaN));
}

describe('trainer: non-finite steps', () => {
  it('a bad row: its step is skipped (weights and moments unchanged), counted and named; the run goes on', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx);
    const bad = 5;
    poisonEmbedding(ctx, weights, bad);
    const data = rows(4, 10, weights.spec.vocabSize, bad, [2]);
    const trainer = new Trainer(ctx, weights, data, { loraRank: 4, loraAlpha: 8, loraDropout: 0, lr: 1e-2, epochs: 1, microBatch: 1, gradAccum: 1, warmupRatio: 0 });
    const seen: { p: TrainProgress; params: string; m: string; v: string }[] = [];
    const snap = async () => ({ params: bits(await ctx.read(trainer.state.params)), m: bits(await ctx.read(trainer.state.m!)), v: bits(await ctx.read(trainer.state.v!)) });
    const start = await snap();
    await trainer.train(undefined, undefined, async (p) => void seen.push({ p, ...(await snap()) }));
    expect(seen.length).toBe(4);
    const skipped = seen.filter((s) => s.p.skipped);
    expect(skipped.length).toBe(1);
    const i = seen.indexOf(skipped[0]!);
    const before = i === 0 ? start : seen[i - 1]!;
    expect(skipped[0]!.params).toBe(before.params);
    expect(skipped[0]!.m).toBe(before.m);
    expect(skipped[0]!.v).toBe(before.v);
    expect(Number.isFinite(skipped[0]!.p.loss)).toBe(false);
    expect(skipped[0]!.p.skippedSources).toEqual(['data.jsonl, line 3']);
    expect(seen[seen.length - 1]!.p.skippedSteps).toBe(1);
    expect(trainer.skippedSteps).toBe(1);
    expect(trainer.pause).toBeNull();
    // The steps around it trained (finite loss, weights moved) and no NaN got into the weights.
    for (const s of seen.filter((x) => !x.p.skipped)) expect(Number.isFinite(s.p.loss)).toBe(true);
    expect(seen[seen.length - 1]!.params).not.toBe(start.params);
    expect((await ctx.read(trainer.state.params)).every(Number.isFinite)).toBe(true);
    trainer.release();
  }, 300_000);

  it('K non-finite steps in a row pause the run with an explanation; nothing was updated', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx);
    const bad = 5;
    poisonEmbedding(ctx, weights, bad);
    const data = rows(6, 10, weights.spec.vocabSize, bad, [0, 1, 2, 3, 4, 5]);
    const trainer = new Trainer(ctx, weights, data, { loraRank: 4, loraAlpha: 8, loraDropout: 0, lr: 1e-2, epochs: 1, microBatch: 1, gradAccum: 2, warmupRatio: 0 }, null, { nonFiniteLimit: 2 });
    const p0 = bits(await ctx.read(trainer.state.params));
    const steps: TrainProgress[] = [];
    await trainer.train((p) => steps.push(p));
    expect(steps.map((s) => s.skipped)).toEqual([true, true]);
    expect(trainer.step).toBe(2);
    expect(trainer.skippedSteps).toBe(2);
    expect(trainer.pause?.reason).toBe('non-finite');
    expect(trainer.pause!.message).toMatch(/2 steps in a row .* not a finite number/);
    expect(trainer.pause!.message).toMatch(/learning rate is probably too high/);
    expect(trainer.pause!.sources.length).toBe(4);
    expect(bits(await ctx.read(trainer.state.params))).toBe(p0);
    expect((await ctx.read(trainer.state.m!)).every((x) => x === 0)).toBe(true);
    expect((await ctx.read(trainer.state.v!)).every((x) => x === 0)).toBe(true);
    trainer.release();
  }, 300_000);
});
