import { describe, expect, it } from 'vitest';
import { matmul, matmulSplits, matmulVariant, matmulWorkgroupBytes, prepareMatmul, prepareMatmulSplitK, splitKPartialElems } from '../../src/engine/kernels/matmul.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** float64 reference of alpha·op(A)·op(B) (+ C0). */
function reference(a: Float32Array, b: Float32Array, M: number, N: number, K: number, transA: boolean, transB: boolean, alpha = 1, c0?: Float32Array): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[transA ? k * M + m : m * K + k]! * b[transB ? n * K + k : k * N + n]!;
      c[m * N + n] = alpha * s + (c0 ? c0[m * N + n]! : 0);
    }
  return c;
}

// Shapes include ragged ones: not multiples of the 64×64×16 tile, degenerate rows/columns, K < tile.
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [37, 53, 29],
  [130, 67, 250],
  [36, 44, 52], // every operand 16-byte loadable, still ragged against both tiles
  [260, 132, 20],
];

describe('matmul (tiled f32)', () => {
  for (const transA of [false, true])
    for (const transB of [false, true])
      for (const [M, N, K] of SHAPES)
        for (const tile of ['small', 'narrow', 'wide'] as const) {
        it(`${transA ? 'Aᵀ' : 'A'}·${transB ? 'Bᵀ' : 'B'} M=${M} N=${N} K=${K} ${tile} tile`, async () => {
          const ctx = await gpu();
          const seed = freshSeed();
          const r = rng(seed);
          const a = randn(M * K, r);
          const b = randn(K * N, r);
          const A = ctx.upload('A', transA ? [K, M] : [M, K], a);
          const B = ctx.upload('B', transB ? [N, K] : [K, N], b);
          const C = poisoned(ctx, 'C', [M, N]);
          await matmul(ctx, A, B, C, { M, N, K }, { transA, transB, tile });
          expectClose(await ctx.read(C), reference(a, b, M, N, K, transA, transB), 1e-5, `seed ${seed}`);
          for (const t of [A, B, C]) ctx.release(t);
        });
      }

  // Register-staged loads and the k-contiguous tile layouts (both operands 16-byte loadable, ragged edges).
  for (const transB of [false, true])
    for (const [M, N, K] of [[36, 44, 52], [260, 132, 20], [130, 68, 252]] as const)
      for (const [tile, tileK, kcontig, doubleBuffer] of [['wide', 8, false, false], ['wide', 8, true, false], ['narrow', 16, true, false], ['narrow', 32, true, false], ['wide', 32, true, false], ['wide', 8, false, true], ['wide', 16, true, true], ['narrow', 32, true, true]] as const)
        it(`A·${transB ? 'Bᵀ' : 'B'} M=${M} N=${N} K=${K} ${tile} prefetch tk${tileK}${kcontig ? ' k-contiguous tiles' : ''}${doubleBuffer ? ' double-buffered' : ''}`, async () => {
          const ctx = await gpu();
          const seed = freshSeed();
          const r = rng(seed);
          const a = randn(M * K, r);
          const b = randn(K * N, r);
          const A = ctx.upload('A', [M, K], a);
          const B = ctx.upload('B', transB ? [N, K] : [K, N], b);
          const C = poisoned(ctx, 'C', [M, N]);
          await matmul(ctx, A, B, C, { M, N, K }, { transB, tile, tileK, prefetch: true, kcontig, doubleBuffer, accumulate: false });
          expectClose(await ctx.read(C), reference(a, b, M, N, K, false, transB), 1e-5, `seed ${seed}`);
          for (const t of [A, B, C]) ctx.release(t);
        });

  // Split-K: slices of whole k-tiles into poisoned partials, summed in order (with alpha and +=); ragged
  // shapes, a K whose rounding to whole tiles leaves fewer slices than asked, every operand layout.
  for (const [M, N, K, splits, tile, transA, transB, accumulate, doubleBuffer] of [
    [37, 52, 1000, 3, 'wide', false, false, false, false],
    [37, 52, 1000, 3, 'wide', false, false, true, true],
    [130, 68, 700, 4, 'narrow', false, true, true, false],
    [36, 44, 52, 2, 'wide', true, false, false, false],
    [20, 30, 40, 4, 'narrow', true, true, true, false],
    [64, 36, 333, 5, 'wide', false, true, false, false],
  ] as const)
    it(`split-K ${splits}: ${transA ? 'Aᵀ' : 'A'}·${transB ? 'Bᵀ' : 'B'} M=${M} N=${N} K=${K} ${tile} tile${accumulate ? ', alpha, +=' : ''}${doubleBuffer ? ', double-buffered' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const a = randn(M * K, r);
      const b = randn(K * N, r);
      const c0 = randn(M * N, r);
      const A = ctx.upload('A', transA ? [K, M] : [M, K], a);
      const B = ctx.upload('B', transB ? [N, K] : [K, N], b);
      const C = accumulate ? ctx.upload('C', [M, N], c0) : poisoned(ctx, 'C', [M, N]);
      const partials = poisoned(ctx, 'partials', [splitKPartialElems({ M, N, K }, splits)]);
      const alpha = accumulate ? -0.75 : 1;
      const dispatches = await prepareMatmulSplitK(ctx, A, B, C, { M, N, K }, { transA, transB, tile, accumulate, alpha, ...(doubleBuffer ? { doubleBuffer, prefetch: true } : {}) }, { splits, partials });
      expect(dispatches).toHaveLength(2);
      await ctx.run(dispatches);
      expectClose(await ctx.read(C), reference(a, b, M, N, K, transA, transB, alpha, accumulate ? c0 : undefined), 1e-5, `seed ${seed}`);
      for (const t of [A, B, C, partials]) ctx.release(t);
    });

  it('double buffering is dropped where the tiles would not fit workgroup memory (wide, 32 deep)', async () => {
    const ctx = await gpu();
    const shape = { M: 130, N: 68, K: 100 };
    const v = matmulVariant(shape, { transB: true, tile: 'wide', tileK: 32, doubleBuffer: true }, { sa: 0, sb: 0 });
    expect(v.dbuf).toBe(true);
    expect(matmulWorkgroupBytes(v)).toBe(4 * 128 * 32 * 4); // four 128×32 f32 tiles: 64 KiB
    expect(matmulWorkgroupBytes(matmulVariant(shape, { transB: true, tile: 'wide', tileK: 16, doubleBuffer: true }, { sa: 0, sb: 0 }))).toBe(32768);
    const seed = freshSeed();
    const r = rng(seed);
    const a = randn(shape.M * shape.K, r);
    const b = randn(shape.N * shape.K, r);
    const A = ctx.upload('A', [shape.M, shape.K], a);
    const B = ctx.upload('B', [shape.N, shape.K], b);
    const C = poisoned(ctx, 'C', [shape.M, shape.N]);
    const d = await prepareMatmul(ctx, A, B, C, shape, { transB: true, tile: 'wide', tileK: 32, doubleBuffer: true });
    await ctx.run([d]);
    expectClose(await ctx.read(C), reference(a, b, shape.M, shape.N, shape.K, false, true), 1e-5, `seed ${seed}`);
    for (const t of [A, B, C]) ctx.release(t);
  });

  it('split-K is chosen only where the output tiles are too few for a long reduction', () => {
    // The loss's dhidden = dlogits · lm_head: 1024 tokens × 92544 → 2048, 128 wide tiles.
    expect(matmulSplits({ M: 1024, N: 2048, K: 92544 }, {})).toBe(4);
    expect(matmulSplits({ M: 1024, N: 2048, K: 92544 }, {}, true)).toBe(1); // CPU adapters: the untiled kernel
    expect(matmulSplits({ M: 4096, N: 8192, K: 2048 }, { transB: true })).toBe(1); // 2048 tiles
    expect(matmulSplits({ M: 256, N: 256, K: 3000 }, {})).toBe(1); // too short for two slices of 2048
    expect(matmulSplits({ M: 1024, N: 2048, K: 92544 }, { batch: 2 })).toBe(1);
  });

  // Aᵀ·B (dW), as chosen and with double-buffered tiles (the split-K list above has a double-buffered A·B).
  for (const [M, N, K, doubleBuffer] of [[33, 70, 45, false], [68, 132, 260, true]] as const)
  it(`accumulates with alpha into C (gradient accumulation)${doubleBuffer ? `, double-buffered, M=${M} N=${N} K=${K}` : ''}`, async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const a = randn(K * M, r);
    const b = randn(K * N, r);
    const c0 = randn(M * N, r);
    const A = ctx.upload('A', [K, M], a);
    const B = ctx.upload('B', [K, N], b);
    const C = ctx.upload('C', [M, N], c0);
    await matmul(ctx, A, B, C, { M, N, K }, { transA: true, accumulate: true, alpha: 0.5, ...(doubleBuffer ? { tile: 'wide', prefetch: true, doubleBuffer } : {}) });
    expectClose(await ctx.read(C), reference(a, b, M, N, K, true, false, 0.5, c0), 1e-5, `seed ${seed}`);
  });

  it('runs a batch with per-matrix strides and a broadcast operand', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [M, N, K, batch] = [19, 23, 41, 3];
    const a = randn(batch * M * K, r);
    const b = randn(N * K, r); // one B shared by the batch
    const A = ctx.upload('A', [batch, M, K], a);
    const B = ctx.upload('B', [N, K], b);
    const C = poisoned(ctx, 'C', [batch, M, N]);
    await matmul(ctx, A, B, C, { M, N, K }, { transB: true, batch, batchStrideB: 0 });
    const out = await ctx.read(C);
    for (let i = 0; i < batch; i++) {
      const ref = reference(a.subarray(i * M * K, (i + 1) * M * K), b, M, N, K, false, true);
      expectClose(out.subarray(i * M * N, (i + 1) * M * N), ref, 1e-5, `batch ${i}, seed ${seed}`);
    }
  });

  it('rejects operands too small for the shape, naming the tensor', async () => {
    const ctx = await gpu();
    const A = ctx.tensor('activations', [4, 8]);
    const B = ctx.tensor('weight', [8, 8]);
    const C = ctx.tensor('out', [4, 8]);
    await expect(matmul(ctx, A, B, C, { M: 4, N: 8, K: 16 })).rejects.toThrow(/activations/);
  });
});
