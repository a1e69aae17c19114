/**
 * A whole QLoRA training step at the InternLM2-1.8B shape (random weights; 4-bit base, LoRA r=64 on all
 * seven projections, AdamW, activation checkpointing) at (seq 512, batch 1), (512, 4), (2048, 1):
 * tokens/s, the buffer pool's peak against the memory planner's prediction, and dispatches per step.
 */
import { CURATED_MODELS } from '../src/engine/model/curated.ts';
import type { GpuContext, KernelDispatch } from '../src/engine/gpu/context.ts';
import { PassTimer } from '../src/engine/gpu/timer.ts';
import { formatBytes } from '../src/engine/gpu/errors.ts';
import { AdamW, createOptimizerState, releaseOptimizerState } from '../src/engine/kernels/adamw.ts';
import { modelSpecFromConfig, type ModelSpec } from '../src/engine/model/config.ts';
import { LoraLayout } from '../src/engine/model/lora-layout.ts';
import { planMemory } from '../src/engine/model/memory-plan.ts';
import { loraModules } from '../src/engine/model/peft.ts';
import { randomBaseWeights } from '../src/engine/model/random-weights.ts';
import { releaseBaseWeights } from '../src/engine/model/base-weights.ts';
import { Transformer } from '../src/engine/model/transformer.ts';
import { initLoraParams } from '../src/engine/train/trainer.ts';
import { int8MatmulSupport, type MatmulPrecision } from '../src/engine/kernels/quant4-mma.ts';
import { ceChunkTokens } from '../src/engine/kernels/cross_entropy.ts';
import { nvidiaSmiProcessBytes, transformerKnobs, type BenchRow } from './harness.ts';

export const INTERNLM2_1_8B = {
  architectures: ['InternLM2ForCausalLM'],
  model_type: 'internlm2',
  vocab_size: 92544,
  hidden_size: 2048,
  intermediate_size: 8192,
  num_hidden_layers: 24,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-5,
  rope_theta: 1000000,
  bias: false,
  tie_word_embeddings: false,
};

/** The same architecture at toy size, for `--quick` (a smoke run that SwiftShader finishes). */
export const INTERNLM2_TINY = { ...INTERNLM2_1_8B, vocab_size: 1024, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 };
const TINY = { ...INTERNLM2_TINY, vocab_size: 512 };

/** A kernel's family for the breakdown: its label up to the first shape (digits). */
function kernelFamily(label: string): string {
  // STEP_BREAKDOWN_SHAPES=1: group by the whole label (shapes included) instead, layer names stripped.
  if (process.env.STEP_BREAKDOWN_SHAPES) return label.replace(/layers\.\d+\./g, '');
  return label.replace(/\s[\d(].*$/, '').replace(/\s+$/, '') || label;
}

/**
 * Where the time of one step goes: every dispatch in its own timed compute pass (timestamp queries),
 * summed per kernel family. The sum is GPU time only; against the step's wall time it shows the gaps.
 */
async function stepBreakdown(ctx: GpuContext, dispatches: readonly KernelDispatch[], stepMs: number): Promise<string> {
  if (!ctx.features.timestampQuery) return '(no timestamp-query on this adapter: no breakdown)';
  const CHUNK = 1500; // query sets hold at most 4096 timestamps
  const timer = new PassTimer(ctx, CHUNK);
  const byFamily = new Map<string, { ms: number; count: number }>();
  for (let i = 0; i < dispatches.length; i += CHUNK) {
    const enc = ctx.device.createCommandEncoder();
    for (const d of dispatches.slice(i, i + CHUNK)) ctx.encode(enc, [d], timer.pass(d.label));
    timer.resolve(enc);
    ctx.device.queue.submit([enc.finish()]);
    for (const t of await timer.read()) {
      const f = byFamily.get(kernelFamily(t.label)) ?? { ms: 0, count: 0 };
      f.ms += t.ms;
      f.count++;
      byFamily.set(kernelFamily(t.label), f);
    }
  }
  timer.destroy();
  const total = [...byFamily.values()].reduce((a, f) => a + f.ms, 0);
  const lines = [...byFamily.entries()].sort((a, b) => b[1].ms - a[1].ms).map(([name, f]) => `| ${name} | ${f.count} | ${f.ms.toFixed(2)} | ${((f.ms / total) * 100).toFixed(1)}% |`);
  return [`GPU time in kernels ${total.toFixed(1)} ms of a ${stepMs.toFixed(1)} ms step (here each of the ${dispatches.length} dispatches in its own timed pass)`, '| kernel family | dispatches | ms | share |', '|---|---:|---:|---:|', ...lines].join('\n');
}

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  // STEP_MODEL=<curated Hub id> (e.g. Qwen/Qwen2.5-1.5B-Instruct): that model's shapes instead of InternLM2-1.8B's.
  const curated = process.env.STEP_MODEL ? CURATED_MODELS.find((m) => m.id === process.env.STEP_MODEL) : undefined;
  if (process.env.STEP_MODEL && !curated) throw new Error(`STEP_MODEL ${process.env.STEP_MODEL} is not a curated model: ${CURATED_MODELS.map((m) => m.id).join(', ')}`);
  const spec: ModelSpec = quick ? modelSpecFromConfig(TINY, 'InternLM2 tiny') : curated ? modelSpecFromConfig(curated.config, `${curated.id} shape`) : modelSpecFromConfig(INTERNLM2_1_8B, 'InternLM2-1.8B shape');
  const settings: [number, number][] = quick ? [[32, 1]] : [[512, 1], [512, 4], [2048, 1]];
  const rows: BenchRow[] = [];
  ctx.pool.resetPeak();
  const weights = await randomBaseWeights(ctx, spec, { seed: 1, quantize: true, poolValues: 1 << 22 });
  const weightBytes = ctx.pool.liveBytes;
  const rank = quick ? 8 : 64;
  const layout = new LoraLayout(spec, { r: rank, loraAlpha: 16, targetModules: loraModules(spec.family) });
  const state = createOptimizerState(ctx, layout.optimizer);
  ctx.write(state.params, initLoraParams(layout, 1));
  const optimizer = await AdamW.create(ctx, state, { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 });
  const update = await optimizer.stepDispatches({ zeroGrad: true });
  console.log(`weights on the GPU: ${formatBytes(weightBytes)}; LoRA params ${layout.optimizer.total}`);
  // The f32 path everywhere; the int8 tensor-core path too where the GPU has it.
  // STEP_PRECISION=int8|f32 and STEP_SETTINGS=512x4,2048x1 narrow the runs; STEP_BREAKDOWN=512x4 picks the
  // setting whose per-kernel breakdown is printed (default: the last).
  const precisions: MatmulPrecision[] = (int8MatmulSupport(ctx.features).ok ? (['f32', 'int8'] as const) : (['f32'] as const)).filter((p) => !process.env.STEP_PRECISION || p === process.env.STEP_PRECISION);
  const picked = (process.env.STEP_SETTINGS ?? '').split(',').filter(Boolean);
  const chosen = picked.length ? settings.filter(([s, b]) => picked.includes(`${s}x${b}`)) : settings;
  const breakdownOf = process.env.STEP_BREAKDOWN ?? `${chosen[chosen.length - 1]![0]}x${chosen[chosen.length - 1]![1]}`;
  const runs = precisions.flatMap((precision) => chosen.map(([seq, batch]) => [precision, seq, batch] as const));
  for (const [precision, seq, batch] of runs) {
    // Every run from the same adapter (the timed steps update it), so the losses printed compare across runs.
    ctx.write(state.params, initLoraParams(layout, 1));
    const model = new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads }, { matmulPrecision: precision, ...transformerKnobs() });
    ctx.pool.trim();
    ctx.pool.resetPeak();
    // The cross-entropy chunk the app's trainer gets (its default workspace), unless STEP_CE_CHUNK sets one.
    const ce = ceChunkTokens(spec.vocabSize, batch * seq, { chunkTokens: process.env.STEP_CE_CHUNK ? Number(process.env.STEP_CE_CHUNK) : undefined, limits: ctx.limits });
    const plan = await model.plan({ batch, seq }, 'train', { ceChunkTokens: ce });
    const T = batch * seq;
    const ids = Int32Array.from({ length: T }, (_, i) => (i * 7919) % spec.vocabSize);
    // STEP_DOC_TOKENS=N: rows packed with documents of N tokens (positions restart in each), as the app packs
    // short samples; unset: one document per row.
    const docTokens = Number(process.env.STEP_DOC_TOKENS) || seq;
    const pos = (i: number) => (i % seq) % docTokens;
    plan.setBatch({ inputIds: ids, labels: ids, positionIds: Int32Array.from({ length: T }, (_, i) => pos(i)), documentIds: Int32Array.from({ length: T }, (_, i) => Math.floor((i % seq) / docTokens)) });
    const step = async () => {
      const enc = ctx.device.createCommandEncoder();
      plan.encode(enc);
      ctx.encode(enc, update);
      ctx.device.queue.submit([enc.finish()]);
      await ctx.device.queue.onSubmittedWorkDone();
    };
    optimizer.setStep(1, 2e-4);
    await step(); // warm-up
    const times: number[] = [];
    for (let i = 0; i < (quick ? 1 : 4); i++) {
      const t0 = performance.now();
      await step();
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const ms = times[Math.floor(times.length / 2)]!;
    const peak = ctx.pool.peakBytes;
    // The driver's view while the step's buffers are all still held (the pool's peak counts buffers only).
    const smi = nvidiaSmiProcessBytes();
    const predicted = planMemory(spec, { seqLen: seq, microBatch: batch, loraRank: rank, quantBits: 4, groupSize: 64, optimizerOffload: 'gpu', activationCheckpointing: true, keepAttention: model.keepAttention, ceChunkTokens: ce, int8Matmuls: model.matmulPrecision === 'int8' }).totalBytes;
    const loss = (await ctx.read(plan.loss!))[0]!;
    rows.push({
      name: `QLoRA step${curated ? ` ${curated.id}` : ''} seq ${seq} batch ${batch}${precision === 'int8' ? ' int8 matmuls' : ''}`,
      ms,
      note: `${((T / ms) * 1000).toFixed(0)} tok/s;${docTokens < seq ? ` documents of ${docTokens} tokens;` : ''} loss chunks of ${ce} tokens; pool peak ${formatBytes(peak)} vs planned ${formatBytes(predicted)} (${((predicted / peak - 1) * 100).toFixed(1)}%)${smi === null ? '' : `, nvidia-smi ${formatBytes(smi)} for this process`}; ${plan.dispatches.length + update.length} dispatches, 1 submit; loss ${loss.toFixed(3)}`,
    });
    console.log(rows[rows.length - 1]!.name, rows[rows.length - 1]!.note);
    if (`${seq}x${batch}` === breakdownOf) console.log(`\n### where the time goes: seq ${seq} batch ${batch}\n${await stepBreakdown(ctx, [...plan.dispatches, ...update], ms)}\n`);
    plan.release();
  }
  optimizer.release();
  releaseOptimizerState(ctx, state);
  releaseBaseWeights(ctx, weights);
  return rows;
}
