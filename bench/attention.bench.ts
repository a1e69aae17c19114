import type { GpuContext } from '../src/engine/gpu/context.ts';
import type { Tensor } from '../src/engine/gpu/tensor.ts';
import {
  chooseAttentionDkvTiles,
  chooseAttentionForwardTiles,
  prepareAttentionBackward,
  prepareAttentionDecode,
  prepareAttentionForward,
  type AttentionShape,
} from '../src/engine/kernels/attention.ts';
import { timeDispatches, type BenchRow } from './harness.ts';

/**
 * Flash attention at the InternLM2-1.8B shapes: 16 query heads, 8 kv heads, head_dim 128; seq 512 and 2048,
 * batch 1 and 4 (causal). FLOPs: forward 4·seq²·d·heads/2 per row (two matmuls over the causal half),
 * backward 2.5× that (five matmuls, the FlashAttention-2 count, recompute included). Decode: 4·len·d·heads
 * per token; bytes = the K and V cache rows read (once per query head: heads of a group re-read them).
 */
const N_Q = 16;
const N_KV = 8;
const D = 128;

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const cases: [number, number][] = quick ? [[1, 256]] : [
    [1, 512],
    [4, 512],
    [1, 2048],
    [4, 2048],
  ];
  const reps = quick ? 2 : 5;
  for (const [batch, seq] of cases) {
    const tokens = batch * seq;
    const s: AttentionShape = { batch, seq, nQHeads: N_Q, nKvHeads: N_KV, headDim: D };
    const made: Tensor[] = [];
    const t = (label: string, shape: number[], value = 0.01) => {
      const x = ctx.tensor(label, shape);
      ctx.fill32(x, value);
      made.push(x);
      return x;
    };
    const q = t('q', [tokens, N_Q, D], 0.02);
    const k = t('k', [tokens, N_KV, D], 0.03);
    const v = t('v', [tokens, N_KV, D]);
    const o = t('o', [tokens, N_Q, D]);
    const lse = t('lse', [N_Q, tokens]);
    const dout = t('dout', [tokens, N_Q, D]);
    const delta = t('delta', [N_Q, tokens]);
    const dq = t('dq', [tokens, N_Q, D]);
    const dk = t('dk', [tokens, N_KV, D]);
    const dv = t('dv', [tokens, N_KV, D]);
    try {
      const flops = (4 * seq * seq * D * N_Q * batch) / 2;
      const fwd = await prepareAttentionForward(ctx, { q, k, v, o, lse }, s);
      const tiles = JSON.stringify(chooseAttentionForwardTiles(ctx, D, false).tiles);
      rows.push({ name: `forward b${batch} seq${seq}`, ms: await timeDispatches(ctx, [fwd], reps, reps), flops, note: `tiles ${tiles}; extra memory lse ${(N_Q * tokens * 4) / 1024} KiB` });
      const bwd = await prepareAttentionBackward(ctx, { q, k, v, o, lse, dout, delta, dq, dk, dv }, s);
      rows.push({ name: `backward b${batch} seq${seq}`, ms: await timeDispatches(ctx, bwd, reps, reps), flops: 2.5 * flops, note: 'delta + dq + dkv' });
      for (const [i, part] of ['delta', 'dq', 'dkv'].entries()) {
        rows.push({ name: `  backward ${part} b${batch} seq${seq}`, ms: await timeDispatches(ctx, [bwd[i]!], reps, reps), ...(part === 'delta' ? { bytes: 2 * tokens * N_Q * D * 4 } : { flops: (part === 'dq' ? 1.5 : 2) * flops }) });
      }
      // ATTN_DKV_STAGING=16x8,32x16: dk/dv again with those staging depths (DC columns × KC queries).
      for (const variant of (process.env.ATTN_DKV_STAGING ?? '').split(',').filter(Boolean)) {
        const [DC, KC] = variant.split('x').map(Number) as [number, number];
        const dkv = (await prepareAttentionBackward(ctx, { q, k, v, o, lse, dout, delta, dq, dk, dv }, s, { dkvStaging: { DC, KC } }))[2]!;
        rows.push({ name: `  backward dkv b${batch} seq${seq} staging ${variant}`, ms: await timeDispatches(ctx, [dkv], reps, reps), flops: 2 * flops, note: `tiles ${JSON.stringify(chooseAttentionDkvTiles(ctx, D, false, { dkvStaging: { DC, KC } }))}` });
      }
      // ATTN_DQ=64x16x16,32x32x16: dq again with BLOCK_Q query rows and those staging depths (DC columns × KC keys).
      for (const variant of (process.env.ATTN_DQ ?? '').split(',').filter(Boolean)) {
        const [BLOCK_Q, DC, KC] = variant.split('x').map(Number) as [number, number, number];
        const opts = { tiles: { BLOCK_Q }, dqStaging: { DC, KC } };
        const dqOnly = (await prepareAttentionBackward(ctx, { q, k, v, o, lse, dout, delta, dq, dk, dv }, s, opts))[1]!;
        rows.push({ name: `  backward dq b${batch} seq${seq} ${variant}`, ms: await timeDispatches(ctx, [dqOnly], reps, reps), flops: 1.5 * flops, note: `tiles ${JSON.stringify(chooseAttentionForwardTiles(ctx, D, false, opts, 'dq').tiles)}` });
      }
    } finally {
      for (const x of made) ctx.release(x);
      ctx.pool.trim();
    }
  }

  // Decode: one token against a cache of 512 / 2048 rows (4096 max), split-K.
  const maxTokens = 4096;
  const kCache = ctx.tensor('k cache', [maxTokens, N_KV, D]);
  const vCache = ctx.tensor('v cache', [maxTokens, N_KV, D]);
  const qd = ctx.tensor('q decode', [1, N_Q, D]);
  const od = ctx.tensor('o decode', [1, N_Q, D]);
  for (const x of [kCache, vCache, qd]) ctx.fill32(x, 0.01);
  try {
    const dec = await prepareAttentionDecode(ctx, { q: qd, kCache, vCache, o: od }, { nQHeads: N_Q, nKvHeads: N_KV, headDim: D, maxTokens, maxNew: 1 });
    for (const len of quick ? [512] : [512, 2048, 4096]) {
      dec.setLength(len, 1);
      rows.push({
        name: `decode 1 token, cache ${len}`,
        ms: await timeDispatches(ctx, dec.dispatches, reps, reps),
        flops: 4 * len * D * N_Q,
        bytes: 2 * len * D * 4 * N_Q,
        note: `split ${dec.nSplit}`,
      });
    }
    dec.release();
  } finally {
    for (const x of [kCache, vCache, qd, od]) ctx.release(x);
    ctx.pool.trim();
  }
  return rows;
}
