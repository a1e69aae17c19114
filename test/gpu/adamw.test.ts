import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdamW, createOptimizerState, OptimizerLayout, prepareZeroGrad, releaseOptimizerState, type AdamWConfig } from '../../src/engine/kernels/adamw.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** The fixture's optimizer settings (case.json "adamw"): lr 1e-2, betas 0.9/0.999, eps 1e-8, wd 0.01, clip 1.0. */
function fixtureConfig(): AdamWConfig {
  const c = JSON.parse(readFileSync(fixturesDir('llama', 'case.json'), 'utf8')) as {
    adamw: { lr: number; betas: [number, number]; eps: number; weight_decay: number; clip_grad_norm: number };
  };
  return { lr: c.adamw.lr, beta1: c.adamw.betas[0], beta2: c.adamw.betas[1], eps: c.adamw.eps, weightDecay: c.adamw.weight_decay, maxGradNorm: c.adamw.clip_grad_norm };
}

/** float64 torch.optim.AdamW step (after clip_grad_norm_) on flat arrays; returns the total grad norm. */
function referenceStep(p: Float64Array, g: Float32Array, m: Float64Array, v: Float64Array, t: number, lr: number, c: AdamWConfig): number {
  let ss = 0;
  for (let i = 0; i < g.length; i++) ss += g[i]! * g[i]!;
  const norm = Math.sqrt(ss);
  const clip = c.maxGradNorm ? Math.min(1, c.maxGradNorm / (norm + 1e-6)) : 1;
  const stepSize = lr / (1 - c.beta1 ** t);
  const bc2 = Math.sqrt(1 - c.beta2 ** t);
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]! * clip;
    p[i] = p[i]! * (1 - lr * c.weightDecay);
    m[i] = c.beta1 * m[i]! + (1 - c.beta1) * gi;
    v[i] = c.beta2 * v[i]! + (1 - c.beta2) * gi * gi;
    p[i] = p[i]! - (stepSize * m[i]!) / (Math.sqrt(v[i]!) / bc2 + c.eps);
  }
  return norm;
}

// Ragged tensor sizes (none a multiple of the 64-element alignment or the 256-thread workgroup).
const PARAMS = [
  { name: 'layers.0.q.lora_A', shape: [3, 37] },
  { name: 'layers.0.q.lora_B', shape: [37, 3] },
  { name: 'layers.0.o.lora_A', shape: [1] },
  { name: 'layers.1.up.lora_A', shape: [300] },
  { name: 'layers.1.up.lora_B', shape: [65, 64] },
];

/** Random values in the real slots, zero in the alignment gaps. */
function randomFlat(layout: OptimizerLayout, random: () => number, scale: number): Float32Array {
  return layout.pack(new Map(layout.slots.map((s) => [s.name, randn(s.length, random, scale)])));
}

const LRS = [1e-2, 8e-3, 5e-3, 2e-3];

describe('OptimizerLayout', () => {
  it('aligns every slot to 256 bytes and round-trips pack/unpack', () => {
    const layout = new OptimizerLayout(PARAMS);
    for (const s of layout.slots) expect(s.offset % 64).toBe(0);
    expect(layout.slot('layers.1.up.lora_A')).toMatchObject({ offset: 320, length: 300 });
    const values = new Map(layout.slots.map((s, i) => [s.name, new Float32Array(s.length).fill(i + 1)]));
    const back = layout.unpack(layout.pack(values));
    for (const [k, v] of values) expect(Array.from(back.get(k)!)).toEqual(Array.from(v));
    expect(() => new OptimizerLayout([PARAMS[0]!, PARAMS[0]!])).toThrow(/duplicate/);
  });
});

describe('AdamW (torch semantics) with global grad-norm clip', () => {
  const CASES: { name: string; gradScale: number; config: () => AdamWConfig }[] = [
    { name: 'fixture settings, clipping active (‖g‖ ≫ 1)', gradScale: 1, config: fixtureConfig },
    { name: 'fixture settings, clipping inactive (‖g‖ < 1)', gradScale: 1e-3, config: fixtureConfig },
    { name: 'no clipping configured, large grads, wd 0.1', gradScale: 3, config: () => ({ ...fixtureConfig(), weightDecay: 0.1, maxGradNorm: undefined }) },
  ];
  for (const c of CASES)
    it(`${c.name}: 4 steps with a changing lr`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const random = rng(seed);
      const config = c.config();
      const layout = new OptimizerLayout(PARAMS);
      const state = createOptimizerState(ctx, layout);
      const p0 = randomFlat(layout, random, 0.5);
      ctx.write(state.params, p0);
      const p = Float64Array.from(p0);
      const m = new Float64Array(layout.total);
      const v = new Float64Array(layout.total);
      const opt = await AdamW.create(ctx, state, config);
      const step = await opt.stepDispatches();
      for (let t = 1; t <= 4; t++) {
        const g = randomFlat(layout, random, c.gradScale);
        ctx.write(state.grads, g);
        const lr = LRS[t - 1]!;
        opt.setStep(t, lr);
        await ctx.run(step);
        const norm = referenceStep(p, g, m, v, t, lr, config);
        const what = `step ${t}, seed ${seed}`;
        expectClose(await ctx.read(opt.gradNorm), [norm], 1e-5, `grad norm, ${what}`);
        expectClose(await ctx.read(state.m!), m, 1e-5, `m, ${what}`);
        expectClose(await ctx.read(state.v!), v, 1e-5, `v, ${what}`);
        expectClose(await ctx.read(state.params), p, 1e-5, `params, ${what}`);
        // The grads buffer is not modified by the update (no ZERO_GRAD).
        expect(Array.from(await ctx.read(state.grads))).toEqual(Array.from(g));
      }
      if (c.gradScale === 1) expect(Math.sqrt(layout.total), 'the clip really is active').toBeGreaterThan(1);
      opt.release();
      releaseOptimizerState(ctx, state);
    });

  it('streams the moments in ragged chunks (offloaded m/v) and matches the resident update', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const random = rng(seed);
    const config = fixtureConfig();
    const layout = new OptimizerLayout(PARAMS);
    const state = createOptimizerState(ctx, layout, { residentMoments: false });
    expect(state.m).toBeNull();
    const p0 = randomFlat(layout, random, 0.5);
    ctx.write(state.params, p0);
    const p = Float64Array.from(p0);
    const mRef = new Float64Array(layout.total);
    const vRef = new Float64Array(layout.total);
    // Host copies of the moments (the "CPU/disk" side), and one chunk-sized GPU staging pair.
    const mHost = new Float32Array(layout.total);
    const vHost = new Float32Array(layout.total);
    const bounds = [0, 1000, 2345, layout.total];
    const chunkMax = Math.max(...bounds.slice(1).map((b, i) => b - bounds[i]!));
    const mChunk = ctx.tensor('m chunk', [chunkMax]);
    const vChunk = ctx.tensor('v chunk', [chunkMax]);
    const opt = await AdamW.create(ctx, state, config);
    const updates = await Promise.all(
      bounds.slice(1).map((end, i) => opt.prepareUpdate({ offset: bounds[i]!, length: end - bounds[i]!, moments: { m: mChunk, v: vChunk } })),
    );
    for (let t = 1; t <= 3; t++) {
      const g = randomFlat(layout, random, 1);
      ctx.write(state.grads, g);
      opt.setStep(t);
      await ctx.run(opt.normDispatches);
      for (let c = 0; c < updates.length; c++) {
        const [b, e] = [bounds[c]!, bounds[c + 1]!];
        ctx.write(mChunk, mHost.subarray(b, e));
        ctx.write(vChunk, vHost.subarray(b, e));
        await ctx.run([updates[c]!]);
        mHost.set((await ctx.read(mChunk)).subarray(0, e - b), b);
        vHost.set((await ctx.read(vChunk)).subarray(0, e - b), b);
      }
      referenceStep(p, g, mRef, vRef, t, config.lr, config);
      const what = `step ${t}, seed ${seed}`;
      expectClose(mHost, mRef, 1e-5, `m, ${what}`);
      expectClose(vHost, vRef, 1e-5, `v, ${what}`);
      expectClose(await ctx.read(state.params), p, 1e-5, `params, ${what}`);
    }
    opt.release();
    releaseOptimizerState(ctx, state);
    ctx.release(mChunk);
    ctx.release(vChunk);
  });

  it('zeroes grads: fused into the update, and as its own pass over a sub-range', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const layout = new OptimizerLayout(PARAMS);
    const state = createOptimizerState(ctx, layout);
    const g = randomFlat(layout, rng(seed), 1);
    ctx.write(state.grads, g);
    await ctx.run([await prepareZeroGrad(ctx, state.grads, 100, 1000)]);
    const afterRange = await ctx.read(state.grads);
    const expected = Float32Array.from(g).fill(0, 100, 1100);
    expect(Array.from(afterRange)).toEqual(Array.from(expected));
    const opt = await AdamW.create(ctx, state, fixtureConfig());
    opt.setStep(1);
    await ctx.run(await opt.stepDispatches({ zeroGrad: true }));
    expect((await ctx.read(state.grads)).every((x) => x === 0)).toBe(true);
    const p = await ctx.read(state.params);
    expect(p.some((x) => x !== 0), 'the fused update still updated the params').toBe(true);
    opt.release();
    releaseOptimizerState(ctx, state);
  });

  it('rejects a range outside the layout and missing moments', async () => {
    const ctx = await gpu();
    const layout = new OptimizerLayout(PARAMS);
    const state = createOptimizerState(ctx, layout, { residentMoments: false });
    const opt = await AdamW.create(ctx, state, fixtureConfig());
    await expect(opt.prepareUpdate()).rejects.toThrow(/not resident/);
    await expect(opt.prepareUpdate({ offset: 10, length: layout.total })).rejects.toThrow(/outside/);
    expect(() => opt.setStep(0)).toThrow(/≥ 1/);
    opt.release();
    releaseOptimizerState(ctx, state);
  });
});
