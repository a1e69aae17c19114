/**
 * Kernel experiments (llm.c's dev/ idea): variants of the f32 matmul (register-staged loads, TILE_K) and of
 * the attention forward (row-team vs register-blocked, staging depths) at the InternLM2-1.8B shapes, timed
 * side by side in one run. `node bench/build.mjs bench/kernel-variants.bench.ts` then
 * `node dist-bench/kernel-variants.bench.mjs` on the GPU.
 */
import type { GpuContext } from '../src/engine/gpu/context.ts';
import { createNodeGpuContext } from '../src/node/gpu.ts';
import { MATMUL_SHADER, prepareMatmul, type MatmulOptions } from '../src/engine/kernels/matmul.ts';
import type { KernelDispatch } from '../src/engine/gpu/context.ts';
import type { Tensor } from '../src/engine/gpu/tensor.ts';

/** The 128×128 matmul with explicit defines (structural variants not exposed by prepareMatmul). */
async function customMatmul(ctx: GpuContext, A: Tensor, B: Tensor, C: Tensor, M: number, N: number, K: number, defines: Record<string, boolean>, tileK: number): Promise<KernelDispatch> {
  const pipeline = await ctx.pipeline({ shader: MATMUL_SHADER, entryPoint: 'matmul', defines: { WIDE: true, VEC4_A: true, VEC4_B: true, ...defines }, constants: { TILE_K: tileK } });
  const u = ctx.uniforms('mm params', [['u32', M], ['u32', N], ['u32', K], ['f32', 1], ['u32', 0], ['u32', 0], ['u32', M * N], ['u32', 0]]);
  return { label: 'mm custom', pipeline, bindGroup: ctx.bindGroup('mm custom', pipeline, [u, A, B, C]), workgroups: [Math.ceil(N / 128), Math.ceil(M / 128), 1] };
}

async function transBVariants(ctx: GpuContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const [name, M, N, K] of [['X·Wᵀ 2048×2048→8192', 2048, 8192, 2048], ['X·Wᵀ 2048×8192→2048', 2048, 2048, 8192], ['X·Wᵀ 2048×2048→2048', 2048, 2048, 2048]] as const) {
    const A = ctx.tensor('A', [M, K]);
    const B = ctx.tensor('B', [N, K]);
    const C = ctx.tensor('C', [M, N]);
    ctx.fill32(A, 0.01);
    ctx.fill32(B, 0.02);
    const variants: [string, Record<string, boolean>, number][] = [['base tk16', {}, 16]];
    for (const tk of [8, 16, 32])
      for (const [vn, d] of [['', {}]] as const)
        variants.push([`pref tk${tk}${vn}`, { PREFETCH: true, ...d }, tk]);
    for (const [vn, defines, tk] of variants) {
      try {
        const d = await customMatmul(ctx, A, B, C, M, N, K, { TRANS_B: true, ...defines }, tk);
        rows.push({ name: `${name} ${vn}`, ms: await timeDispatches(ctx, [d], 5, 5), flops: 2 * M * N * K });
      } catch (e) {
        rows.push({ name: `${name} ${vn}`, ms: NaN, note: String(e).slice(0, 80) });
      }
    }
    for (const t of [A, B, C]) ctx.release(t);
    ctx.pool.trim();
  }
  return rows;
}
import { prepareAttentionBackward, prepareAttentionForward, type AttentionOptions, type AttentionShape } from '../src/engine/kernels/attention.ts';
import { formatTable, timeDispatches, type BenchRow } from './harness.ts';

async function matmulVariants(ctx: GpuContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const shapes: [string, number, number, number, boolean, boolean][] = [
    ['4096³ A·B', 4096, 4096, 4096, false, false],
    ['X·Wᵀ 2048×2048→8192', 2048, 8192, 2048, false, true],
    ['X·Wᵀ 2048×8192→2048', 2048, 2048, 8192, false, true],
    ['dX 2048×8192·8192×2048', 2048, 2048, 8192, false, false],
    ['dW Aᵀ·B 8192×2048 (K 2048)', 8192, 2048, 2048, true, false],
  ];
  const variants: [string, MatmulOptions][] = [
    ['base tk16', { prefetch: false, tileK: 16 }],
    ['pref tk8', { prefetch: true, tileK: 8 }],
    ['pref tk16', { prefetch: true, tileK: 16 }],
    ['pref tk8 kc', { prefetch: true, tileK: 8, kcontig: true }],
    ['pref tk16 kc', { prefetch: true, tileK: 16, kcontig: true }],
    ['pref tk32 kc', { prefetch: true, tileK: 32, kcontig: true }],
  ];
  for (const [name, M, N, K, transA, transB] of shapes) {
    const A = ctx.tensor('A', transA ? [K, M] : [M, K]);
    const B = ctx.tensor('B', transB ? [N, K] : [K, N]);
    const C = ctx.tensor('C', [M, N]);
    ctx.fill32(A, 0.01);
    ctx.fill32(B, 0.02);
    for (const [vn, opts] of variants) {
      try {
        const d = await prepareMatmul(ctx, A, B, C, { M, N, K }, { transA, transB, ...opts });
        rows.push({ name: `${name} ${vn}`, ms: await timeDispatches(ctx, [d], 5, 5), flops: 2 * M * N * K });
      } catch (e) {
        rows.push({ name: `${name} ${vn}`, ms: NaN, note: String(e).slice(0, 80) });
      }
    }
    for (const t of [A, B, C]) ctx.release(t);
    ctx.pool.trim();
  }
  return rows;
}

async function attentionVariants(ctx: GpuContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const N_Q = 16, N_KV = 8, D = 128;
  for (const [batch, seq] of [[1, 2048], [1, 512], [4, 2048]] as const) {
    const tokens = batch * seq;
    const s: AttentionShape = { batch, seq, nQHeads: N_Q, nKvHeads: N_KV, headDim: D };
    const t = (label: string, shape: number[], value = 0.01) => {
      const x = ctx.tensor(label, shape);
      ctx.fill32(x, value);
      return x;
    };
    const q = t('q', [tokens, N_Q, D], 0.02), k = t('k', [tokens, N_KV, D], 0.03), v = t('v', [tokens, N_KV, D]);
    const o = t('o', [tokens, N_Q, D]), lse = t('lse', [N_Q, tokens]);
    const flops = (4 * seq * seq * D * N_Q * batch) / 2;
    const variants: [string, AttentionOptions][] = [['rows', {}]];
    for (const [vn, opts] of variants) {
      const d = await prepareAttentionForward(ctx, { q, k, v, o, lse }, s, opts);
      rows.push({ name: `fwd b${batch} seq${seq} ${vn}`, ms: await timeDispatches(ctx, [d], 5, 5), flops });
    }
    if (batch === 1 && seq === 2048) {
      const dout = t('dout', [tokens, N_Q, D]), delta = t('delta', [N_Q, tokens]);
      const dq = t('dq', [tokens, N_Q, D]), dk = t('dk', [tokens, N_KV, D]), dv = t('dv', [tokens, N_KV, D]);
      const bwd = await prepareAttentionBackward(ctx, { q, k, v, o, lse, dout, delta, dq, dk, dv }, s);
      rows.push({ name: `bwd dq b1 seq2048`, ms: await timeDispatches(ctx, [bwd[1]!], 5, 5), flops: 1.5 * flops });
      rows.push({ name: `bwd dkv b1 seq2048`, ms: await timeDispatches(ctx, [bwd[2]!], 5, 5), flops: 2 * flops });
      for (const tiles of [{ BLOCK_Q: 64, BLOCK_K: 32 }, { BLOCK_Q: 16, BLOCK_K: 64 }, { BLOCK_Q: 32, BLOCK_K: 32 }, { BLOCK_Q: 16, BLOCK_K: 32 }]) {
        try {
          const b = await prepareAttentionBackward(ctx, { q, k, v, o, lse, dout, delta, dq, dk, dv }, s, { tiles });
          rows.push({ name: `bwd dkv b1 seq2048 ${JSON.stringify(tiles)}`, ms: await timeDispatches(ctx, [b[2]!], 5, 5), flops: 2 * flops });
          rows.push({ name: `bwd dq b1 seq2048 ${JSON.stringify(tiles)}`, ms: await timeDispatches(ctx, [b[1]!], 5, 5), flops: 1.5 * flops });
        } catch (e) {
          rows.push({ name: `bwd b1 seq2048 ${JSON.stringify(tiles)}`, ms: NaN, note: String(e).slice(0, 100) });
        }
      }
    }
    ctx.pool.trim();
  }
  return rows;
}

async function main(): Promise<void> {
  const ctx = await createNodeGpuContext();
  const which = process.argv.slice(2);
  const { adapter, features } = ctx.summary();
  console.log(`adapter: ${adapter.vendor} ${adapter.architecture} ${adapter.device} | subgroups ${features.subgroups} (${ctx.features.subgroupMinSize})`);
  if (!which.length || which.includes('matmul')) console.log(`\n## matmul variants\n${formatTable(await matmulVariants(ctx))}`);
  if (which.includes('transb')) console.log(`\n## X·Wᵀ variants\n${formatTable(await transBVariants(ctx))}`);
  if (!which.length || which.includes('attention')) console.log(`\n## attention variants\n${formatTable(await attentionVariants(ctx))}`);
  ctx.destroy();
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
