/**
 * GPU sampling (sampling.wgsl) against a float64 CPU reference on fixed logits: the exact id for the draw
 * u = samplingUniform(seed, step) under top-k, top-p, temperature and repetition penalty; greedy ties;
 * reproducibility per seed; and the last-position logits GEMV.
 */
import { describe, expect, it } from 'vitest';
import { prepareHeadLogits, prepareSampler, sampleOnce, samplingUniform, SAMPLING_KMAX, type SamplingParams } from '../../src/engine/kernels/sampling.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** The documented semantics in float64: candidates = the k best (value desc, id asc). */
function cpuSample(logits: Float32Array, seen: Set<number>, p: SamplingParams, u: number): number {
  const V = logits.length;
  const greedy = !(p.temperature >= 1e-5);
  const adj = new Float64Array(V);
  for (let i = 0; i < V; i++) {
    let l = logits[i]!;
    if (seen.has(i)) l = l > 0 ? l / p.repetitionPenalty : l * p.repetitionPenalty;
    adj[i] = greedy ? l : l / p.temperature;
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => adj[b]! - adj[a]! || a - b);
  if (greedy) return order[0]!;
  const topKOn = p.topK > 0 && p.topK <= SAMPLING_KMAX;
  const k = Math.min(V, topKOn ? p.topK : SAMPLING_KMAX);
  const cand = order.slice(0, k);
  let total = 0;
  if (topKOn) for (const i of cand) total += Math.exp(adj[i]! - adj[cand[0]!]!);
  else for (let i = 0; i < V; i++) total += Math.exp(adj[i]! - adj[order[0]!]!);
  const prob = cand.map((i) => Math.exp(adj[i]! - adj[order[0]!]!) / total);
  let keep = k;
  if (p.topP < 1) {
    let above = 0;
    for (let i = 0; i < k; i++) {
      if (i > 0 && above >= p.topP) {
        keep = i;
        break;
      }
      above += prob[i]!;
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += prob[i]!;
  const target = u * kept;
  let acc = 0;
  for (let i = 0; i < keep; i++) {
    acc += prob[i]!;
    if (acc > target) return cand[i]!;
  }
  return cand[keep - 1]!;
}

const base: SamplingParams = { temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1, seed: 0 };

describe('sampling on the GPU', () => {
  const cases: [string, number, Partial<SamplingParams>, number][] = [
    ['top-k 40', 5000, { topK: 40 }, 2.5],
    ['top-k 7, ragged vocab', 333, { topK: 7 }, 1],
    ['top-p 0.8 (top-k off)', 4099, { topP: 0.8 }, 4],
    ['temperature 0.5 + top-k 50 + top-p 0.9', 6000, { temperature: 0.5, topK: 50, topP: 0.9 }, 2],
    ['XTuner defaults (T 0.1, top-p 0.75, top-k 40)', 2100, { temperature: 0.1, topK: 40, topP: 0.75 }, 0.3],
    ['repetition penalty 1.3 + top-k 20', 3000, { repetitionPenalty: 1.3, topK: 20 }, 2],
  ];
  for (const [name, V, over, scale] of cases) {
    it(`${name}: exact ids for the seeded draws`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const logits = randn(V, r, scale);
      // Seen ids: some of the best (positive logits) and some negative ones, so both branches of the penalty act.
      const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]!);
      const seen = new Set([order[0]!, order[2]!, order[5]!, order[V - 1]!, Math.floor(r() * V)]);
      const t = ctx.upload('logits', [V], logits);
      const p: SamplingParams = { ...base, ...over, seed: (seed * 7) >>> 0 };
      const s = await prepareSampler(ctx, t, V);
      s.setParams(p);
      s.reset([...seen], 0);
      const got: number[] = [];
      const want: number[] = [];
      for (let step = 0; step < 6; step++) {
        // The sampler marks its choice as seen: mirror that in the reference.
        want.push(cpuSample(logits, seen, p, samplingUniform(p.seed, step)));
        await ctx.run(s.dispatches);
        const id = (await ctx.read(s.outId))[0]!;
        got.push(id);
        seen.add(id);
      }
      expect(got, `seed ${seed}`).toEqual(want);
      expect((await ctx.read(s.state, 'u32'))[0]).toBe(6);
      s.release();
      ctx.release(t);
    }, 60_000);
  }

  it('greedy: argmax with the penalty applied, lowest id on ties', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const V = 151_936; // Qwen's vocabulary: 75 chunks
    const logits = randn(V, rng(seed), 1);
    logits[100_000] = 9;
    logits[7] = 9;
    logits[150_000] = 8.5;
    const t = ctx.upload('logits', [V], logits);
    expect(await sampleOnce(ctx, t, V, { ...base, temperature: 0 })).toBe(7);
    // Penalised: 9 / 1.2 = 7.5 < 8.5
    expect(await sampleOnce(ctx, t, V, { ...base, temperature: 0, repetitionPenalty: 1.2 }, { seen: [7, 100_000] })).toBe(150_000);
    const p = { ...base, temperature: 0.7, topK: 40, topP: 0.75, seed: 5 };
    expect(await sampleOnce(ctx, t, V, p, { step: 3 }), `seed ${seed}`).toBe(cpuSample(logits, new Set(), p, samplingUniform(5, 3)));
    ctx.release(t);
  }, 60_000);

  it('the same seed gives the same ids, another seed other ids', async () => {
    const ctx = await gpu();
    const V = 1000;
    const logits = randn(V, rng(freshSeed()), 0.5); // a flat distribution: draws matter
    const t = ctx.upload('logits', [V], logits);
    const run = async (seed: number) => {
      const s = await prepareSampler(ctx, t, V);
      s.setParams({ ...base, seed, topK: 100 });
      s.reset([], 0);
      const ids: number[] = [];
      for (let i = 0; i < 12; i++) {
        await ctx.run(s.dispatches);
        ids.push((await ctx.read(s.outId))[0]!);
      }
      s.release();
      return ids;
    };
    const a = await run(1234);
    expect(await run(1234)).toEqual(a);
    expect(await run(1235)).not.toEqual(a);
    ctx.release(t);
  }, 60_000);

  it('draws are uniform-ish and in [0, 1)', () => {
    let sum = 0;
    for (let s = 0; s < 10000; s++) {
      const u = samplingUniform(42, s);
      expect(u).toBeGreaterThanOrEqual(0);
      expect(u).toBeLessThan(1);
      sum += u;
    }
    expect(Math.abs(sum / 10000 - 0.5)).toBeLessThan(0.02);
  });

  for (const [H, rows] of [[68, [37, 50]], [128, [300]], [2052, [9, 1, 20]]] as [number, number[]][]) {
    it(`head logits GEMV: hidden ${H}, lm_head blocks [${rows.join(', ')}]`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const x = randn(H, r);
      const V = rows.reduce((a, b) => a + b, 0);
      const w = randn(V * H, r);
      let row0 = 0;
      const blocks = rows.map((n) => {
        const b = { tensor: ctx.upload(`w${row0}`, [n, H], w.subarray(row0 * H, (row0 + n) * H)), row0, rows: n };
        row0 += n;
        return b;
      });
      const xt = ctx.upload('x', [H], x);
      const out = poisoned(ctx, 'logits', [V]);
      await ctx.run(await prepareHeadLogits(ctx, xt, blocks, out, H));
      const ref = new Float64Array(V);
      for (let v = 0; v < V; v++) for (let k = 0; k < H; k++) ref[v]! += x[k]! * w[v * H + k]!;
      expectClose(await ctx.read(out), ref, 1e-5, `seed ${seed}`);
    }, 60_000);
  }
});
