import type { GpuContext } from '../src/engine/gpu/context.ts';
import { matmulSplits, prepareMatmul, prepareMatmulSplitK, splitKPartialElems, type MatmulOptions } from '../src/engine/kernels/matmul.ts';
import { timeDispatches, type BenchRow } from './harness.ts';

/** InternLM2-1.8B: hidden 2048, q+k+v 4096, intermediate 8192, vocab 92544; 2048 tokens per step. */
const TOKENS = 2048;
const MODEL_SHAPES: [string, number, number, number][] = [
  ['tokens×2048 → 2048 (wo)', TOKENS, 2048, 2048],
  ['tokens×2048 → 1024 (k/v)', TOKENS, 1024, 2048],
  ['tokens×2048 → 8192 (w1/w3)', TOKENS, 8192, 2048],
  ['tokens×8192 → 2048 (w2)', TOKENS, 2048, 8192],
  ['tokens×2048 → 92544 (lm_head)', TOKENS, 92544, 2048],
];

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const run = async (name: string, M: number, N: number, K: number, transA: boolean, transB: boolean, accumulate = false, extra: Partial<MatmulOptions> = {}) => {
    const A = ctx.tensor('A', transA ? [K, M] : [M, K]);
    const B = ctx.tensor('B', transB ? [N, K] : [K, N]);
    const C = ctx.tensor('C', [M, N]);
    ctx.fill32(A, 0.01);
    ctx.fill32(B, 0.02);
    try {
      const d = await prepareMatmul(ctx, A, B, C, { M, N, K }, { transA, transB, accumulate, ...extra });
      const ms = await timeDispatches(ctx, [d], quick ? 2 : 5, quick ? 2 : 5);
      // With accumulate, C is read and written: the floor is those bytes (the operands are small).
      rows.push({ name, ms, flops: 2 * M * N * K, ...(accumulate ? { bytes: 8 * M * N } : {}), note: `${transA ? 'Aᵀ' : 'A'}·${transB ? 'Bᵀ' : 'B'}${accumulate ? ' (C +=)' : ''}` });
    } finally {
      for (const t of [A, B, C]) ctx.release(t);
      ctx.pool.trim();
    }
  };
  /** The loss's dhidden = dlogits · lm_head of one chunk in `splits` k slices (split-K, its sum pass included). */
  const runSplit = async (M: number, splits: number) => {
    const [N, K] = [2048, 92544];
    const A = ctx.tensor('A', [M, K]);
    const B = ctx.tensor('B', [K, N]);
    const C = ctx.tensor('C', [M, N]);
    const P = splits > 1 ? ctx.tensor('partials', [splitKPartialElems({ M, N, K }, splits)]) : null;
    ctx.fill32(A, 0.01);
    ctx.fill32(B, 0.02);
    try {
      const ds = await prepareMatmulSplitK(ctx, A, B, C, { M, N, K }, {}, { splits, partials: P });
      const ms = await timeDispatches(ctx, ds, 5, 5);
      const auto = matmulSplits({ M, N, K }, {}, ctx.features.software);
      rows.push({ name: `lm_head dX ${M} tokens (loss chunk) split-K ${splits}${splits === auto ? ' (default)' : ''}`, ms, flops: 2 * M * N * K, note: `${ds.length} dispatches` });
    } finally {
      for (const t of [A, B, C, ...(P ? [P] : [])]) ctx.release(t);
      ctx.pool.trim();
    }
  };
  if (process.env.MATMUL_SPLITK) {
    for (const M of [1024, 683]) for (const splits of [1, 2, 3, 4, 6, 8]) await runSplit(M, splits);
    return rows;
  }
  if (process.env.MATMUL_SWEEP) {
    // `MATMUL_SWEEP=1`: the tuning knobs of dY·W (A·B, the input gradient of a linear layer) at the 1.8B shapes.
    for (const [name, M, N, K] of [['dY·W tokens×8192 → 2048', TOKENS, 2048, 8192], ['dY·W tokens×2048 → 8192', TOKENS, 8192, 2048], ['dY·W tokens×4096 → 2048', TOKENS, 2048, 4096]] as const)
      for (const tileK of [8, 16, 32] as const)
        for (const prefetch of [true, false])
          for (const kcontig of prefetch ? [false, true] : [false])
            await run(`${name} tileK ${tileK}${prefetch ? ' prefetch' : ''}${kcontig ? ' kcontig' : ''}`, M, N, K, false, false, false, { tileK, prefetch, kcontig });
    return rows;
  }
  const squares = quick ? [256] : [1024, 2048, 4096];
  for (const n of squares) await run(`${n}³`, n, n, n, false, false);
  if (quick) return rows;
  for (const [name, M, N, K] of MODEL_SHAPES) {
    await run(`${name} fwd X·Wᵀ`, M, N, K, false, true);
    await run(`${name} dX = dY·W`, M, K, N, false, false);
  }
  await run('dW 2048×2048 = dYᵀ·X (tokens 2048)', 2048, 2048, TOKENS, true, false);
  // The loss's d(hidden) = dlogits·W_lm per chunk of ~1087 tokens: a 92544-long reduction onto few output tiles.
  for (const M of [1087, 961]) for (const tile of ['wide', 'narrow'] as const) await run(`lm_head dX ${M} tokens (loss chunk) ${tile}`, M, 2048, 92544, false, false, false, { tile });
  // The same in k slices (the loss's default where the chunk's output tiles are too few: MATMUL_SPLITK=1 sweeps).
  for (const splits of [1, 4]) await runSplit(1024, splits);
  // The LoRA epilogue Y += s·U·Bᵀ of the int8 forward (rank 64): C's read-modify-write is the cost.
  await run('LoRA epilogue tokens×64 → 8192 (Y +=)', TOKENS, 8192, 64, false, true, true);
  await run('LoRA epilogue tokens×64 → 2048 (Y +=)', TOKENS, 2048, 64, false, true, true);
  for (const [vn, o] of [['narrow', { tile: 'narrow' }], ['narrow, no kc', { tile: 'narrow', kcontig: false }], ['wide, no kc', { tile: 'wide', kcontig: false }], ['narrow tk8 kc', { tile: 'narrow', tileK: 8 }]] as const)
    await run(`LoRA epilogue tokens×64 → 8192 (Y +=) ${vn}`, TOKENS, 8192, 64, false, true, true, o as Partial<MatmulOptions>);
  return rows;
}
