import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import type { Tensor } from '../../src/engine/gpu/tensor.ts';
import {
  loraBackward,
  loraDropoutFactor,
  loraDropoutHash,
  loraDropoutThreshold,
  loraForward,
  loraScratchElems,
  prepareLoraBackward,
  prepareLoraForward,
  prepareLoraProduct,
  type LoraAdapter,
  type LoraBase,
} from '../../src/engine/kernels/lora.ts';
import { allocQ4Weight, dequantizeQ4Cpu, quantizeQ4Cpu, releaseQ4Weight, writeQ4Rows } from '../../src/engine/kernels/quant4.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

interface Problem {
  M: number;
  out: number;
  inF: number;
  r: number;
  alpha: number;
  p: number;
  seed: number;
  x: Float32Array;
  w: Float64Array; // the base as the GPU sees it (dequantized for 4-bit)
  a: Float32Array;
  b: Float32Array;
}

/** float64 reference forward: U = drop(X)·Aᵀ, Y = X·Wᵀ + s·U·Bᵀ. */
function refForward(P: Problem, x: ArrayLike<number> = P.x, w: ArrayLike<number> = P.w, a: ArrayLike<number> = P.a, b: ArrayLike<number> = P.b) {
  const { M, out, inF, r, p, seed } = P;
  const s = P.alpha / r;
  const u = new Float64Array(M * r);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++) {
      let t = 0;
      for (let k = 0; k < inF; k++) t += x[m * inF + k]! * loraDropoutFactor(seed, m * inF + k, p) * a[j * inF + k]!;
      u[m * r + j] = t;
    }
  const y = new Float64Array(M * out);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < out; n++) {
      let t = 0;
      for (let k = 0; k < inF; k++) t += x[m * inF + k]! * w[n * inF + k]!;
      let l = 0;
      for (let j = 0; j < r; j++) l += u[m * r + j]! * b[n * r + j]!;
      y[m * out + n] = t + s * l;
    }
  return { u, y };
}

/** float64 analytic backward; dA0/dB0 are the gradients already accumulated. */
function refBackward(P: Problem, dy: Float32Array, dA0: Float32Array, dB0: Float32Array) {
  const { M, out, inF, r, p, seed, x, w, a, b } = P;
  const s = P.alpha / r;
  const { u } = refForward(P);
  const g = new Float64Array(M * r);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++) {
      let t = 0;
      for (let n = 0; n < out; n++) t += dy[m * out + n]! * b[n * r + j]!;
      g[m * r + j] = t;
    }
  const dx = new Float64Array(M * inF);
  for (let m = 0; m < M; m++)
    for (let k = 0; k < inF; k++) {
      let t = 0;
      for (let n = 0; n < out; n++) t += dy[m * out + n]! * w[n * inF + k]!;
      let l = 0;
      for (let j = 0; j < r; j++) l += g[m * r + j]! * a[j * inF + k]!;
      dx[m * inF + k] = t + s * loraDropoutFactor(seed, m * inF + k, p) * l;
    }
  const dB = Float64Array.from(dB0);
  for (let n = 0; n < out; n++)
    for (let j = 0; j < r; j++) {
      let t = 0;
      for (let m = 0; m < M; m++) t += dy[m * out + n]! * u[m * r + j]!;
      dB[n * r + j] = dB[n * r + j]! + s * t;
    }
  const dA = Float64Array.from(dA0);
  for (let j = 0; j < r; j++)
    for (let k = 0; k < inF; k++) {
      let t = 0;
      for (let m = 0; m < M; m++) t += g[m * r + j]! * x[m * inF + k]! * loraDropoutFactor(seed, m * inF + k, p);
      dA[j * inF + k] = dA[j * inF + k]! + s * t;
    }
  return { dx, dA, dB };
}

interface Setup {
  P: Problem;
  base: LoraBase;
  ad: LoraAdapter;
  X: Tensor;
  release: () => void;
}

function setup(ctx: GpuContext, kind: 'q4' | 'f32', M: number, out: number, inF: number, r: number, p: number, seed: number, rowsPerBlock?: number): Setup {
  const rand = rng(seed);
  const w32 = randn(out * inF, rand, 0.05);
  const x = randn(M * inF, rand);
  const a = randn(r * inF, rand, 0.1);
  const b = randn(out * r, rand, 0.1);
  const P: Problem = { M, out, inF, r, alpha: 16, p, seed, x, w: Float64Array.from(w32), a, b };
  const ts: Tensor[] = [];
  const up = (label: string, shape: number[], data: Float32Array) => {
    const t = ctx.upload(label, shape, data);
    ts.push(t);
    return t;
  };
  let base: LoraBase;
  let releaseBase = () => {};
  if (kind === 'q4') {
    const host = quantizeQ4Cpu(w32, out, inF);
    const W = allocQ4Weight(ctx, 'W', out, inF, rowsPerBlock);
    writeQ4Rows(ctx, W, 0, host);
    P.w = dequantizeQ4Cpu(host, out, inF);
    base = { kind: 'q4', W };
    releaseBase = () => releaseQ4Weight(ctx, W);
  } else {
    base = { kind: 'f32', W: up('W', [out, inF], w32), out, in: inF };
  }
  const ad: LoraAdapter = { A: up('A', [r, inF], a), B: up('B', [out, r], b), rank: r, alpha: P.alpha, dropout: p };
  const X = up('X', [M, inF], x);
  return {
    P,
    base,
    ad,
    X,
    release: () => {
      for (const t of ts) ctx.release(t);
      releaseBase();
    },
  };
}

describe('lora dropout hash', () => {
  it('keeps about 1-p of the elements, depends on the seed, and is reproducible', () => {
    const p = 0.1;
    let kept = 0;
    let same = 0;
    const n = 200000;
    for (let i = 0; i < n; i++) {
      if (loraDropoutFactor(7, i, p) !== 0) kept++;
      if ((loraDropoutHash(7, i) < loraDropoutThreshold(p)) === (loraDropoutHash(8, i) < loraDropoutThreshold(p))) same++;
    }
    expect(Math.abs(kept / n - (1 - p))).toBeLessThan(0.005);
    // independent masks for different seeds agree on ~p² + (1-p)² = 0.82 of the elements
    expect(Math.abs(same / n - 0.82)).toBeLessThan(0.01);
    expect(loraDropoutHash(7, 12345)).toBe(loraDropoutHash(7, 12345));
  });
});

// [base, M, out, in, rank, dropout, rows per block]; M ≤ 8 with a 4-bit base takes the GEMV path.
const CASES: ['q4' | 'f32', number, number, number, number, number, number | undefined][] = [
  ['q4', 37, 53, 128, 8, 0, undefined],
  ['q4', 70, 67, 64, 64, 0.1, 24],
  ['q4', 3, 37, 128, 8, 0.2, undefined],
  // out % 4 == 0: the adapter's dX term is fused into the q4 dX kernel (with row blocks: into the first)
  ['q4', 130, 68, 192, 40, 0.15, undefined],
  ['q4', 37, 100, 128, 8, 0.1, 36],
  ['q4', 9, 64, 64, 16, 0, undefined],
  ['f32', 21, 45, 96, 8, 0.1, undefined],
  ['f32', 64, 64, 64, 64, 0, undefined],
  ['f32', 5, 70, 64, 64, 0.3, undefined],
];

describe('fused LoRA forward and backward (against float64)', () => {
  // Every case with the tiled rank-r kernels (GPUs), the barrier-free ones (CPU adapters) and the panels
  // (one dispatch per product, the reduction split within the workgroup).
  for (const [software, panel] of [[false, false], [true, false], [false, true]] as const)
  for (const [kind, M, out, inF, r, p, rpb] of CASES) {
    it(`${kind} base M=${M} out=${out} in=${inF} r=${r} dropout=${p}${rpb ? ` row blocks of ${rpb}` : ''}${software ? ' (barrier-free)' : panel ? ' (panels)' : ' (tiled)'}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const S = setup(ctx, kind, M, out, inF, r, p, seed, rpb);
      const { P } = S;
      const U = poisoned(ctx, 'U', [M, r]);
      const Y = poisoned(ctx, 'Y', [M, out]);
      // One case passes its own split-K scratch (as the engine does, shared across layers).
      const scratch = r === 64 && kind === 'q4' ? ctx.tensor('scratch', [loraScratchElems(M, inF, out, r)]) : undefined;
      await loraForward(ctx, S.base, S.ad, S.X, U, Y, M, { seed, software, panel, ...(scratch ? { scratch } : {}) });
      const ref = refForward(P);
      expectClose(await ctx.read(U), ref.u, 1e-4, `U, seed ${seed}`);
      expectClose(await ctx.read(Y), ref.y, 1e-4, `Y, seed ${seed}`);

      const rand = rng(seed ^ 0x5bd1e995);
      const dy = randn(M * out, rand);
      const dA0 = randn(r * inF, rand, 0.01);
      const dB0 = randn(out * r, rand, 0.01);
      const dY = ctx.upload('dY', [M, out], dy);
      const dA = ctx.upload('dA', [r, inF], dA0);
      const dB = ctx.upload('dB', [out, r], dB0);
      const dX = poisoned(ctx, 'dX', [M, inF]);
      const G = poisoned(ctx, 'G', [M, r]);
      await loraBackward(ctx, S.base, S.ad, S.X, U, dY, dX, { dA, dB }, G, M, { seed, software, panel, ...(scratch ? { scratch } : {}) });
      const rb = refBackward(P, dy, dA0, dB0);
      expectClose(await ctx.read(dX), rb.dx, 1e-4, `dX, seed ${seed}`);
      expectClose(await ctx.read(dA), rb.dA, 1e-4, `dA, seed ${seed}`);
      expectClose(await ctx.read(dB), rb.dB, 1e-4, `dB, seed ${seed}`);
      for (const t of [U, Y, dY, dA, dB, dX, G, ...(scratch ? [scratch] : [])]) ctx.release(t);
      S.release();
    });
  }

  it('setSeed changes the dropout mask of a prepared forward, reproducibly', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const S = setup(ctx, 'q4', 19, 40, 64, 8, 0.5, seed);
    const U = poisoned(ctx, 'U', [19, 8]);
    const Y = poisoned(ctx, 'Y', [19, 40]);
    const pass = await prepareLoraForward(ctx, S.base, S.ad, S.X, U, Y, 19, { seed });
    await ctx.run(pass.dispatches);
    const u1 = await ctx.read(U);
    pass.setSeed(seed + 1);
    await ctx.run(pass.dispatches);
    const u2 = await ctx.read(U);
    expectClose(u2, refForward({ ...S.P, seed: seed + 1 }).u, 1e-4, `U with seed+1, seed ${seed}`);
    expect(Array.from(u1).some((v, i) => v !== u2[i])).toBe(true);
    pass.setSeed(seed);
    await ctx.run(pass.dispatches);
    expect(Array.from(await ctx.read(U))).toEqual(Array.from(u1));
    for (const t of [U, Y]) ctx.release(t);
    S.release();
  });
});

describe('rank-r products one at a time (prepareLoraProduct)', () => {
  // G (+)= dY·B, the engine's sum over the outputs that share one A (a packed q/k/v), split-K and panels;
  // a reduction long enough for several steps per panel group and ragged against the 16 × 64 panel.
  for (const panel of [false, true])
    it(`GB with accumulate adds onto G (${panel ? 'panels' : 'split-K'})`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r0 = rng(seed);
      const [M, out, r] = [37, 300, 72];
      const dy = randn(M * out, r0);
      const b = randn(out * r, r0, 0.1);
      const g0 = randn(M * r, r0);
      const dY = ctx.upload('dY', [M, out], dy);
      const B = ctx.upload('B', [out, r], b);
      const G = ctx.upload('G', [M, r], g0);
      const pass = await prepareLoraProduct(ctx, 'GB', { a: dY, b: B, c: G }, { M, inF: 64, rank: r, scale: 0.5, dropout: 0, out, accumulate: true, panel, software: false });
      expect(pass.dispatches.some((d) => d.label.includes('panels'))).toBe(panel);
      await ctx.run(pass.dispatches);
      const ref = new Float64Array(M * r);
      for (let m = 0; m < M; m++)
        for (let j = 0; j < r; j++) {
          let t = g0[m * r + j]!;
          for (let n = 0; n < out; n++) t += dy[m * out + n]! * b[n * r + j]!;
          ref[m * r + j] = t;
        }
      expectClose(await ctx.read(G), ref, 1e-4, `seed ${seed}`);
      for (const t of [dY, B, G]) ctx.release(t);
    });
});

describe('LoRA forward with a 4-bit base: the adapter term as a separate pass', () => {
  it('matches the float64 reference as the fused epilogue does (ragged shape, dropout, row blocks)', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const [M, out, inF, r, p] = [70, 100, 128, 24, 0.2];
    const S = setup(ctx, 'q4', M, out, inF, r, p, seed, 36);
    const ref = refForward(S.P);
    for (const fuseForwardEpilogue of [false, true]) {
      const U = poisoned(ctx, 'U', [M, r]);
      const Y = poisoned(ctx, 'Y', [M, out]);
      const pass = await prepareLoraForward(ctx, S.base, S.ad, S.X, U, Y, M, { seed, fuseForwardEpilogue });
      expect(pass.dispatches.some((d) => d.label.startsWith('matmul'))).toBe(!fuseForwardEpilogue);
      await ctx.run(pass.dispatches);
      expectClose(await ctx.read(U), ref.u, 1e-4, `U, seed ${seed}`);
      expectClose(await ctx.read(Y), ref.y, 1e-4, `Y (${fuseForwardEpilogue ? 'fused' : 'separate'}), seed ${seed}`);
      for (const t of [U, Y]) ctx.release(t);
    }
    S.release();
  });
});

describe('LoRA backward with lora_dropout: the mask inside the q4 dX kernel', () => {
  for (const fuseMaskedDx of [true, false])
    it(`setSeed moves the backward's mask with the forward's (${fuseMaskedDx ? 'fused into the q4 dX kernel' : 'the separate DX pass'})`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const [M, out, inF, r, p] = [45, 72, 128, 16, 0.3];
      const S = setup(ctx, 'q4', M, out, inF, r, p, seed);
      const U = poisoned(ctx, 'U', [M, r]);
      const Y = poisoned(ctx, 'Y', [M, out]);
      await loraForward(ctx, S.base, S.ad, S.X, U, Y, M, { seed: seed + 1 });
      const rand = rng(seed ^ 0x27d4eb2f);
      const dy = randn(M * out, rand);
      const zeros = (n: number) => new Float32Array(n);
      const dY = ctx.upload('dY', [M, out], dy);
      const dA = ctx.upload('dA', [r, inF], zeros(r * inF));
      const dB = ctx.upload('dB', [out, r], zeros(out * r));
      const dX = poisoned(ctx, 'dX', [M, inF]);
      const G = poisoned(ctx, 'G', [M, r]);
      // Prepared with the old seed, then moved to the forward's (as the engine does at every step).
      const pass = await prepareLoraBackward(ctx, S.base, S.ad, S.X, U, dY, dX, { dA, dB }, G, M, { seed, fuseMaskedDx });
      expect(pass.dispatches.some((d) => d.label.includes('+lora dropout'))).toBe(fuseMaskedDx);
      pass.setSeed(seed + 1);
      await ctx.run(pass.dispatches);
      const rb = refBackward({ ...S.P, seed: seed + 1 }, dy, zeros(r * inF), zeros(out * r));
      expectClose(await ctx.read(dX), rb.dx, 1e-4, `dX, seed ${seed}`);
      expectClose(await ctx.read(dA), rb.dA, 1e-4, `dA, seed ${seed}`);
      for (const t of [U, Y, dY, dA, dB, dX, G]) ctx.release(t);
      S.release();
    });
});

describe('LoRA backward by finite differences (float64 central differences of the CPU forward)', () => {
  for (const kind of ['f32', 'q4'] as const) {
    it(`${kind} base, dropout 0.25, loss = sum(Y ⊙ R)`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const [M, out, inF, r] = [3, 5, 64, 4];
      const S = setup(ctx, kind, M, out, inF, r, 0.25, seed);
      const { P } = S;
      const weights = randn(M * out, rng(seed + 99));
      const loss = (x: ArrayLike<number>, a: ArrayLike<number>, b: ArrayLike<number>) => {
        const { y } = refForward(P, x, P.w, a, b);
        let l = 0;
        for (let i = 0; i < y.length; i++) l += y[i]! * weights[i]!;
        return l;
      };
      const numeric = (v: Float32Array, f: (t: Float64Array) => number) => {
        const t = Float64Array.from(v);
        const g = new Float64Array(v.length);
        const h = 1e-3;
        for (let i = 0; i < v.length; i++) {
          const o = t[i]!;
          t[i] = o + h;
          const lp = f(t);
          t[i] = o - h;
          const lm = f(t);
          t[i] = o;
          g[i] = (lp - lm) / (2 * h);
        }
        return g;
      };
      const U = poisoned(ctx, 'U', [M, r]);
      const Y = poisoned(ctx, 'Y', [M, out]);
      await loraForward(ctx, S.base, S.ad, S.X, U, Y, M, { seed });
      const dY = ctx.upload('dY', [M, out], weights);
      const dA = ctx.tensor('dA', [r, inF]);
      const dB = ctx.tensor('dB', [out, r]);
      ctx.fill32(dA, 0);
      ctx.fill32(dB, 0);
      const dX = poisoned(ctx, 'dX', [M, inF]);
      const G = poisoned(ctx, 'G', [M, r]);
      await loraBackward(ctx, S.base, S.ad, S.X, U, dY, dX, { dA, dB }, G, M, { seed });
      expectClose(await ctx.read(dX), numeric(P.x, (t) => loss(t, P.a, P.b)), 1e-4, `dX, seed ${seed}`);
      expectClose(await ctx.read(dA), numeric(P.a, (t) => loss(P.x, t, P.b)), 1e-4, `dA, seed ${seed}`);
      expectClose(await ctx.read(dB), numeric(P.b, (t) => loss(P.x, P.a, t)), 1e-4, `dB, seed ${seed}`);
      for (const t of [U, Y, dY, dA, dB, dX, G]) ctx.release(t);
      S.release();
    });
  }
});
