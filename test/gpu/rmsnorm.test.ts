import { describe, expect, it } from 'vitest';
import { rmsNormBackward, rmsNormDw, rmsNormForward } from '../../src/engine/kernels/rmsnorm.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

const EPS = 1e-6;

/** float64 forward: y = x·rstd·w, rstd per row. */
function forwardRef(x: ArrayLike<number>, w: ArrayLike<number>, rows: number, dim: number): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(rows * dim);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let c = 0; c < dim; c++) ss += x[r * dim + c]! ** 2;
    const rs = 1 / Math.sqrt(ss / dim + EPS);
    rstd[r] = rs;
    for (let c = 0; c < dim; c++) y[r * dim + c] = x[r * dim + c]! * rs * w[c]!;
  }
  return { y, rstd };
}

/** float64 backward: dx (written) and dw (added to dw0). */
function backwardRef(dy: Float32Array, x: Float32Array, w: Float32Array, rows: number, dim: number, dw0: Float32Array): { dx: Float64Array; dw: Float64Array } {
  const { rstd } = forwardRef(x, w, rows, dim);
  const dx = new Float64Array(rows * dim);
  const dw = Float64Array.from(dw0);
  for (let r = 0; r < rows; r++) {
    const rs = rstd[r]!;
    let dot = 0;
    for (let c = 0; c < dim; c++) dot += dy[r * dim + c]! * w[c]! * x[r * dim + c]!;
    for (let c = 0; c < dim; c++) {
      const i = r * dim + c;
      dx[i] = rs * w[c]! * dy[i]! - (x[i]! * rs ** 3 * dot) / dim;
      dw[c] = dw[c]! + dy[i]! * x[i]! * rs;
    }
  }
  return { dx, dw };
}

// [rows, dim]: ragged rows, vec4 dims (64: 8 threads/row, 72, 128 per-head rows, 2048 hidden: 256 threads/row)
// and a dim that is not a multiple of 4 (scalar path).
const SHAPES: [number, number][] = [
  [1, 64],
  [7, 72],
  [33, 130],
  [21, 128],
  [3, 2048],
];

describe('rmsnorm', () => {
  for (const [rows, dim] of SHAPES)
    for (const software of [false, true])
    it(`forward, backward, dw rows=${rows} dim=${dim}${software ? ' (one invocation per row, the CPU-adapter layout)' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const shape = { rows, dim, eps: EPS };
      const x = randn(rows * dim, r, 2);
      const w = randn(dim, r);
      const X = ctx.upload('x', [rows, dim], x);
      const W = ctx.upload('w', [dim], w);
      const Y = poisoned(ctx, 'y', [rows, dim]);
      const R = poisoned(ctx, 'rstd', [rows]);
      await rmsNormForward(ctx, X, W, Y, R, shape, { software });
      const ref = forwardRef(x, w, rows, dim);
      expectClose(await ctx.read(Y), ref.y, 1e-5, `y, seed ${seed}`);
      expectClose(await ctx.read(R), ref.rstd, 1e-5, `rstd, seed ${seed}`);

      const dy = randn(rows * dim, r);
      const dw0 = randn(dim, r);
      const DY = ctx.upload('dy', [rows, dim], dy);
      const DX = poisoned(ctx, 'dx', [rows, dim]);
      const DW = ctx.upload('dw', [dim], dw0);
      await rmsNormBackward(ctx, DY, X, W, R, DX, shape, { software });
      await rmsNormDw(ctx, DY, X, R, DW, shape);
      const bref = backwardRef(dy, x, w, rows, dim, dw0);
      expectClose(await ctx.read(DX), bref.dx, 1e-4, `dx, seed ${seed}`);
      const dwGot = await ctx.read(DW);
      expectClose(dwGot, bref.dw, 1e-5, `dw (+=), seed ${seed}`);
      ctx.write(DW, dw0);
      await rmsNormDw(ctx, DY, X, R, DW, shape);
      expect(Array.from(await ctx.read(DW)), 'dw is deterministic').toEqual(Array.from(dwGot));
      for (const t of [X, W, Y, R, DY, DX, DW]) ctx.release(t);
    });

  for (const [rows, dim] of [[5, 64], [9, 130], [2, 2048]] as [number, number][]) {
    for (const software of [false, true])
    it(`fused residual add: h += delta, y = rmsnorm(h) rows=${rows} dim=${dim}${software ? ' per row' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const h = randn(rows * dim, r);
      const delta = randn(rows * dim, r);
      const w = randn(dim, r);
      const H = ctx.upload('h', [rows, dim], h);
      const D = ctx.upload('delta', [rows, dim], delta);
      const W = ctx.upload('w', [dim], w);
      const Y = poisoned(ctx, 'y', [rows, dim]);
      const R = poisoned(ctx, 'rstd', [rows]);
      await rmsNormForward(ctx, H, W, Y, R, { rows, dim, eps: EPS }, { residualDelta: D, software });
      const hsum = Float64Array.from(h, (v, i) => v + delta[i]!);
      expectClose(await ctx.read(H), hsum, 1e-6, `h, seed ${seed}`);
      const ref = forwardRef(Float32Array.from(hsum), w, rows, dim);
      expectClose(await ctx.read(Y), ref.y, 1e-5, `y, seed ${seed}`);
      expectClose(await ctx.read(R), ref.rstd, 1e-5, `rstd, seed ${seed}`);
    });
  }

  for (const [rows, dim] of [[4, 64], [7, 130], [3, 2048]] as [number, number][]) {
    for (const software of [false, true])
    it(`fused residual add out of place: h_out = x + delta, y = rmsnorm(h_out) rows=${rows} dim=${dim}${software ? ' per row' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const x = randn(rows * dim, r);
      const delta = randn(rows * dim, r);
      const w = randn(dim, r);
      const X = ctx.upload('x', [rows, dim], x);
      const D = ctx.upload('delta', [rows, dim], delta);
      const W = ctx.upload('w', [dim], w);
      const HO = poisoned(ctx, 'h_out', [rows, dim]);
      const Y = poisoned(ctx, 'y', [rows, dim]);
      const R = poisoned(ctx, 'rstd', [rows]);
      await rmsNormForward(ctx, X, W, Y, R, { rows, dim, eps: EPS }, { residualDelta: D, residualOut: HO, software });
      const hsum = Float64Array.from(x, (v, i) => v + delta[i]!);
      expect(Array.from(await ctx.read(X)), 'x untouched').toEqual(Array.from(x));
      expectClose(await ctx.read(HO), hsum, 1e-6, `h_out, seed ${seed}`);
      const ref = forwardRef(Float32Array.from(hsum), w, rows, dim);
      expectClose(await ctx.read(Y), ref.y, 1e-5, `y, seed ${seed}`);
      expectClose(await ctx.read(R), ref.rstd, 1e-5, `rstd, seed ${seed}`);
    });
  }

  for (const [rows, dim] of [[3, 8], [2, 5]] as [number, number][]) {
    it(`backward matches finite differences of the float64 forward (loss = Σ y·g) rows=${rows} dim=${dim}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const x = randn(rows * dim, r);
      const w = randn(dim, r);
      const g = randn(rows * dim, r);
      const loss = (xx: ArrayLike<number>, ww: ArrayLike<number>) => forwardRef(xx, ww, rows, dim).y.reduce((s, v, i) => s + v * g[i]!, 0);
      const h = 1e-6;
      const central = (base: Float32Array, i: number, f: (v: Float64Array) => number) => {
        const p = Float64Array.from(base);
        const m = Float64Array.from(base);
        p[i] = p[i]! + h;
        m[i] = m[i]! - h;
        return (f(p) - f(m)) / (2 * h);
      };
      const fdx = Float64Array.from(x, (_, i) => central(x, i, (v) => loss(v, w)));
      const fdw = Float64Array.from(w, (_, i) => central(w, i, (v) => loss(x, v)));
      const X = ctx.upload('x', [rows, dim], x);
      const W = ctx.upload('w', [dim], w);
      const Y = poisoned(ctx, 'y', [rows, dim]);
      const R = poisoned(ctx, 'rstd', [rows]);
      const shape = { rows, dim, eps: EPS };
      await rmsNormForward(ctx, X, W, Y, R, shape);
      const G = ctx.upload('g', [rows, dim], g);
      const DX = poisoned(ctx, 'dx', [rows, dim]);
      const DW = ctx.upload('dw', [dim], new Float32Array(dim));
      await rmsNormBackward(ctx, G, X, W, R, DX, shape);
      await rmsNormDw(ctx, G, X, R, DW, shape);
      expectClose(await ctx.read(DX), fdx, 1e-4, `dx vs finite differences, seed ${seed}`);
      expectClose(await ctx.read(DW), fdw, 1e-4, `dw vs finite differences, seed ${seed}`);
    });
  }

  for (const [rows, dim] of [[6, 64], [5, 130]] as [number, number][]) {
    it(`backward with accumulate: dx += (residual stream gradient) rows=${rows} dim=${dim}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const shape = { rows, dim, eps: EPS };
      const x = randn(rows * dim, r);
      const w = randn(dim, r);
      const dy = randn(rows * dim, r);
      const dx0 = randn(rows * dim, r);
      const X = ctx.upload('x', [rows, dim], x);
      const W = ctx.upload('w', [dim], w);
      const Y = ctx.tensor('y', [rows, dim]);
      const R = poisoned(ctx, 'rstd', [rows]);
      await rmsNormForward(ctx, X, W, Y, R, shape);
      const DY = ctx.upload('dy', [rows, dim], dy);
      const DX = ctx.upload('dx', [rows, dim], dx0);
      await rmsNormBackward(ctx, DY, X, W, R, DX, shape, { accumulate: true });
      const ref = backwardRef(dy, x, w, rows, dim, new Float32Array(dim)).dx.map((v, i) => v + dx0[i]!);
      expectClose(await ctx.read(DX), ref, 1e-5, `dx +=, seed ${seed}`);
    });
  }

  it('dw over many row chunks (rows=300, dim=36)', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [rows, dim] = [300, 36];
    const x = randn(rows * dim, r);
    const w = randn(dim, r);
    const dy = randn(rows * dim, r);
    const shape = { rows, dim, eps: EPS };
    const X = ctx.upload('x', [rows, dim], x);
    const W = ctx.upload('w', [dim], w);
    const Y = ctx.tensor('y', [rows, dim]);
    const R = ctx.tensor('rstd', [rows]);
    await rmsNormForward(ctx, X, W, Y, R, shape);
    const DY = ctx.upload('dy', [rows, dim], dy);
    const DW = ctx.upload('dw', [dim], new Float32Array(dim));
    await rmsNormDw(ctx, DY, X, R, DW, shape);
    expectClose(await ctx.read(DW), backwardRef(dy, x, w, rows, dim, new Float32Array(dim)).dw, 1e-5, `seed ${seed}`);
  });

  it('rejects a too-small rstd buffer, naming it', async () => {
    const ctx = await gpu();
    const X = ctx.tensor('x', [4, 8]);
    const W = ctx.tensor('w', [8]);
    const Y = ctx.tensor('y', [4, 8]);
    const R = ctx.tensor('short rstd', [2]);
    await expect(rmsNormForward(ctx, X, W, Y, R, { rows: 4, dim: 8, eps: EPS })).rejects.toThrow(/short rstd/);
  });
});
