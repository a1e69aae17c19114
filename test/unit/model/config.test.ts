import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ModelConfigError, modelSpecFromConfig, parameterCount, parseModelConfig, ropeInvFreq } from '../../../src/engine/model/config.ts';
import { FIXTURE_FAMILIES, fixturesDir } from '../../helpers/fixtures.ts';

const CONFIGS = join(dirname(fileURLToPath(import.meta.url)), '../../../src/engine/model/curated');
const target = (name: string) => parseModelConfig(readFileSync(join(CONFIGS, `${name}.json`), 'utf8'), name);
const fixtureJson = (family: string): Record<string, unknown> => JSON.parse(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));

describe('config.json → ModelSpec: reference fixtures (transformers 5 dialect)', () => {
  for (const family of FIXTURE_FAMILIES) {
    it(`reads the ${family} fixture`, () => {
      const spec = parseModelConfig(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));
      expect(spec.family).toBe(family);
      expect(spec).toMatchObject({ vocabSize: 512, hidden: 64, intermediate: 160, layers: 2, nHeads: 4, nKvHeads: 2, headDim: 16, rmsNormEps: 1e-5, maxPositionEmbeddings: 512 });
      expect(spec.rope).toEqual({ theta: 10000, scaling: { type: 'none' } });
      expect(spec.bosTokenId).toBe(1);
      expect(spec.eosTokenIds).toEqual([2]);
      expect(spec.padTokenId).toBe(0);
      expect(spec.torchDtype).toBe('float32');
      expect(spec.tieWordEmbeddings).toBe(family === 'llama' || family === 'qwen3');
      expect(spec.qkvBias).toBe(family === 'qwen2');
      expect(spec.oBias).toBe(false);
      expect(spec.qkNorm).toBe(family === 'qwen3');
      expect(spec.mlpBias).toBe(false);
    });
  }
});

describe('config.json → ModelSpec: the five target models (Hub configs, transformers 4 dialect)', () => {
  it('Llama-3.2-1B-Instruct: llama3 rope, eos list, tied', () => {
    const s = target('Llama-3.2-1B-Instruct');
    expect(s).toMatchObject({ family: 'llama', vocabSize: 128256, hidden: 2048, intermediate: 8192, layers: 16, nHeads: 32, nKvHeads: 8, headDim: 64, rmsNormEps: 1e-5, maxPositionEmbeddings: 131072, tieWordEmbeddings: true, qkvBias: false, bosTokenId: 128000, padTokenId: null, torchDtype: 'bfloat16' });
    expect(s.eosTokenIds).toEqual([128001, 128008, 128009]);
    expect(s.rope).toEqual({ theta: 500000, scaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } });
    expect(parameterCount(s)).toBe(1_235_814_400);
  });
  it('SmolLM2-1.7B-Instruct: LlamaForCausalLM with full multi-head attention', () => {
    const s = target('SmolLM2-1.7B-Instruct');
    expect(s).toMatchObject({ family: 'llama', vocabSize: 49152, hidden: 2048, intermediate: 8192, layers: 24, nHeads: 32, nKvHeads: 32, headDim: 64, padTokenId: 2, tieWordEmbeddings: true });
    expect(s.rope).toEqual({ theta: 130000, scaling: { type: 'none' } });
    expect(parameterCount(s)).toBe(1_711_376_384);
  });
  it('Qwen2.5-1.5B-Instruct: q/k/v biases, head_dim from hidden/heads', () => {
    const s = target('Qwen2.5-1.5B-Instruct');
    expect(s).toMatchObject({ family: 'qwen2', vocabSize: 151936, hidden: 1536, intermediate: 8960, layers: 28, nHeads: 12, nKvHeads: 2, headDim: 128, rmsNormEps: 1e-6, qkvBias: true, oBias: false, qkNorm: false, tieWordEmbeddings: true, bosTokenId: 151643 });
    expect(s.eosTokenIds).toEqual([151645]);
    expect(s.rope).toEqual({ theta: 1e6, scaling: { type: 'none' } });
    expect(parameterCount(s)).toBe(1_543_714_304);
  });
  it('Qwen3-1.7B: explicit head_dim, q/k norms', () => {
    const s = target('Qwen3-1.7B');
    expect(s).toMatchObject({ family: 'qwen3', vocabSize: 151936, hidden: 2048, intermediate: 6144, layers: 28, nHeads: 16, nKvHeads: 8, headDim: 128, qkNorm: true, qkvBias: false, tieWordEmbeddings: true, maxPositionEmbeddings: 40960 });
    // The model card: 1.7B parameters, 1.4B of them non-embedding.
    const nonEmbedding = parameterCount(s) - s.vocabSize * s.hidden;
    expect(nonEmbedding / 1e9).toBeCloseTo(1.4, 1);
  });
  it('InternLM2-Chat-1.8B: dynamic NTK rope, untied, no biases', () => {
    const s = target('internlm2-chat-1_8b');
    expect(s).toMatchObject({ family: 'internlm2', vocabSize: 92544, hidden: 2048, intermediate: 8192, layers: 24, nHeads: 16, nKvHeads: 8, headDim: 128, tieWordEmbeddings: false, qkvBias: false, oBias: false, padTokenId: 2 });
    expect(s.rope).toEqual({ theta: 1e6, scaling: { type: 'dynamic', factor: 2, maxPositionEmbeddings: 32768 } });
    expect(parameterCount(s) / 1e9).toBeCloseTo(1.89, 2);
  });
});

describe('config dialects and family quirks', () => {
  const base = () => fixtureJson('llama');
  it('reads rope_scaling with `type` and with `rope_type`, and rope_parameters with scaling', () => {
    const a = { ...base(), rope_parameters: undefined, rope_theta: 5e5, rope_scaling: { type: 'linear', factor: 4 } };
    expect(modelSpecFromConfig(a).rope).toEqual({ theta: 5e5, scaling: { type: 'linear', factor: 4 } });
    const b = { ...base(), rope_parameters: undefined, rope_theta: 5e5, rope_scaling: { rope_type: 'linear', factor: 2 } };
    expect(modelSpecFromConfig(b).rope.scaling).toEqual({ type: 'linear', factor: 2 });
    const c = { ...base(), rope_parameters: { rope_type: 'llama3', rope_theta: 5e5, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } };
    expect(modelSpecFromConfig(c).rope).toEqual({ theta: 5e5, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } });
    const d = { ...base(), rope_parameters: { full_attention: { rope_type: 'default', rope_theta: 1234 } } };
    expect(modelSpecFromConfig(d).rope).toEqual({ theta: 1234, scaling: { type: 'none' } });
  });
  it('older InternLM2 repos (model_type "internlm") are keyed on architectures', () => {
    const s = modelSpecFromConfig({ ...fixtureJson('internlm2'), model_type: 'internlm', bias: true });
    expect(s.family).toBe('internlm2');
    expect(s.qkvBias && s.oBias).toBe(true);
  });
  it('falls back on model_type when architectures is absent; head_dim and kv heads default as HF does', () => {
    const c = base();
    delete c.architectures;
    delete c.head_dim;
    delete c.num_key_value_heads;
    const s = modelSpecFromConfig(c);
    expect(s.family).toBe('llama');
    expect(s.headDim).toBe(16);
    expect(s.nKvHeads).toBe(4);
  });
  it('llama attention_bias / mlp_bias switch the bias flags', () => {
    const s = modelSpecFromConfig({ ...base(), attention_bias: true, mlp_bias: true });
    expect([s.qkvBias, s.oBias, s.mlpBias]).toEqual([true, true, true]);
  });
  it('rope inverse frequencies: llama3 leaves high frequencies alone and divides low ones by the factor', () => {
    const s = target('Llama-3.2-1B-Instruct');
    const plain = ropeInvFreq({ headDim: 64, rope: { theta: 5e5, scaling: { type: 'none' } } });
    const scaled = ropeInvFreq(s);
    expect(scaled[0]).toBe(plain[0]);
    expect(scaled[31]! * 32).toBeCloseTo(plain[31]!, 15);
    // dynamic NTK changes nothing within max_position_embeddings, and lowers frequencies beyond it
    const ilm = target('internlm2-chat-1_8b');
    expect([...ropeInvFreq(ilm, 4096)]).toEqual([...ropeInvFreq({ headDim: 128, rope: { theta: 1e6, scaling: { type: 'none' } } })]);
    expect(ropeInvFreq(ilm, 65536)[10]!).toBeLessThan(ropeInvFreq(ilm, 100)[10]!);
  });
});

describe('config errors name what is wrong', () => {
  const base = () => fixtureJson('llama');
  const err = (c: unknown) => {
    try {
      modelSpecFromConfig(c, 'cfg.json');
    } catch (e) {
      expect(e).toBeInstanceOf(ModelConfigError);
      return (e as Error).message;
    }
    throw new Error('expected an error');
  };
  it('unknown architecture names what it found and what is supported', () => {
    const m = err({ ...base(), architectures: ['MistralForCausalLM'], model_type: 'mistral' });
    expect(m).toContain('MistralForCausalLM');
    expect(m).toContain('"mistral"');
    expect(m).toContain('LlamaForCausalLM');
    expect(m).toContain('InternLM2ForCausalLM');
    const n = err({ ...base(), architectures: undefined, model_type: 'gemma' });
    expect(n).toContain('"gemma"');
  });
  it.each([
    ['vocab_size', 0, 'vocab_size'],
    ['vocab_size', 2e7, 'sanity limit'],
    ['hidden_size', -64, 'hidden_size'],
    ['hidden_size', 64.5, 'not an integer'],
    ['intermediate_size', undefined, "missing 'intermediate_size'"],
    ['num_hidden_layers', '2', 'num_hidden_layers'],
    ['num_key_value_heads', 3, 'not a multiple'],
    ['num_key_value_heads', 8, 'exceeds'],
    ['rms_norm_eps', -1, 'rms_norm_eps'],
    ['hidden_act', 'gelu', 'silu'],
    ['eos_token_id', [2, 'x'], 'eos_token_id'],
    ['tie_word_embeddings', 'yes', 'tie_word_embeddings'],
    ['rope_parameters', { rope_type: 'yarn', rope_theta: 1e4, factor: 4 }, 'yarn'],
    ['rope_parameters', { rope_type: 'linear', rope_theta: 1e4 }, "'factor' is missing"],
    ['rope_parameters', { rope_type: 'default', rope_theta: -5 }, 'rope_theta'],
  ])('%s = %j → error mentioning %s', (key, value, needle) => {
    const c: Record<string, unknown> = { ...base(), [key]: value };
    if (value === undefined) delete c[key];
    const m = err(c);
    expect(m).toContain('cfg.json');
    expect(m).toContain(needle);
  });
  it('heads that do not divide hidden without head_dim', () => {
    const c = { ...base(), hidden_size: 66 };
    delete (c as Record<string, unknown>).head_dim;
    expect(err(c)).toMatch(/hidden_size.*66.*not divisible.*num_attention_heads/);
  });
  it('not JSON / not an object', () => {
    expect(() => parseModelConfig('{', 'x.json')).toThrow(/x\.json: not valid JSON/);
    expect(err([1, 2])).toContain('not a JSON object');
  });
});
