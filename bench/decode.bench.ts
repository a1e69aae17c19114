/**
 * Chat generation at the InternLM2-1.8B shape (random weights, 4-bit base, f32 lm_head): prefill tokens/s
 * at 512 and 1024 prompt tokens, and decode tokens/s at 1 and 1024 tokens of context (XTuner's sampling
 * defaults on the GPU, one command buffer per token, 4-byte readback), also with a LoRA r=64 adapter on
 * all seven projections (unmerged). Wall-clock from the first submit to the last id read back.
 */
import type { GpuContext } from '../src/engine/gpu/context.ts';
import { formatBytes } from '../src/engine/gpu/errors.ts';
import { createOptimizerState, releaseOptimizerState } from '../src/engine/kernels/adamw.ts';
import { modelSpecFromConfig } from '../src/engine/model/config.ts';
import { LoraLayout } from '../src/engine/model/lora-layout.ts';
import { loraModules } from '../src/engine/model/peft.ts';
import { randomBaseWeights } from '../src/engine/model/random-weights.ts';
import { releaseBaseWeights } from '../src/engine/model/base-weights.ts';
import { initLoraParams } from '../src/engine/train/trainer.ts';
import { Generator } from '../src/engine/generate/generator.ts';
import { DEFAULT_SETTINGS } from '../src/engine/generate/settings.ts';
import { prepareSampler } from '../src/engine/kernels/sampling.ts';
import { INTERNLM2_1_8B, INTERNLM2_TINY } from './train-step.bench.ts';
import type { BenchRow } from './harness.ts';


function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** The sampler alone over a 92544-logit row: time per token and which path (fast or general) it took. */
async function samplerRows(ctx: GpuContext, vocab: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  let s = 12345;
  const logits = Float32Array.from({ length: vocab }, () => (((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5) * 8);
  const t = ctx.upload('bench logits', [vocab], logits);
  for (const [name, over] of [['XTuner (t 0.1, top-p 0.75, top-k 40)', {}], ['greedy', { temperature: 0 }], ['top-k off, top-p off (general path)', { topK: 0, topP: 1 }]] as const) {
    const sampler = await prepareSampler(ctx, t, vocab);
    sampler.setParams({ ...DEFAULT_SETTINGS, seed: 3, ...over });
    sampler.reset([], 0);
    const reps = 20;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await ctx.run(sampler.dispatches);
    const ms = (performance.now() - t0) / reps;
    const st = await ctx.read(sampler.state, 'u32');
    rows.push({ name: `sampling ${vocab} logits: ${name}`, ms, note: `${st[2]} of ${st[0]} tokens by the general path (wall time per token incl. submit + wait)` });
    sampler.release();
  }
  ctx.release(t);
  return rows;
}

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const spec = modelSpecFromConfig(quick ? INTERNLM2_TINY : INTERNLM2_1_8B, 'InternLM2-1.8B shape');
  const weights = await randomBaseWeights(ctx, spec, { seed: 1, quantize: true, poolValues: 1 << 22 });
  const weightBytes = ctx.pool.liveBytes;
  const longCtx = quick ? 64 : 1024;
  const newTokens = quick ? 8 : 128;
  const gen = await Generator.create(ctx, weights, { maxTokens: longCtx + newTokens + 8, maxPrefill: longCtx });
  console.log(`weights ${formatBytes(weightBytes)}; KV cache + generator ${formatBytes(ctx.pool.liveBytes - weightBytes)}`);
  const ids = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729) % spec.vocabSize);
  const settings = { ...DEFAULT_SETTINGS, stopTokenIds: [], seed: 7 };
  const rows: BenchRow[] = [...(await samplerRows(ctx, spec.vocabSize))];

  const prefill = async (n: number) => {
    const times: number[] = [];
    for (let rep = 0; rep < (quick ? 2 : 4); rep++) {
      gen.reset();
      const prompt = ids(n, rep);
      const t0 = performance.now();
      await gen.feed(prompt);
      if (rep > 0) times.push(performance.now() - t0); // rep 0: warm-up (pipelines, first use)
    }
    const ms = median(times);
    rows.push({ name: `prefill ${n} tokens`, ms, note: `${((n / ms) * 1000).toFixed(0)} tokens/s (flash attention, tiled q4 matmuls, K/V into the cache, last-position logits)` });
    console.log(rows[rows.length - 1]!.name, rows[rows.length - 1]!.note);
  };

  const decode = async (context: number, label: string) => {
    const per: number[] = [];
    let last = null as Awaited<ReturnType<Generator['generate']>> | null;
    for (let rep = 0; rep < (quick ? 2 : 3); rep++) {
      gen.reset();
      const res = await gen.generate(ids(context, 100 + rep), { ...settings, maxNewTokens: newTokens });
      if (res.tokens.length !== newTokens) throw new Error(`decode bench: ${res.tokens.length} tokens (${res.finishReason}), wanted ${newTokens}`);
      if (rep > 0) per.push(res.decodeMs / (res.tokens.length - 1));
      last = res;
    }
    const ms = median(per);
    const paths = await gen.samplingPathCounts();
    rows.push({
      name: `decode at context ${context}${label}`,
      ms,
      bytes: weightBytes,
      note: `${(1000 / ms).toFixed(1)} tokens/s over ${newTokens - 1} tokens (XTuner sampling on the GPU; first token after ${last!.prefillMs.toFixed(1)} ms; last run: ${paths.general} of ${paths.tokens} tokens by the exact general sampling path)`,
    });
    console.log(rows[rows.length - 1]!.name, rows[rows.length - 1]!.note);
  };

  await prefill(quick ? 32 : 512);
  await prefill(longCtx);
  await decode(1, '');
  await decode(longCtx, '');

  // The same with a LoRA r=64 adapter on all seven projections (unmerged; switched in without reloading).
  const layout = new LoraLayout(spec, { r: quick ? 8 : 64, loraAlpha: 16, targetModules: loraModules(spec.family) });
  const state = createOptimizerState(ctx, layout.optimizer, { residentMoments: false });
  ctx.write(state.params, initLoraParams(layout, 1));
  gen.setLora({ layout, params: state.params, grads: state.grads });
  await decode(1, ` + LoRA r=${layout.rank}`);
  await decode(longCtx, ` + LoRA r=${layout.rank}`);
  gen.setLora(null);

  gen.release();
  releaseOptimizerState(ctx, state);
  releaseBaseWeights(ctx, weights);
  return rows;
}
