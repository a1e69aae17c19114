import { describe, expect, it } from 'vitest';
import { add, addInPlace, biasAdd, biasBackward, copy, scaleInPlace } from '../../src/engine/kernels/elementwise.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

// Lengths: tiny, ragged (vec4 bulk + scalar tail, tail only), and several workgroups with a tail.
const LENGTHS = [1, 3, 7, 33, 130, 4096 + 3, 20000];
const ROWS = [1, 7, 33];
const DIMS = [64, 72, 130];

/** float64 reference: column sums of dy [rows, dim] added to dbias0. */
function biasGradRef(dy: Float32Array, rows: number, dim: number, dbias0: Float32Array): Float64Array {
  const out = Float64Array.from(dbias0);
  for (let t = 0; t < rows; t++) for (let c = 0; c < dim; c++) out[c] = out[c]! + dy[t * dim + c]!;
  return out;
}

describe('elementwise', () => {
  for (const n of LENGTHS) {
    it(`add, add_inplace, scale_inplace, copy n=${n}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const a = randn(n, r);
      const b = randn(n, r);
      const A = ctx.upload('a', [n], a);
      const B = ctx.upload('b', [n], b);
      const O = poisoned(ctx, 'out', [n]);
      await add(ctx, A, B, O);
      expectClose(await ctx.read(O), Float64Array.from(a, (v, i) => v + b[i]!), 1e-6, `add, seed ${seed}`);

      const C = poisoned(ctx, 'copy', [n]);
      await copy(ctx, A, C);
      expect(Array.from(await ctx.read(C))).toEqual(Array.from(a));

      await addInPlace(ctx, A, B);
      expectClose(await ctx.read(A), Float64Array.from(a, (v, i) => v + b[i]!), 1e-6, `add_inplace, seed ${seed}`);

      await scaleInPlace(ctx, B, -0.37);
      expectClose(await ctx.read(B), Float64Array.from(b, (v) => v * -0.37), 1e-6, `scale_inplace, seed ${seed}`);
      for (const t of [A, B, O, C]) ctx.release(t);
    });
  }

  it('touches only the first n elements when n is given', async () => {
    const ctx = await gpu();
    const A = ctx.upload('a', [11], new Float32Array(11).fill(1));
    const B = ctx.upload('b', [11], new Float32Array(11).fill(2));
    await addInPlace(ctx, A, B, 6);
    expect(Array.from(await ctx.read(A))).toEqual([3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1]);
  });

  for (const rows of ROWS)
    for (const dim of DIMS) {
      it(`bias_add and bias_backward rows=${rows} dim=${dim}`, async () => {
        const ctx = await gpu();
        const seed = freshSeed();
        const r = rng(seed);
        const y = randn(rows * dim, r);
        const bias = randn(dim, r);
        const Y = ctx.upload('y', [rows, dim], y);
        const Bi = ctx.upload('bias', [dim], bias);
        await biasAdd(ctx, Y, Bi, { rows, dim });
        expectClose(await ctx.read(Y), Float64Array.from(y, (v, i) => v + bias[i % dim]!), 1e-6, `bias_add, seed ${seed}`);

        const dy = randn(rows * dim, r);
        const db0 = randn(dim, r);
        const DY = ctx.upload('dy', [rows, dim], dy);
        const DB = ctx.upload('dbias', [dim], db0);
        await biasBackward(ctx, DY, DB, { rows, dim });
        const got = await ctx.read(DB);
        expectClose(got, biasGradRef(dy, rows, dim, db0), 1e-5, `bias_backward (+=), seed ${seed}`);
        // Deterministic: the same inputs give the same bits.
        ctx.write(DB, db0);
        await biasBackward(ctx, DY, DB, { rows, dim });
        expect(Array.from(await ctx.read(DB))).toEqual(Array.from(got));
        for (const t of [Y, Bi, DY, DB]) ctx.release(t);
      });
    }

  it('bias_backward over many row chunks (rows=300, dim=36)', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [rows, dim] = [300, 36];
    const dy = randn(rows * dim, r);
    const DY = ctx.upload('dy', [rows, dim], dy);
    const DB = ctx.upload('dbias', [dim], new Float32Array(dim));
    await biasBackward(ctx, DY, DB, { rows, dim });
    expectClose(await ctx.read(DB), biasGradRef(dy, rows, dim, new Float32Array(dim)), 1e-5, `seed ${seed}`);
  });

  it('bias_backward matches finite differences of the bias_add forward (loss = Σ y·w)', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [rows, dim] = [5, 6];
    const x = randn(rows * dim, r);
    const bias = randn(dim, r);
    const w = randn(rows * dim, r); // dL/dy
    const loss = (bb: Float64Array) => {
      let s = 0;
      for (let t = 0; t < rows; t++) for (let c = 0; c < dim; c++) s += (x[t * dim + c]! + bb[c]!) * w[t * dim + c]!;
      return s;
    };
    const fd = new Float64Array(dim);
    const h = 1e-4;
    for (let c = 0; c < dim; c++) {
      const p = Float64Array.from(bias);
      const m = Float64Array.from(bias);
      p[c] = p[c]! + h;
      m[c] = m[c]! - h;
      fd[c] = (loss(p) - loss(m)) / (2 * h);
    }
    const DY = ctx.upload('dy', [rows, dim], w);
    const DB = ctx.upload('dbias', [dim], new Float32Array(dim));
    await biasBackward(ctx, DY, DB, { rows, dim });
    expectClose(await ctx.read(DB), fd, 1e-5, `seed ${seed}`);
  });

  it('rejects tensors too small for the shape, naming them', async () => {
    const ctx = await gpu();
    const Y = ctx.tensor('hidden', [4, 8]);
    const Bi = ctx.tensor('tiny bias', [4]);
    await expect(biasAdd(ctx, Y, Bi, { rows: 4, dim: 8 })).rejects.toThrow(/tiny bias/);
  });
});
