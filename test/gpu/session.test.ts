/**
 * The engine session the app's worker runs, end to end in Node: the offline demo model, an identity
 * dataset through the data pipeline, training with progress, chat with base and tuned model, adapter
 * export that imports back.
 */
import { expect, it } from 'vitest';
import { EngineSession, type EvalAnswers } from '../../src/engine/session.ts';
import { importAdapterZip } from '../../src/engine/share/adapter-zip.ts';
import { modelSpecFromConfig, parseModelConfig } from '../../src/engine/model/config.ts';
import { CURATED_MODELS } from '../../src/engine/model/curated.ts';
import { planMemory } from '../../src/engine/model/memory-plan.ts';
import { ceChunkTokens } from '../../src/engine/kernels/cross_entropy.ts';
import { DEMO_CONFIG } from '../../src/engine/demo/demo-model.ts';
import type { TrainProgress } from '../../src/engine/train/trainer.ts';
import { gpu } from '../helpers/gpu.ts';
import { identityDataset } from '../helpers/identity.ts';

it('demo model: train on an identity dataset, chat, export the adapter', async () => {
  const ctx = await gpu();
  const engine = new EngineSession(ctx);
  const info = await engine.loadDemoModel(1);
  expect(info.architecture).toBe('LlamaForCausalLM');
  const data = identityDataset(engine.tokenizerSource()!, 128);
  const progress: TrainProgress[] = [];
  const evals: EvalAnswers[] = [];
  const result = await engine.train(data.train, { loraRank: 8, loraAlpha: 16, loraDropout: 0, lr: 1e-2, epochs: 2, microBatch: 4, gradAccum: 1, warmupRatio: 0 }, (p) => progress.push(p), {
    prompts: ['Who are you?'],
    every: 3,
    settings: { maxNewTokens: 8 },
    onAnswers: (a) => evals.push(a),
  });
  // XTuner's evaluation_inputs: every 3 steps and at the last one, each prompt answered.
  const expectedSteps = progress.filter((p) => p.step % 3 === 0 || p.step === result.steps).map((p) => p.step);
  expect(evals.map((e) => e.step)).toEqual(expectedSteps);
  expect(evals.every((e) => e.answers.length === 1 && e.answers[0]!.prompt === 'Who are you?')).toBe(true);
  expect(result.steps).toBe(progress.length);
  expect(progress.map((p) => p.step)).toEqual(progress.map((_, i) => i + 1));
  expect(progress[progress.length - 1]!.loss).toBeLessThan(progress[0]!.loss);
  let streamed = '';
  const reply = await engine.chat('tuned', 'Who are you?', { maxNewTokens: 12, temperature: 0, seed: 1 }, (d) => (streamed += d));
  expect(streamed).toBe(reply);
  const base = await engine.chat('base', 'Who are you?', { maxNewTokens: 12, temperature: 0, seed: 1 });
  expect(typeof base).toBe('string');
  const zip = await engine.exportAdapter();
  const back = await importAdapterZip(zip, parseModelConfig(JSON.stringify(DEMO_CONFIG)));
  expect(back.adapter.config.r).toBe(8);
  expect(back.chat?.stopTokenIds).toContain(258);
  engine.unload();
}, 600_000);

it('plans each curated model card before anything is downloaded, ignoring another family\'s LoRA target names', async () => {
  const ctx = await gpu();
  const engine = new EngineSession(ctx);
  const qlora = { loraRank: 64, loraAlpha: 16, microBatch: 1, optimizerOffload: 'gpu' as const, matmulPrecision: 'f32' as const };
  const plans = await engine.planCuratedTraining({ ...qlora, targets: ['wqkv'] }, 2048, true, 8 * 2 ** 30);
  expect(plans.map((p) => p.id)).toEqual(['internlm/internlm2-chat-1_8b', 'Qwen/Qwen2.5-1.5B-Instruct', 'Qwen/Qwen3-1.7B', 'meta-llama/Llama-3.2-1B-Instruct', 'HuggingFaceTB/SmolLM2-1.7B-Instruct']);
  for (const p of plans) {
    if ('error' in p) throw new Error(`${p.id}: ${p.error}`);
    // At least the 4-bit projections (half a byte per parameter) and at most what fits the 8 GiB budget.
    expect(p.totalBytes).toBeGreaterThan(p.parameters / 2);
    expect(p.fits).toBe(true);
  }
  // The planner's own numbers for InternLM2 (the engine adds only the chunk size its limits allow).
  const spec = modelSpecFromConfig(CURATED_MODELS[0]!.config);
  const chunk = ceChunkTokens(spec.vocabSize, 2048, { limits: ctx.limits });
  const direct = planMemory(spec, { seqLen: 2048, microBatch: 1, loraRank: 64, quantBits: 4, groupSize: 64, optimizerOffload: 'gpu', activationCheckpointing: true, ceChunkTokens: chunk, int8Matmuls: false }, { budgetBytes: 8 * 2 ** 30 });
  expect(plans[0]).toMatchObject({ totalBytes: direct.totalBytes, fits: direct.fits });
  // An f32 base of 1.8B parameters (7 GB of weights) does not fit 8 GiB for training.
  const f32 = await engine.planCuratedTraining(qlora, 2048, false, 8 * 2 ** 30);
  expect(f32[0]).toMatchObject({ fits: false });
});

it('lossChunkTokens: the loss is computed in chunks of that many tokens (same losses, a smaller plan), and a bad value is refused', async () => {
  const ctx = await gpu();
  const engine = new EngineSession(ctx);
  await engine.loadDemoModel(1);
  const data = identityDataset(engine.tokenizerSource()!, 64);
  const config = { loraRank: 4, loraAlpha: 8, loraDropout: 0, lr: 1e-2, epochs: 1, maxSteps: 3, microBatch: 2, gradAccum: 1, warmupRatio: 0 };
  const losses = async (extra: object) => {
    const out: number[] = [];
    await engine.train(data.train, { ...config, ...extra }, (p) => out.push(p.loss));
    return out;
  };
  const whole = await losses({});
  const chunked = await losses({ lossChunkTokens: 5 });
  expect(chunked.length).toBe(3);
  chunked.forEach((l, i) => expect(Math.abs(l - whole[i]!)).toBeLessThan(1e-4 * Math.max(1, Math.abs(whole[i]!))));
  const seq = Math.max(...data.train.map((r) => r.inputIds.length));
  const small = engine.planTraining({ ...config, lossChunkTokens: 5 }, seq);
  const big = engine.planTraining(config, seq);
  expect(small.ce.bytes).toBeLessThan(big.ce.bytes);
  await expect(engine.train(data.train, { ...config, lossChunkTokens: 0 })).rejects.toThrow(/loss chunk must be a whole number of tokens ≥ 1, got 0/);
});
