import type { GpuContext } from '../src/engine/gpu/context.ts';
import type { Tensor } from '../src/engine/gpu/tensor.ts';
import { AdamW, createOptimizerState, OptimizerLayout, releaseOptimizerState } from '../src/engine/kernels/adamw.ts';
import { countSupervised, IGNORE_INDEX, prepareCrossEntropy, prepareCrossEntropyFromLogits } from '../src/engine/kernels/cross_entropy.ts';
import { prepareReduceAll } from '../src/engine/kernels/reduce.ts';
import { timeDispatches, type BenchRow } from './harness.ts';

/**
 * Cross-entropy through lm_head, AdamW and the reductions at InternLM2-1.8B shapes: 2048 tokens (one row),
 * hidden 2048, vocab 92544; AdamW over the LoRA r=64 all-linear parameters of 24 layers:
 * per layer r·(in+out) for wqkv 2048→4096, wo 2048→2048, w1/w3 2048→8192, w2 8192→2048
 * = 64·(6144 + 4096 + 3·10240) = 2,621,440 per layer, 62,914,560 in all.
 */
const TOKENS = 2048;
const HIDDEN = 2048;
const VOCAB = 92544;
const LORA_R = 64;
const LAYERS = 24;
const LINEARS: [string, number, number][] = [
  ['wqkv', 2048, 4096],
  ['wo', 2048, 2048],
  ['w1', 2048, 8192],
  ['w3', 2048, 8192],
  ['w2', 8192, 2048],
];

function loraParams(layers: number, r: number): { name: string; shape: number[] }[] {
  const out: { name: string; shape: number[] }[] = [];
  for (let l = 0; l < layers; l++)
    for (const [name, inF, outF] of LINEARS) {
      out.push({ name: `layers.${l}.${name}.lora_A`, shape: [r, inF] });
      out.push({ name: `layers.${l}.${name}.lora_B`, shape: [outF, r] });
    }
  return out;
}

/** lm_head [vocab, hidden] as row blocks that each fit one storage binding. */
function lmHeadBlocks(ctx: GpuContext, vocab: number, hidden: number): Tensor[] {
  const maxRows = Math.floor(Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize) / (hidden * 4));
  const blocks: Tensor[] = [];
  for (let at = 0; at < vocab; at += maxRows) {
    const t = ctx.tensor(`lm_head.${blocks.length}`, [Math.min(maxRows, vocab - at), hidden]);
    ctx.fill32(t, 0.02);
    blocks.push(t);
  }
  return blocks;
}

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  // --quick: a smoke test of the whole suite (small enough for SwiftShader), not a measurement.
  const tokens = quick ? 64 : TOKENS;
  const H = quick ? 64 : HIDDEN;
  const V = quick ? 2053 : VOCAB;
  const reps = quick ? 1 : 3;
  const samples = quick ? 2 : 3;

  // ---- cross-entropy -----------------------------------------------------------------------------
  {
    const hidden = ctx.tensor('hidden', [tokens, H]);
    ctx.fill32(hidden, 0.01);
    const lmHead = lmHeadBlocks(ctx, V, H);
    const labelsHost = new Int32Array(tokens);
    for (let i = 0; i < tokens; i++) labelsHost[i] = i % 7 === 0 ? IGNORE_INDEX : (i * 7919) % V;
    const labels = ctx.upload('labels', [tokens], labelsHost);
    const losses = ctx.tensor('losses', [tokens]);
    const loss = ctx.tensor('loss', [1]);
    const dhidden = ctx.tensor('dhidden', [tokens, H]);
    const numSupervised = countSupervised(labelsHost, tokens, V);
    const matmulFlops = 2 * tokens * H * V;
    for (const mib of quick ? [0.125] : [64, 256]) {
      for (const train of [true, false]) {
        const ce = await prepareCrossEntropy(ctx, { hidden, lmHead, labels, losses, loss, ...(train ? { dhidden } : {}) }, { tokens, seqLen: tokens, hidden: H }, {
          numSupervised,
          workspaceBytes: mib * 2 ** 20,
        });
        const ms = await timeDispatches(ctx, ce.dispatches, reps, samples);
        const passes = train ? 4 : 2; // logits: written by the matmul, read by stats (2 reads inside one kernel: counted once), read+written by grad
        rows.push({
          name: `CE ${train ? 'train (loss + dhidden)' : 'eval (loss only)'} ${tokens}×${H}·${V}ᵀ, workspace ${mib} MiB`,
          ms,
          flops: (train ? 2 : 1) * matmulFlops,
          bytes: ce.chunks * (train ? 2 : 1) * V * H * 4 + passes * tokens * V * 4,
          note: `${ce.chunks} chunks of ${ce.chunkTokens} tokens, ${lmHead.length} lm_head block(s), ${ce.dispatches.length} dispatches; bytes = lm_head re-read per chunk + logits traffic`,
        });
        ce.release();
      }
    }
    for (const t of [hidden, labels, losses, loss, dhidden, ...lmHead]) ctx.release(t);
    ctx.pool.trim();

    // The loss kernels alone on given logits (stats, row loss, grad in place): memory-bound.
    const n = Math.max(1, Math.floor((quick ? 2 ** 18 : 2 ** 28) / (V * 4)));
    const logits = ctx.tensor('logits', [n, V]);
    ctx.fill32(logits, 0.5);
    const lab = ctx.upload('labels', [n], Int32Array.from({ length: n }, (_, i) => (i * 7919) % V));
    const ls = ctx.tensor('losses', [n]);
    const lo = ctx.tensor('loss', [1]);
    for (const grad of [false, true]) {
      const ce = await prepareCrossEntropyFromLogits(ctx, { logits, labels: lab, losses: ls, loss: lo }, { tokens: n, seqLen: n, vocab: V }, { numSupervised: Math.max(1, n - 1), grad });
      const ms = await timeDispatches(ctx, ce.dispatches, reps, samples);
      // stats reads each row twice (max, then Σexp; the second read mostly from L2 for one row); grad reads + writes.
      rows.push({ name: `CE kernels on given logits ${n}×${V}${grad ? ' + dlogits in place' : ''}`, ms, bytes: (grad ? 4 : 2) * n * V * 4, note: 'bytes: 2 reads (stats) [+ read + write (grad)]' });
      ce.release();
    }
    for (const t of [logits, lab, ls, lo]) ctx.release(t);
    ctx.pool.trim();
  }

  // ---- AdamW + clip + reductions ---------------------------------------------------------------------
  {
    const layout = new OptimizerLayout(loraParams(quick ? 1 : LAYERS, quick ? 4 : LORA_R));
    const N = layout.total;
    const state = createOptimizerState(ctx, layout);
    ctx.fill32(state.params, 0.01);
    ctx.fill32(state.grads, 0.001);
    const opt = await AdamW.create(ctx, state, { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1 });
    opt.setStep(10);
    const update = await opt.prepareUpdate();
    const params = `${(N / 1e6).toFixed(2)}M params`;
    rows.push({ name: `grad norm (Σg² two-pass → sqrt) ${params}`, ms: await timeDispatches(ctx, opt.normDispatches, reps * 3, samples), bytes: 4 * N });
    rows.push({ name: `AdamW update ${params}`, ms: await timeDispatches(ctx, [update], reps * 3, samples), bytes: 28 * N, note: 'reads p, g, m, v; writes p, m, v' });
    rows.push({ name: `AdamW step (norm + update) ${params}`, ms: await timeDispatches(ctx, await opt.stepDispatches(), reps * 3, samples), bytes: 32 * N });
    const fused = await opt.prepareUpdate({ zeroGrad: true });
    rows.push({ name: `AdamW update + fused zero-grad ${params}`, ms: await timeDispatches(ctx, [fused], reps * 3, samples), bytes: 32 * N });
    const zero = await opt.prepareZeroGrad();
    rows.push({ name: `zero_grad ${params}`, ms: await timeDispatches(ctx, [zero], reps * 3, samples), bytes: 4 * N });
    const out = ctx.tensor('out', [1]);
    for (const op of ['sum', 'max'] as const) {
      const r = await prepareReduceAll(ctx, state.params, out, { op, length: N });
      rows.push({ name: `reduce ${op} over ${params}`, ms: await timeDispatches(ctx, r.dispatches, reps * 3, samples), bytes: 4 * N });
      r.release();
    }
    ctx.release(out);
    opt.release();
    releaseOptimizerState(ctx, state);
    ctx.pool.trim();
  }
  return rows;
}
