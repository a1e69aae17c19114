import { describe, expect, it } from 'vitest';
import type { RopeSpec } from '../../src/engine/model/config.ts';
import { rope, ropeBackward, ropeInvFreq, uploadInvFreq } from '../../src/engine/kernels/rope.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, relError, rng } from '../helpers/numeric.ts';

const f32 = Math.fround;

/**
 * float64 rotation of x [tokens, heads, d] (rows of `stride` from `offset`), with the angle formed as HF
 * forms it in float32 (θ = f32(f32(pos) · f32(inv_freq))) and cos/sin of that value in float64.
 */
function rotateRef(x: ArrayLike<number>, pos: ArrayLike<number>, inv: Float32Array, tokens: number, heads: number, d: number, sign = 1, stride = heads * d, offset = 0): Float64Array {
  const out = Float64Array.from(x as ArrayLike<number>);
  const half = d / 2;
  for (let t = 0; t < tokens; t++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < half; i++) {
        const theta = f32(f32(pos[t]!) * inv[i]!);
        const c = Math.cos(theta);
        const s = sign * Math.sin(theta);
        const a = t * stride + offset + h * d + i;
        const x1 = x[a]!;
        const x2 = x[a + half]!;
        out[a] = x1 * c - x2 * s;
        out[a + half] = x2 * c + x1 * s;
      }
  return out;
}

/** Packed rows: positions restart at 0 for each row, rows of random lengths; optionally large offsets. */
function packedPositions(tokens: number, r: () => number, large: boolean): Int32Array {
  const p = new Int32Array(tokens);
  let next = large ? Math.floor(r() * 40000) : 0;
  for (let t = 0; t < tokens; t++) {
    p[t] = next++;
    if (r() < 0.2) next = large ? Math.floor(r() * 40000) : 0;
  }
  return p;
}

const DEFAULT: RopeSpec = { theta: 10000, scaling: { type: 'none' } };
const LLAMA32: RopeSpec = { theta: 500000, scaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } };
const INTERNLM2: RopeSpec = { theta: 1000000, scaling: { type: 'dynamic', factor: 2, maxPositionEmbeddings: 32768 } };

describe('rope inverse frequencies (CPU, float64)', () => {
  /** transformers' _compute_default_rope_parameters, transcribed: 1 / base ** (arange(0, d, 2) / d). */
  const hfDefault = (base: number, d: number) => Float64Array.from({ length: d / 2 }, (_, j) => 1.0 / base ** ((2 * j) / d));

  it('default: theta^(−2i/d)', () => {
    const inv = ropeInvFreq(DEFAULT, 128);
    expect(inv.length).toBe(64);
    expect(inv[0]).toBe(1);
    expect(inv[1]).toBeCloseTo(0.8659643233600653, 15);
    expect(relError(inv, hfDefault(10000, 128))).toBeLessThan(1e-15);
  });

  it('linear: default / factor', () => {
    const inv = ropeInvFreq({ theta: 10000, scaling: { type: 'linear', factor: 4 } }, 64);
    expect(relError(inv, hfDefault(10000, 64).map((v) => v / 4))).toBeLessThan(1e-15);
  });

  it('llama3 (Llama-3.2: factor 32, low 1, high 4, original 8192) as _compute_llama3_parameters', () => {
    const d = 64;
    const { factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig } = LLAMA32.scaling as Extract<RopeSpec['scaling'], { type: 'llama3' }>;
    // Transcription of HF: torch.where over the whole vector, as the Python does it.
    const inv = hfDefault(500000, d);
    const wavelen = inv.map((f) => (2 * Math.PI) / f);
    const lowW = orig / low;
    const highW = orig / high;
    const llama = inv.map((f, i) => (wavelen[i]! > lowW ? f / factor : f));
    const smooth = wavelen.map((w) => (orig / w - low) / (high - low));
    const smoothed = llama.map((f, i) => ((1 - smooth[i]!) * f) / factor + smooth[i]! * f);
    const medium = wavelen.map((w) => (!(w < highW) && !(w > lowW) ? 1 : 0));
    const ref = llama.map((f, i) => (medium[i] ? smoothed[i]! : f));
    const got = ropeInvFreq(LLAMA32, d);
    expect(relError(got, ref)).toBeLessThan(1e-15);
    // Sanity of the three regimes: the highest frequency is untouched, the lowest divided by factor, and
    // the medium band lies strictly between.
    expect(got[0]).toBe(1);
    expect(got[d / 2 - 1]! * factor).toBeCloseTo(inv[d / 2 - 1]!, 20);
    const mids = [...medium].map((m, i) => (m ? i : -1)).filter((i) => i >= 0);
    expect(mids.length).toBeGreaterThan(0);
    for (const i of mids) {
      expect(got[i]!).toBeGreaterThan(inv[i]! / factor);
      expect(got[i]!).toBeLessThan(inv[i]!);
    }
  });

  it('dynamic NTK (InternLM2): identity up to max_position_embeddings, rescaled base beyond', () => {
    const d = 128;
    expect(Array.from(ropeInvFreq(INTERNLM2, d, 2048))).toEqual(Array.from(ropeInvFreq({ theta: 1e6, scaling: { type: 'none' } }, d)));
    expect(Array.from(ropeInvFreq(INTERNLM2, d))).toEqual(Array.from(ropeInvFreq(INTERNLM2, d, 32768)));
    const seq = 3 * 32768;
    // base · ((factor · seq / max) − (factor − 1)) ** (d / (d − 2)) = 1e6 · 5^(128/126)
    const base = 1e6 * 5 ** (128 / 126);
    expect(relError(ropeInvFreq(INTERNLM2, d, seq), hfDefault(base, d))).toBeLessThan(1e-14);
  });

  it('rejects an odd head_dim', () => {
    expect(() => ropeInvFreq(DEFAULT, 63)).toThrow(/even/);
  });
});

// [tokens, heads, headDim, large positions]: vec4 (d/2 multiple of 4) and scalar (d/2 = 3, 65) paths.
const SHAPES: [number, number, number, boolean][] = [
  [1, 1, 8, false],
  [7, 3, 64, false],
  [33, 2, 6, true],
  [5, 16, 128, true],
  [9, 3, 130, true],
];

describe('rope (GPU)', () => {
  for (const [tokens, heads, d, large] of SHAPES) {
    it(`forward out-of-place and in place, backward, tokens=${tokens} heads=${heads} d=${d}${large ? ' (positions up to 40000)' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const spec = d === 128 ? LLAMA32 : DEFAULT;
      const invF = Float32Array.from(ropeInvFreq(spec, d));
      const pos = packedPositions(tokens, r, large);
      const x = randn(tokens * heads * d, r);
      const shape = { tokens, heads, headDim: d };
      const P = ctx.upload('positions', [tokens], pos);
      const F = uploadInvFreq(ctx, ropeInvFreq(spec, d));
      const X = ctx.upload('x', [tokens, heads, d], x);
      const O = poisoned(ctx, 'out', [tokens, heads, d]);
      await rope(ctx, X, P, F, shape, { out: O });
      const ref = rotateRef(x, pos, invF, tokens, heads, d);
      expectClose(await ctx.read(O), ref, 1e-5, `out-of-place, seed ${seed}`);
      expect(Array.from(await ctx.read(X)), 'x untouched').toEqual(Array.from(x));

      await rope(ctx, X, P, F, shape);
      expectClose(await ctx.read(X), ref, 1e-5, `in place, seed ${seed}`);

      const dy = randn(tokens * heads * d, r);
      const DY = ctx.upload('dy', [tokens, heads, d], dy);
      const DX = poisoned(ctx, 'dx', [tokens, heads, d]);
      await ropeBackward(ctx, DY, P, F, shape, { out: DX });
      expectClose(await ctx.read(DX), rotateRef(dy, pos, invF, tokens, heads, d, -1), 1e-5, `backward, seed ${seed}`);
      for (const t of [P, F, X, O, DY, DX]) ctx.release(t);
    });
  }

  for (const d of [8, 6]) {
    it(`in place on q and k inside a fused qkv buffer (strides and offsets), d=${d}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const [tokens, hq, hk] = [7, 4, 2];
      const stride = (hq + 2 * hk) * d;
      const qkv = randn(tokens * stride, r);
      const pos = packedPositions(tokens, r, true);
      const inv = ropeInvFreq(INTERNLM2, d);
      const invF = Float32Array.from(inv);
      const QKV = ctx.upload('qkv', [tokens, stride], qkv);
      const P = ctx.upload('positions', [tokens], pos);
      const F = uploadInvFreq(ctx, inv);
      await rope(ctx, QKV, P, F, { tokens, heads: hq, headDim: d }, { xLayout: { stride, offset: 0 } });
      await rope(ctx, QKV, P, F, { tokens, heads: hk, headDim: d }, { xLayout: { stride, offset: hq * d } });
      let ref = rotateRef(qkv, pos, invF, tokens, hq, d, 1, stride, 0);
      ref = rotateRef(ref, pos, invF, tokens, hk, d, 1, stride, hq * d);
      const got = await ctx.read(QKV);
      expectClose(got, ref, 1e-5, `seed ${seed}`);
      for (let t = 0; t < tokens; t++)
        for (let j = (hq + hk) * d; j < stride; j++) expect(got[t * stride + j], 'v untouched').toBe(qkv[t * stride + j]);
    });
  }

  it('strided out-of-place: k from a fused buffer into a dense [tokens, heads, d] tensor', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [tokens, heads, d, stride, offset] = [5, 2, 16, 80, 32];
    const buf = randn(tokens * stride, r);
    const pos = packedPositions(tokens, r, false);
    const inv = ropeInvFreq(DEFAULT, d);
    const B = ctx.upload('qkv', [tokens, stride], buf);
    const P = ctx.upload('positions', [tokens], pos);
    const F = uploadInvFreq(ctx, inv);
    const O = poisoned(ctx, 'k', [tokens, heads, d]);
    await rope(ctx, B, P, F, { tokens, heads, headDim: d }, { out: O, xLayout: { stride, offset } });
    const full = rotateRef(buf, pos, Float32Array.from(inv), tokens, heads, d, 1, stride, offset);
    const ref = new Float64Array(tokens * heads * d);
    for (let t = 0; t < tokens; t++) for (let j = 0; j < heads * d; j++) ref[t * heads * d + j] = full[t * stride + offset + j]!;
    expectClose(await ctx.read(O), ref, 1e-5, `seed ${seed}`);
  });

  for (const d of [16, 6])
    it(`generation: rotated keys and their values written into the cache rows their positions name, d=${d}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const [tokens, heads, rows] = [4, 3, 11];
      const row = heads * d;
      const k = randn(tokens * row, r);
      const v = randn(tokens * row, r);
      const pos = Int32Array.from([7, 8, 2, 10]);
      const inv = ropeInvFreq(DEFAULT, d);
      const K = ctx.upload('k', [tokens, heads, d], k);
      const Vt = ctx.upload('v', [tokens, heads, d], v);
      const P = ctx.upload('positions', [tokens], pos);
      const F = uploadInvFreq(ctx, inv);
      const kCache = poisoned(ctx, 'k cache', [rows, heads, d]);
      const vCache = poisoned(ctx, 'v cache', [rows, heads, d]);
      await rope(ctx, K, P, F, { tokens, heads, headDim: d }, { out: kCache, outRowsByPosition: { outRows: rows, storeV: { src: Vt, out: vCache } } });
      const rotated = rotateRef(k, pos, Float32Array.from(inv), tokens, heads, d);
      const kc = await ctx.read(kCache);
      const vc = await ctx.read(vCache);
      for (let t = 0; t < tokens; t++) {
        const at = pos[t]! * row;
        expectClose(kc.subarray(at, at + row), rotated.subarray(t * row, (t + 1) * row), 1e-5, `k token ${t}, seed ${seed}`);
        expect(Array.from(vc.subarray(at, at + row)), `v token ${t}`).toEqual(Array.from(v.subarray(t * row, (t + 1) * row)));
      }
      // Rows no position names are untouched (still the poison).
      for (const untouched of [0, 1, 3, 4, 5, 6, 9]) {
        expect(kc.subarray(untouched * row, (untouched + 1) * row).every(Number.isNaN), `k row ${untouched}`).toBe(true);
        expect(vc.subarray(untouched * row, (untouched + 1) * row).every(Number.isNaN), `v row ${untouched}`).toBe(true);
      }
      for (const x of [K, Vt, P, F, kCache, vCache]) ctx.release(x);
    });

  it('backward matches finite differences of the float64 forward (loss = Σ out·g), and inverts the forward', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [tokens, heads, d] = [3, 2, 6];
    const inv = ropeInvFreq(DEFAULT, d);
    const invF = Float32Array.from(inv);
    const pos = Int32Array.from([5, 0, 1]);
    const x = randn(tokens * heads * d, r);
    const g = randn(tokens * heads * d, r);
    const loss = (xx: ArrayLike<number>) => rotateRef(xx, pos, invF, tokens, heads, d).reduce((s, v, i) => s + v * g[i]!, 0);
    const h = 1e-6;
    const fd = Float64Array.from(x, (_, i) => {
      const p = Float64Array.from(x);
      const m = Float64Array.from(x);
      p[i] = p[i]! + h;
      m[i] = m[i]! - h;
      return (loss(p) - loss(m)) / (2 * h);
    });
    const shape = { tokens, heads, headDim: d };
    const P = ctx.upload('positions', [tokens], pos);
    const F = uploadInvFreq(ctx, inv);
    const G = ctx.upload('g', [tokens, heads, d], g);
    await ropeBackward(ctx, G, P, F, shape);
    expectClose(await ctx.read(G), fd, 1e-4, `dx vs finite differences, seed ${seed}`);

    const X = ctx.upload('x', [tokens, heads, d], x);
    await rope(ctx, X, P, F, shape);
    await ropeBackward(ctx, X, P, F, shape);
    expectClose(await ctx.read(X), x, 1e-5, `R(−θ)·R(θ)·x = x, seed ${seed}`);
  });

  it('rejects float positions and too-small tensors', async () => {
    const ctx = await gpu();
    const X = ctx.tensor('q', [2, 1, 8]);
    const Pf = ctx.tensor('float positions', [2]);
    const F = ctx.tensor('inv', [4]);
    await expect(rope(ctx, X, Pf, F, { tokens: 2, heads: 1, headDim: 8 })).rejects.toThrow(/float positions.*i32/);
    const P = ctx.upload('positions', [2], new Int32Array(2));
    await expect(rope(ctx, X, P, F, { tokens: 2, heads: 2, headDim: 8 })).rejects.toThrow(/'q'/);
  });
});
