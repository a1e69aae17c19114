/**
 * GPU sampling (sampling.wgsl) against a float64 CPU reference on fixed logits: the exact id for the draw
 * u = samplingUniform(seed, step) under top-k (1, 40, 300, the vocabulary), top-p, temperature and
 * repetition penalty, on random logits and on logits with ties at every boundary, through both the fast
 * path and the general one; the reference itself checked against a literal transcription of transformers'
 * TopK/TopP warpers; greedy ties; reproducibility per seed; and the last-position logits GEMV.
 */
import { describe, expect, it } from 'vitest';
import { prepareHeadLogits, prepareSampler, sampleOnce, samplingPlan, samplingUniform, SAMPLING_KMAX, type SamplingParams } from '../../src/engine/kernels/sampling.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** Adjusted logits in float64: HF's repetition penalty on seen ids, then the temperature (greedy: none). */
function adjustedLogits(logits: Float32Array, seen: Set<number>, p: SamplingParams): Float64Array {
  const greedy = !(p.temperature >= 1e-5);
  const adj = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) {
    // The GPU computes in f32: mirror its roundings, so that ties stay exactly the ties it sees.
    const pen = Math.fround(p.repetitionPenalty);
    let l = logits[i]!;
    if (seen.has(i)) l = Math.fround(l > 0 ? l / pen : l * pen);
    adj[i] = greedy ? l : Math.fround(l * Math.fround(1 / p.temperature));
  }
  return adj;
}

/**
 * The kept set and the draw, as documented in sampling.wgsl, in float64: rank order (value desc, id asc);
 * top-k keeps every token >= the k-th value; top-p walks the rank order over the softmax of the kept ones
 * (a token goes once the mass above it is >= top_p, the first stays); the draw is the first kept token whose
 * cumulative probability exceeds u · kept mass.
 */
function cpuKept(adj: Float64Array, p: SamplingParams): { order: number[]; prob: number[] } {
  const V = adj.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => adj[b]! - adj[a]! || a - b);
  let n = V;
  if (p.topK > 0 && p.topK < V) {
    const kth = adj[order[p.topK - 1]!]!;
    n = p.topK;
    while (n < V && adj[order[n]!]! >= kth) n++;
  }
  const m = adj[order[0]!]!;
  let z = 0;
  for (let i = 0; i < n; i++) z += Math.exp(adj[order[i]!]! - m);
  const prob = order.slice(0, n).map((i) => Math.exp(adj[i]! - m) / z);
  let keep = n;
  if (p.topP < 1) {
    let above = 0;
    for (let i = 0; i < n; i++) {
      if (i > 0 && above >= p.topP) {
        keep = i;
        break;
      }
      above += prob[i]!;
    }
  }
  return { order: order.slice(0, keep), prob: prob.slice(0, keep) };
}

function cpuSample(logits: Float32Array, seen: Set<number>, p: SamplingParams, u: number): number {
  const adj = adjustedLogits(logits, seen, p);
  if (!(p.temperature >= 1e-5)) {
    let best = 0;
    for (let i = 1; i < adj.length; i++) if (adj[i]! > adj[best]!) best = i;
    return best;
  }
  const { order, prob } = cpuKept(adj, p);
  const target = u * prob.reduce((a, b) => a + b, 0);
  let acc = 0;
  for (let i = 0; i < order.length; i++) {
    acc += prob[i]!;
    if (acc > target) return order[i]!;
  }
  return order[order.length - 1]!;
}

/**
 * The ids a draw may pick when the GPU's f32 cumulative sums can differ from this float64 walk: those whose
 * CDF interval comes within `tol` (relative to the kept mass) of the target. A draw that lands that close to
 * a boundary between two ids is decided by rounding; anywhere else the window holds just cpuSample's id.
 */
function cpuSampleWindow(logits: Float32Array, seen: Set<number>, p: SamplingParams, u: number, tol: number): Set<number> {
  const adj = adjustedLogits(logits, seen, p);
  if (!(p.temperature >= 1e-5)) return new Set([cpuSample(logits, seen, p, u)]);
  const { order, prob } = cpuKept(adj, p);
  const z = prob.reduce((a, b) => a + b, 0);
  const target = u * z;
  const out = new Set<number>();
  let acc = 0;
  for (let i = 0; i < order.length; i++) {
    const lo = acc;
    acc += prob[i]!;
    if (acc >= target - tol * z && lo <= target + tol * z) out.add(order[i]!);
  }
  return out;
}

/**
 * transformers' TopKLogitsWarper then TopPLogitsWarper, transcribed literally (float64, a stable ascending
 * sort with ids descending among equal values, i.e. the reverse of the rank order): the set of ids left.
 */
function hfKeptSet(adj: Float64Array, topK: number, topP: number): Set<number> {
  const V = adj.length;
  const scores = Float64Array.from(adj);
  if (topK > 0) {
    const k = Math.min(topK, V);
    const kth = [...scores].sort((a, b) => b - a)[k - 1]!; // torch.topk(scores, k)[0][..., -1]
    for (let i = 0; i < V; i++) if (scores[i]! < kth) scores[i] = -Infinity;
  }
  if (topP < 1) {
    const asc = Array.from({ length: V }, (_, i) => i).sort((a, b) => scores[a]! - scores[b]! || b - a);
    const m = Math.max(...scores);
    const e = asc.map((i) => Math.exp(scores[i]! - m));
    const z = e.reduce((a, b) => a + b, 0);
    let cum = 0;
    asc.forEach((i, r) => {
      cum += e[r]! / z;
      // sorted_indices_to_remove = cumulative_probs <= 1 - top_p; the last min_tokens_to_keep = 1 stays.
      if (cum <= 1 - topP && r < V - 1) scores[i] = -Infinity;
    });
  }
  return new Set(Array.from({ length: V }, (_, i) => i).filter((i) => scores[i]! > -Infinity));
}

/** Whether sample_select must defer to sample_general (mirrors its rules; the test checks both paths run). */
function takesGeneralPath(adj: Float64Array, p: SamplingParams): boolean {
  const V = adj.length;
  const plan = samplingPlan(p, V);
  if (!(p.temperature >= 1e-5)) return false;
  if (plan.rounds === 0) return true;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => adj[b]! - adj[a]! || a - b);
  if (plan.topK > 0) return adj[order[plan.topK]!]! === adj[order[plan.topK - 1]!]!;
  if (V <= SAMPLING_KMAX) return false;
  return cpuKept(adj, p).order.length >= SAMPLING_KMAX;
}

/** Logits with ties: values drawn from a few levels, so that equal logits straddle every boundary. */
function tiedLogits(V: number, r: () => number, levels: number, scale: number): Float32Array {
  return Float32Array.from({ length: V }, () => Math.round(r() * levels) * (scale / levels));
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
    ['top-k 1', 5000, { topK: 1 }, 1],
    ['top-k 300 (general path)', 5000, { topK: 300 }, 1],
    ['top-k 300 + top-p 0.9 + penalty 1.2 (general path)', 4097, { topK: 300, topP: 0.9, repetitionPenalty: 1.2 }, 0.5],
    ['top-k = vocabulary (off)', 3001, { topK: 3001 }, 1],
    ['top-k off, top-p 0.95 over a flat distribution (nucleus > KMAX: general path)', 20_000, { topP: 0.95 }, 0.2],
    ['top-k off, top-p off (the whole vocabulary: general path)', 70_000, {}, 1],
  ];
  const tiedCases: [string, number, Partial<SamplingParams>, number, number][] = [
    ['ties: top-k 40 at a tied boundary', 5000, { topK: 40 }, 8, 4],
    ['ties: top-k 1 with a tied maximum', 700, { topK: 1 }, 3, 2],
    ['ties: top-k 300 (general path)', 9000, { topK: 300, temperature: 0.8 }, 20, 6],
    ['ties: top-k 255 + top-p 0.6', 4000, { topK: 255, topP: 0.6 }, 12, 5],
    ['ties: top-p 0.5, top-k off', 3000, { topP: 0.5 }, 10, 5],
    ['ties: top-k = vocabulary, top-p 0.9', 777, { topK: 777, topP: 0.9 }, 6, 3],
  ];
  const all: [string, number, Partial<SamplingParams>, (r: () => number) => Float32Array][] = [
    ...cases.map(([n, V, o, scale]) => [n, V, o, (r: () => number) => randn(V, r, scale)] as [string, number, Partial<SamplingParams>, (r: () => number) => Float32Array]),
    ...tiedCases.map(([n, V, o, levels, scale]) => [n, V, o, (r: () => number) => tiedLogits(V, r, levels, scale)] as [string, number, Partial<SamplingParams>, (r: () => number) => Float32Array]),
  ];
  for (const [name, V, over, make] of all) {
    it(`${name}: the reference's ids for the seeded draws`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const logits = make(r);
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
      let general = 0;
      for (let step = 0; step < 6; step++) {
        // The sampler marks its choice as seen: mirror that in the reference.
        const u = samplingUniform(p.seed, step);
        const exact = cpuSample(logits, seen, p, u);
        if (takesGeneralPath(adjustedLogits(logits, seen, p), p)) general++;
        await ctx.run(s.dispatches);
        const id = (await ctx.read(s.outId))[0]!;
        // Exact, except a draw within f32 rounding (1e-5 of the mass, ~170 ulps of the sum) of a boundary
        // between two ids, where either neighbour is right (whole-vocabulary draws over 70000 near-equal
        // probabilities meet one now and then).
        const window = cpuSampleWindow(logits, seen, p, u, 1e-5);
        expect(window.has(exact)).toBe(true);
        want.push(id !== exact && window.has(id) ? id : exact);
        got.push(id);
        seen.add(id);
      }
      expect(got, `seed ${seed}`).toEqual(want);
      const st = await ctx.read(s.state, 'u32');
      expect(st[0]).toBe(6);
      expect(st[2], 'tokens chosen by the general path').toBe(general);
      if (/general path/.test(name)) expect(general).toBe(6);
      if (/^ties: top-k (1|40|300) /.test(name)) expect(general, 'a tie at the k-th value sends the token to the general path').toBeGreaterThan(0);
      s.release();
      ctx.release(t);
    }, 60_000);
  }

  it('the reference keeps exactly the set transformers\' TopK + TopP warpers keep (ties included)', () => {
    const seed = freshSeed();
    const r = rng(seed);
    let compared = 0;
    for (let trial = 0; trial < 60; trial++) {
      const V = 50 + Math.floor(r() * 400);
      const logits = trial % 2 ? tiedLogits(V, r, 2 + Math.floor(r() * 12), 3) : randn(V, r, 2);
      const topK = [0, 1, 5, 40, 300, V][trial % 6]!;
      const topP = [1, 0.9, 0.75, 0.3, 0.05][trial % 5]!;
      const p: SamplingParams = { ...base, topK, topP };
      const adj = adjustedLogits(logits, new Set(), p);
      const ours = new Set(cpuKept(adj, p).order);
      const hf = hfKeptSet(adj, topK, topP);
      // Where the mass above a token equals top_p exactly in real numbers (e.g. 20 ties of 0.05 and top_p
      // 0.9), the decision is rounding's, in transformers as here: such trials are not compared.
      const all = cpuKept(adj, { ...p, topP: 1 });
      let above = 0;
      if (topP < 1 && all.prob.some((q) => Math.abs(above - topP) < 1e-9 || ((above += q), false))) continue;
      compared++;
      // Inside a tie group cut by top-p the two may keep different members (torch's sort order among equal
      // values is unspecified): compare the sizes then, and the sets otherwise.
      expect(ours.size, `seed ${seed} trial ${trial}`).toBe(hf.size);
      const cutValue = Math.min(...[...ours].map((i) => adj[i]!));
      for (const i of hf) if (adj[i]! !== cutValue) expect(ours.has(i), `seed ${seed} trial ${trial} id ${i}`).toBe(true);
    }
    expect(compared, `seed ${seed}`).toBeGreaterThan(50);
  });

  it('plans the fast path only where it is exact', () => {
    expect(samplingPlan({ ...base, temperature: 0 }, 1000)).toEqual({ rounds: 1, merge: 1, topK: 0 });
    expect(samplingPlan({ ...base, topK: 40 }, 1000)).toEqual({ rounds: 41, merge: 40, topK: 40 });
    expect(samplingPlan({ ...base, topK: SAMPLING_KMAX }, 1000).rounds).toBe(0);
    expect(samplingPlan({ ...base, topK: 1000 }, 1000)).toEqual({ rounds: 0, merge: 0, topK: 0 });
    expect(samplingPlan({ ...base, topP: 0.9 }, 1000)).toEqual({ rounds: SAMPLING_KMAX, merge: SAMPLING_KMAX, topK: 0 });
    expect(samplingPlan({ ...base, topK: 0 }, 200)).toEqual({ rounds: 200, merge: 200, topK: 0 });
  });

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
