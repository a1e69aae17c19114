import { describe, expect, it } from 'vitest';
import { partialLayout, reduceAll, reduceRows, type ReduceOp } from '../../src/engine/kernels/reduce.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** float64 reference of op over x[begin, end). */
function refReduce(x: Float32Array, begin: number, end: number, op: ReduceOp): number {
  if (op === 'max') {
    let m = -Infinity;
    for (let i = begin; i < end; i++) m = Math.max(m, x[i]!);
    return m;
  }
  let s = 0;
  for (let i = begin; i < end; i++) s += op === 'sum' ? x[i]! : x[i]! * x[i]!;
  return op === 'norm2' ? Math.sqrt(s) : s;
}

const OPS: ReduceOp[] = ['sum', 'sumsq', 'max', 'norm2'];

describe('reduce_rows', () => {
  // Ragged column counts around the 256-thread workgroup, a single column, rows with a stride and offset.
  const SHAPES: { rows: number; cols: number; stride?: number; offset?: number }[] = [
    { rows: 3, cols: 1 },
    { rows: 7, cols: 255 },
    { rows: 5, cols: 257, stride: 300, offset: 11 },
    { rows: 2, cols: 1000 },
  ];
  for (const op of OPS)
    for (const s of SHAPES) {
      it(`${op} ${s.rows}×${s.cols}${s.stride ? ` stride ${s.stride} offset ${s.offset}` : ''}`, async () => {
        const ctx = await gpu();
        const seed = freshSeed();
        const stride = s.stride ?? s.cols;
        const offset = s.offset ?? 0;
        const n = offset + (s.rows - 1) * stride + s.cols;
        // Shifted so that sums are not near zero (a relative error of a cancelling sum says little).
        const x = randn(n, rng(seed)).map((v) => v + 0.5);
        const X = ctx.upload('x', [n], x);
        const out = poisoned(ctx, 'out', [s.rows + 2]);
        await reduceRows(ctx, X, out, { rows: s.rows, cols: s.cols, op, rowStride: stride, offset, outIndex: 2, scale: 0.5 });
        const got = await ctx.read(out);
        const ref = Array.from({ length: s.rows }, (_, r) => 0.5 * refReduce(x, offset + r * stride, offset + r * stride + s.cols, op));
        expectClose(got.subarray(2), ref, 1e-5, `seed ${seed}`);
        expect(Number.isNaN(got[0]!) && Number.isNaN(got[1]!), 'elements before outIndex untouched').toBe(true);
        ctx.release(X);
        ctx.release(out);
      });
    }
});

describe('reduce over a whole buffer (two passes)', () => {
  // 1 element; less than one workgroup; several partials with a ragged last one; many partials.
  const CASES: { length: number; offset: number }[] = [
    { length: 1, offset: 0 },
    { length: 777, offset: 5 },
    { length: 70001, offset: 3 },
    { length: 600_001, offset: 0 },
  ];
  for (const op of OPS)
    for (const c of CASES) {
      it(`${op} length ${c.length} offset ${c.offset} (${partialLayout(c.length).workgroups} partials)`, async () => {
        const ctx = await gpu();
        const seed = freshSeed();
        const x = randn(c.offset + c.length + 4, rng(seed)).map((v) => v + 0.25);
        const X = ctx.upload('x', [x.length], x);
        const out = poisoned(ctx, 'out', [3]);
        await reduceAll(ctx, X, out, { op, length: c.length, offset: c.offset, outIndex: 1, scale: 2 });
        const got = await ctx.read(out);
        expectClose([got[1]!], [2 * refReduce(x, c.offset, c.offset + c.length, op)], 1e-5, `seed ${seed}`);
        expect(Number.isNaN(got[0]!) && Number.isNaN(got[2]!)).toBe(true);
        ctx.release(X);
        ctx.release(out);
      });
    }

  it('is bit-identical run to run', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const x = randn(123_457, rng(seed), 100);
    const X = ctx.upload('x', [x.length], x);
    const out = poisoned(ctx, 'out', [1]);
    const results: number[] = [];
    for (let i = 0; i < 3; i++) {
      await reduceAll(ctx, X, out, { op: 'sum', length: x.length });
      results.push((await ctx.read(out))[0]!);
    }
    expect(new Set(results).size, `seed ${seed}: ${results.join(', ')}`).toBe(1);
  });

  it('gives 0 for an empty sum', async () => {
    const ctx = await gpu();
    const X = ctx.upload('x', [4], new Float32Array([1, 2, 3, 4]));
    const out = poisoned(ctx, 'out', [1]);
    await reduceAll(ctx, X, out, { op: 'sum', length: 0 });
    expect((await ctx.read(out))[0]).toBe(0);
  });

  it('rejects a range past the end of the input, naming it', async () => {
    const ctx = await gpu();
    const X = ctx.tensor('grads', [10]);
    const out = ctx.tensor('out', [1]);
    await expect(reduceAll(ctx, X, out, { op: 'sum', length: 8, offset: 3 })).rejects.toThrow(/grads/);
  });
});
