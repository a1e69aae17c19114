import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parameterCount, parseModelConfig, type ModelSpec } from '../../../src/engine/model/config.ts';
import { DEFAULT_BUDGET_BYTES, planMemory, withAttentionChoice, type MemoryPlan, type TrainingMemoryConfig } from '../../../src/engine/model/memory-plan.ts';
import { expectedLoraTensors, loraModules } from '../../../src/engine/model/peft.ts';
import { GpuOutOfMemoryError } from '../../../src/engine/gpu/errors.ts';
import { explainTrainingOutOfMemory } from '../../../src/engine/train/out-of-memory.ts';
import { fixturesDir } from '../../helpers/fixtures.ts';

const CONFIGS = join(dirname(fileURLToPath(import.meta.url)), '../../../src/engine/model/curated');
const target = (name: string): ModelSpec => parseModelConfig(readFileSync(join(CONFIGS, `${name}.json`), 'utf8'));
const fixture = (family: string): ModelSpec => parseModelConfig(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));
const TARGETS = ['internlm2-chat-1_8b', 'Qwen2.5-1.5B-Instruct', 'Qwen3-1.7B', 'Llama-3.2-1B-Instruct', 'SmolLM2-1.7B-Instruct'];

const qlora: TrainingMemoryConfig = { seqLen: 2048, microBatch: 1, loraRank: 64, quantBits: 4, groupSize: 64, optimizerOffload: 'gpu', activationCheckpointing: true, ceChunkTokens: 1024 };
const term = (p: MemoryPlan, section: 'weights' | 'lora' | 'optimizer' | 'activations' | 'ce' | 'evaluation' | 'workspace', name: string) => {
  const t = p[section].terms.find((x) => x.name === name);
  if (!t) throw new Error(`no term '${name}' in ${section}: ${p[section].terms.map((x) => x.name).join(', ')}`);
  return t.bytes;
};

describe('memory plan: terms', () => {
  it('sections sum to the training peak; the total is the larger of training and loading', () => {
    for (const name of TARGETS) {
      const p = planMemory(target(name), qlora);
      const sum = p.weights.bytes + p.lora.bytes + p.optimizer.bytes + p.activations.bytes + p.ce.bytes + p.workspace.bytes;
      expect(sum).toBe(p.trainingPeakBytes);
      for (const s of [p.weights, p.lora, p.optimizer, p.activations, p.ce, p.workspace]) expect(s.bytes).toBe(s.terms.reduce((a, t) => a + t.bytes, 0));
      expect(p.totalBytes).toBe(Math.max(p.trainingPeakBytes, p.loadingPeakBytes));
      expect(p.peakPhase).toBe('training');
      // without persistent step buffers the loss workspace and the layer scratch are never live together
      const phased = planMemory(target(name), qlora, { assumptions: { stepBuffersPersistent: false } });
      expect(phased.ce.bytes === 0).toBe(phased.peakPhase === 'layer-backward');
      expect(p.trainingPeakBytes - phased.trainingPeakBytes).toBe(Math.min(p.phaseBytes.loss, p.phaseBytes.layerBackward));
    }
  });

  it('LoRA parameters equal what the PEFT adapter holds (fixture: r=8 on all seven projections)', () => {
    const spec = fixture('llama');
    const p = planMemory(spec, { ...qlora, seqLen: 24, microBatch: 2, loraRank: 8 });
    const adapterElems = expectedLoraTensors(spec, { r: 8, targetModules: loraModules('llama') }).reduce((a, e) => a + e.shape[0] * e.shape[1], 0);
    expect(adapterElems).toBe(17920);
    expect(term(p, 'lora', 'LoRA A, B')).toBe(adapterElems * 4);
    expect(term(p, 'lora', 'LoRA gradients')).toBe(adapterElems * 4);
    expect(term(p, 'optimizer', 'AdamW m, v')).toBe(2 * adapterElems * 4);
  });

  it("one layer's scratch is the engine StepPlan's buffers (LayerScratch + BackwardScratch), fixture shape", () => {
    const spec = fixture('llama');
    const [T, H, Q, KV, I, r, nH, mods] = [48, 64, 64, 32, 160, 8, 4, 7];
    // Without kept attention the scratch holds one attention output and lse that every layer reuses.
    const forward = T * H + T + T * Q + 2 * T * KV + T * Q + nH * T + 2 * T * H + T * H + T + 3 * T * I + T * H + mods * T * r;
    const backward = 5 * T * H + 3 * T * I + 2 * T * Q + 2 * T * KV + nH * T + mods * T * r;
    const recomputed = planMemory(spec, { ...qlora, seqLen: 24, microBatch: 2, loraRank: r, ceChunkTokens: 48, keepAttention: false });
    expect(recomputed.phaseBytes.layerBackward).toBe((forward + backward) * 4);
    expect(() => term(recomputed, 'activations', 'kept attention outputs')).toThrow();
    // Kept (the default): one per layer among the saved activations instead, with each layer's LoRA U.
    const p = planMemory(spec, { ...qlora, seqLen: 24, microBatch: 2, loraRank: r, ceChunkTokens: 48 });
    expect(p.phaseBytes.layerBackward).toBe((forward - T * Q - nH * T - mods * T * r + backward) * 4);
    expect(term(p, 'activations', 'kept attention outputs')).toBe(spec.layers * (T * Q + nH * T) * 4);
    expect(term(p, 'activations', 'kept LoRA inputs')).toBe(spec.layers * mods * T * r * 4);
    expect(p.trainingPeakBytes - recomputed.trainingPeakBytes).toBe((spec.layers - 1) * (T * Q + nH * T + mods * T * r) * 4);
    // one CE chunk: no hidden/dhidden copies; final normed + rstd, losses + loss, logits, stats + lse
    expect(p.phaseBytes.loss).toBe((T * (H + 1) + T + 1 + T * 512 + 4 * T + T) * 4);
    expect(term(p, 'activations', 'saved layer inputs + final hidden')).toBe(3 * T * H * 4);
  });

  it('f32 weights equal the parameter count × 4; 4-bit weights are nibbles plus one scale per group', () => {
    for (const name of TARGETS) {
      const spec = target(name);
      const f32 = planMemory(spec, { ...qlora, quantBits: 32 });
      expect(f32.weights.bytes, name).toBe(parameterCount(spec) * 4);
      const q4 = planMemory(spec, qlora);
      const linear = parameterCount(spec) - spec.vocabSize * spec.hidden * (spec.tieWordEmbeddings ? 1 : 2) - term(q4, 'weights', 'norms and biases') / 4;
      expect(term(q4, 'weights', 'projections (4-bit + scales)'), name).toBe(linear / 2 + (linear / 64) * 4);
    }
  });

  it('InternLM2-1.8B QLoRA r=64, seq 2048: the numbers the engine will be measured against', () => {
    const spec = target('internlm2-chat-1_8b');
    const p = planMemory(spec, qlora);
    // 24 layers × (wqkv 4096×2048 + wo 2048×2048 + w1/w3/w2 3×8192×2048) = 1.51e9 projection weights
    expect(term(p, 'weights', 'projections (4-bit + scales)')).toBe(24 * 62_914_560 * (0.5 + 4 / 64));
    expect(term(p, 'weights', 'embedding')).toBe(92544 * 2048 * 4);
    expect(term(p, 'weights', 'lm_head')).toBe(92544 * 2048 * 4);
    // r=64 on wqkv, wo, w1, w3, w2: 64 × (6144 + 4096 + 3 × 10240) per layer
    expect(term(p, 'lora', 'LoRA A, B')).toBe(24 * 64 * 40960 * 4);
    expect(term(p, 'activations', 'saved layer inputs + final hidden')).toBe(25 * 2048 * 2048 * 4);
    expect(p.totalBytes / 2 ** 30).toBeGreaterThan(3);
    expect(p.totalBytes / 2 ** 30).toBeLessThan(5);
    expect(p.fits).toBe(true);
    expect(p.advice).toEqual([]);
    expect(p.suggestedConfig).toBeNull();
    expect(p.budgetBytes).toBe(DEFAULT_BUDGET_BYTES);
  });

  it('held-out rows add the eval loss\'s forward-only plan: one row, two hidden states, 256-token loss chunks', () => {
    const spec = target('internlm2-chat-1_8b');
    const without = planMemory(spec, qlora);
    expect(without.evaluation.bytes).toBe(0);
    const p = planMemory(spec, { ...qlora, evalSeqLen: 2048 });
    expect(p.trainingPeakBytes - without.trainingPeakBytes).toBe(p.evaluation.bytes);
    expect(term(p, 'evaluation', 'eval: hidden states')).toBe(2 * 2048 * 2048 * 4);
    expect(term(p, 'evaluation', 'eval: logits chunk')).toBe(256 * 92544 * 4);
    // About half a GiB beside the step's 4.6 GiB: still well inside 8 GiB.
    expect(p.evaluation.bytes / 2 ** 30).toBeGreaterThan(0.3);
    expect(p.evaluation.bytes / 2 ** 30).toBeLessThan(0.7);
    expect(p.fits).toBe(true);
  });

  it('cross-entropy chunk is chunk × vocab × 4 and decides the peak for large vocabularies', () => {
    const spec = target('Qwen3-1.7B');
    const phased = { assumptions: { stepBuffersPersistent: false } };
    const p = planMemory(spec, { ...qlora, ceChunkTokens: 1024 }, phased);
    expect(p.peakPhase).toBe('loss');
    expect(term(p, 'ce', 'logits chunk')).toBe(1024 * 151936 * 4);
    expect(term(p, 'ce', 'hidden/dhidden chunk copies')).toBe(2 * 1024 * 2048 * 4);
    const small = planMemory(spec, { ...qlora, ceChunkTokens: 128 }, phased);
    expect(small.peakPhase).toBe('layer-backward');
    expect(small.totalBytes).toBeLessThan(p.totalBytes);
    // the chunk never exceeds the tokens of a micro-batch
    expect(term(planMemory(spec, { ...qlora, seqLen: 256, ceChunkTokens: 4096 }), 'ce', 'logits chunk')).toBe(256 * 151936 * 4);
  });

  it('offload leaves one layer of moments; moments scale with rank; activations scale with tokens', () => {
    const spec = target('Llama-3.2-1B-Instruct');
    const gpu = planMemory(spec, qlora);
    const cpu = planMemory(spec, { ...qlora, optimizerOffload: 'cpu' });
    const disk = planMemory(spec, { ...qlora, optimizerOffload: 'disk' });
    expect(cpu.optimizer.bytes).toBe(gpu.optimizer.bytes / spec.layers);
    expect(disk.optimizer.bytes).toBe(cpu.optimizer.bytes);
    expect(planMemory(spec, { ...qlora, loraRank: 128 }).optimizer.bytes).toBe(2 * gpu.optimizer.bytes);
    const act = (c: TrainingMemoryConfig) => term(planMemory(spec, c), 'activations', 'saved layer inputs + final hidden');
    expect(act({ ...qlora, seqLen: 4096 })).toBe(2 * act(qlora));
    expect(act({ ...qlora, microBatch: 3 })).toBe(3 * act(qlora));
    // without checkpointing every layer's intermediates stay
    const noCkpt = planMemory(spec, { ...qlora, activationCheckpointing: false });
    expect(noCkpt.activations.bytes).toBeGreaterThan(4 * gpu.activations.bytes);
  });

  it('qwen3 keeps the pre-norm q/k and their gradients; attention lse is B·nHeads·T', () => {
    const spec = target('Qwen3-1.7B');
    const p = planMemory(spec, { ...qlora, keepAttention: false });
    expect(term(p, 'activations', 'attention lse')).toBe(2048 * 16 * 4);
    expect(term(planMemory(spec, qlora), 'activations', 'kept attention outputs')).toBe(28 * 2048 * 16 * (128 + 1) * 4);
    expect(term(p, 'activations', 'q, k before q_norm/k_norm (+ rstd)')).toBe(2048 * ((16 + 8) * 128 + 16 + 8) * 4);
    expect(term(p, 'activations', 'dq, dk before norm')).toBe(2048 * (16 + 8) * 128 * 4);
    expect(() => term(planMemory(target('Qwen2.5-1.5B-Instruct'), qlora), 'activations', 'dq, dk before norm')).toThrow();
  });
});

describe('memory plan: budget and advice', () => {
  it('over budget: advice names the changes and each predicted size; following the combined advice fits', () => {
    const spec = target('Qwen3-1.7B');
    const c: TrainingMemoryConfig = { seqLen: 8192, microBatch: 4, loraRank: 128, quantBits: 32, groupSize: 64, optimizerOffload: 'gpu', activationCheckpointing: true, ceChunkTokens: 4096 };
    const p = planMemory(spec, c);
    expect(p.fits).toBe(false);
    const text = p.advice.join('\n');
    expect(text).toMatch(/exceeds the 8\.00 GiB budget/);
    expect(text).toMatch(/Recompute attention in the backward/);
    expect(text).toMatch(/optimizer offload/i);
    expect(text).toMatch(/4 bits/);
    expect(text).toMatch(/micro-batch of 1/);
    expect(text).toMatch(/maximum length/);
    expect(text).toMatch(/LoRA rank to 64/);
    expect(p.advice[p.advice.length - 1]).toMatch(/^Combined: .* \(fits\)$/);
    const s = p.suggestedConfig!;
    expect(s).toMatchObject({ keepAttention: false, optimizerOffload: 'cpu', quantBits: 4, microBatch: 1, seqLen: 8192, loraRank: 128 });
    expect(planMemory(spec, s).fits).toBe(true);
  });

  it('a single change that fits is marked, and the length advice is the longest multiple of 128 that fits', () => {
    const spec = target('SmolLM2-1.7B-Instruct');
    const c: TrainingMemoryConfig = { ...qlora, seqLen: 16384 };
    const budget = 5 * 2 ** 30;
    const p = planMemory(spec, c, { budgetBytes: budget });
    expect(p.fits).toBe(false);
    const line = p.advice.find((a) => a.startsWith('Shorten the maximum length to '))!;
    const len = Number(/to (\d+) tokens/.exec(line)![1]);
    expect(len % 128).toBe(0);
    expect(line).toContain('(fits)');
    expect(planMemory(spec, { ...c, seqLen: len }, { budgetBytes: budget }).fits).toBe(true);
    expect(p.suggestedConfig).not.toBeNull();
    expect(planMemory(spec, p.suggestedConfig!, { budgetBytes: budget }).fits).toBe(true);
    expect(planMemory(spec, { ...c, seqLen: len + 128 }, { budgetBytes: budget }).fits).toBe(false);
  });

  it('withAttentionChoice keeps attention outputs where the whole plan then fits the budget, else recomputes them; a set choice stays', () => {
    const spec = target('internlm2-chat-1_8b');
    const kept = planMemory(spec, { ...qlora, keepAttention: true }).totalBytes;
    const recomputed = planMemory(spec, { ...qlora, keepAttention: false }).totalBytes;
    expect(withAttentionChoice(spec, qlora, kept).keepAttention).toBe(true);
    expect(withAttentionChoice(spec, qlora, kept - 1).keepAttention).toBe(false);
    expect(withAttentionChoice(spec, qlora, recomputed - 1).keepAttention).toBe(false);
    expect(withAttentionChoice(spec, { ...qlora, keepAttention: true }, recomputed).keepAttention).toBe(true);
    expect(withAttentionChoice(spec, { ...qlora, keepAttention: false }, 2 ** 40).keepAttention).toBe(false);
  });

  it('says so when nothing fits', () => {
    const p = planMemory(target('Qwen3-1.7B'), qlora, { budgetBytes: 512 * 2 ** 20 });
    expect(p.advice[p.advice.length - 1]).toMatch(/choose a smaller model or a GPU with more memory/);
    expect(p.suggestedConfig).toBeNull();
  });

  it('is pure and rejects nonsense', () => {
    const spec = target('internlm2-chat-1_8b');
    expect(planMemory(spec, qlora)).toEqual(planMemory(spec, qlora));
    expect(() => planMemory(spec, { ...qlora, seqLen: 0 })).toThrow(/seqLen is 0/);
    expect(() => planMemory(spec, { ...qlora, groupSize: 1.5 })).toThrow(/groupSize/);
    expect(() => planMemory(spec, { ...qlora, targets: ['q_proj'] })).toThrow(/'q_proj' is not a LoRA target of internlm2/);
    expect(() => planMemory(spec, { ...qlora, quantBits: 8 as never })).toThrow(/quantBits/);
  });

  it('custom assumptions move the matching terms', () => {
    const spec = target('Qwen2.5-1.5B-Instruct');
    const a = planMemory(spec, qlora);
    const b = planMemory(spec, qlora, { assumptions: { embedBytesPerElement: 2, scaleBytesPerGroup: 2 } });
    expect(term(b, 'weights', 'embedding')).toBe(term(a, 'weights', 'embedding') / 2);
    expect(term(b, 'weights', 'lm_head')).toBe(0); // tied
    expect(term(a, 'weights', 'projections (4-bit + scales)') - term(b, 'weights', 'projections (4-bit + scales)')).toBeGreaterThan(0);
  });
});

describe('out of memory explained: the pool budget against the device refusing', () => {
  const spec = target('internlm2-chat-1_8b');
  const plan = planMemory(spec, qlora, { budgetBytes: 3 * 2 ** 30 });
  it('a pool budget (the user\'s cap) is named, and raising it is the last advice', () => {
    const e = explainTrainingOutOfMemory(new GpuOutOfMemoryError('step buffers', 2 ** 20, 3 * 2 ** 30 - 1, 3 * 2 ** 30), plan, qlora, 'Nothing was lost.');
    expect(e.message).toMatch(/against about 3\.00 GiB available:/);
    expect(e.suggestions[e.suggestions.length - 1]).toMatch(/^Or raise the GPU memory budget \(now 3\.00 GiB\)/);
  });
  it('a refusal by the device itself (other programs may hold the GPU): says what this run held, and points at the others first', () => {
    const e = explainTrainingOutOfMemory(new GpuOutOfMemoryError('step buffers (vkAllocateMemory failed)', 0, 402 * 1024), plan, qlora, 'Nothing was lost.');
    expect(e.message).toMatch(/; the GPU refused more while this run held 402\.0 KiB \(other tabs or programs may hold the rest\):/);
    expect(e.message).not.toMatch(/available:/);
    expect(e.suggestions[0]).toBe('Close other tabs or programs that use the GPU, then try again');
    expect(e.message).toMatch(/What to change:\n {2}• Close other tabs/);
  });
});
