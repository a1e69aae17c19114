/**
 * Hugging Face `config.json` → one internal model description (`ModelSpec`) for every family we train.
 *
 * The families differ in names more than in math: all four are pre-norm RMSNorm decoders with rotary
 * attention (grouped KV heads) and a SwiGLU MLP. What differs, and is recorded here:
 * - llama (Llama 3.x, SmolLM2): optional attention/MLP biases (`attention_bias`, `mlp_bias`), llama3 rope.
 * - qwen2 (Qwen2, Qwen2.5): q/k/v biases always, no o bias.
 * - qwen3: RMSNorm on each query and key head (`q_norm`, `k_norm`), explicit `head_dim`.
 * - internlm2: packed `wqkv` (see weights.ts), `bias` covers wqkv and wo, dynamic-NTK rope scaling.
 *
 * Two config dialects exist: `rope_theta` + `rope_scaling` ({type|rope_type, factor, ...}), as most Hub
 * repositories have them, and transformers 5's `rope_parameters` ({rope_theta, rope_type, ...}), which
 * the reference fixtures use. Both are read. Defaults for absent fields follow the transformers config
 * classes of each family (see FAMILY_DEFAULTS), so a config HF accepts is read the way HF reads it.
 */

export type ModelFamily = 'llama' | 'qwen2' | 'qwen3' | 'internlm2';

export type RopeScaling =
  | { readonly type: 'none' }
  /** Positions divided by `factor`. */
  | { readonly type: 'linear'; readonly factor: number }
  /** Llama 3.1+ frequency-dependent scaling of the inverse frequencies. */
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    }
  /**
   * Dynamic NTK (InternLM2): once a sequence is longer than `maxPositionEmbeddings`, the base becomes
   * theta · ((factor · seqLen / maxPositionEmbeddings) − (factor − 1))^(headDim / (headDim − 2)).
   * Identity for sequences up to `maxPositionEmbeddings`.
   */
  | { readonly type: 'dynamic'; readonly factor: number; readonly maxPositionEmbeddings: number };

export interface RopeSpec {
  readonly theta: number;
  readonly scaling: RopeScaling;
}

export interface ModelSpec {
  readonly family: ModelFamily;
  /** `architectures[0]` (or the model_type when a config has no architectures). */
  readonly architecture: string;
  readonly modelType: string;
  readonly vocabSize: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly rmsNormEps: number;
  readonly rope: RopeSpec;
  readonly maxPositionEmbeddings: number;
  readonly tieWordEmbeddings: boolean;
  /** q, k and v projections carry biases (qwen2 always; llama/qwen3 with attention_bias; internlm2 with bias). */
  readonly qkvBias: boolean;
  /** The output projection carries a bias (llama/qwen3 attention_bias; internlm2 bias; never qwen2). */
  readonly oBias: boolean;
  /** Per-head RMSNorm on queries and keys before rope (qwen3). */
  readonly qkNorm: boolean;
  /** The config's own attention-bias flag (`attention_bias`, or `bias` for internlm2; qwen2 has none: true). */
  readonly attentionBias: boolean;
  /** gate/up/down carry biases (llama mlp_bias). */
  readonly mlpBias: boolean;
  readonly bosTokenId: number | null;
  /** Every end-of-sequence id (configs give one id or a list). */
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** `torch_dtype` (transformers 4) or `dtype` (transformers 5), e.g. 'bfloat16'; null when absent. */
  readonly torchDtype: string | null;
}

export class ModelConfigError extends Error {
  override name = 'ModelConfigError';
}

/** architectures[0] → family. */
export const SUPPORTED_ARCHITECTURES: Readonly<Record<string, ModelFamily>> = {
  LlamaForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  InternLM2ForCausalLM: 'internlm2',
};

/** model_type → family, used only when a config lists no architectures. */
const SUPPORTED_MODEL_TYPES: Readonly<Record<string, ModelFamily>> = {
  llama: 'llama',
  qwen2: 'qwen2',
  qwen3: 'qwen3',
  internlm2: 'internlm2',
};

/** What transformers' config classes (or InternLM2's remote code) use when a field is absent. */
const FAMILY_DEFAULTS: Readonly<Record<ModelFamily, { rmsNormEps: number; ropeTheta: number; maxPositionEmbeddings: number }>> = {
  llama: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048 },
  qwen2: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768 },
  qwen3: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768 },
  internlm2: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048 },
};

/** Sanity bounds: far beyond any model we could train in a browser, far below what would overflow a size computation. */
const LIMITS = {
  vocab_size: 10_000_000,
  hidden_size: 65_536,
  intermediate_size: 1_048_576,
  num_hidden_layers: 1_000,
  num_attention_heads: 1_024,
  head_dim: 1_024,
  max_position_embeddings: 100_000_000,
} as const;

type Json = Record<string, unknown>;

/** Parses config.json text; `source` names the file in messages. */
export function parseModelConfig(text: string, source = 'config.json'): ModelSpec {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ModelConfigError(`${source}: not valid JSON (${(e as Error).message})`);
  }
  return modelSpecFromConfig(json, source);
}

/** Maps a parsed config.json object to a ModelSpec, validating every field it reads. */
export function modelSpecFromConfig(config: unknown, source = 'config.json'): ModelSpec {
  const fail = (msg: string): never => {
    throw new ModelConfigError(`${source}: ${msg}`);
  };
  if (typeof config !== 'object' || config === null || Array.isArray(config)) fail('not a JSON object');
  const c = config as Json;
  const { family, architecture } = detectFamily(c, fail);
  const modelType = typeof c.model_type === 'string' ? c.model_type : family;
  const defaults = FAMILY_DEFAULTS[family];

  const int = (key: keyof typeof LIMITS | 'num_key_value_heads', { min = 1, fallback }: { min?: number; fallback?: number } = {}): number => {
    const v = c[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      return fail(`missing '${key}' (a positive integer)`);
    }
    if (typeof v !== 'number' || !Number.isInteger(v)) return fail(`'${key}' is ${JSON.stringify(v)}, not an integer`);
    if (v < min) return fail(`'${key}' is ${v}; it must be at least ${min}`);
    const max = key === 'num_key_value_heads' ? LIMITS.num_attention_heads : LIMITS[key];
    if (v > max) return fail(`'${key}' is ${v}, beyond the sanity limit ${max}`);
    return v;
  };

  const vocabSize = int('vocab_size');
  const hidden = int('hidden_size');
  const intermediate = int('intermediate_size');
  const layers = int('num_hidden_layers');
  const nHeads = int('num_attention_heads');
  const nKvHeads = int('num_key_value_heads', { fallback: nHeads });
  if (nKvHeads > nHeads) fail(`'num_key_value_heads' (${nKvHeads}) exceeds 'num_attention_heads' (${nHeads})`);
  if (nHeads % nKvHeads !== 0) fail(`'num_attention_heads' (${nHeads}) is not a multiple of 'num_key_value_heads' (${nKvHeads})`);
  let headDim: number;
  if (c.head_dim !== undefined && c.head_dim !== null) {
    headDim = int('head_dim');
  } else {
    if (hidden % nHeads !== 0) fail(`'hidden_size' (${hidden}) is not divisible by 'num_attention_heads' (${nHeads}) and there is no 'head_dim'`);
    headDim = hidden / nHeads;
  }
  if (headDim % 2 !== 0) fail(`head dimension ${headDim} is odd; rotary embeddings need an even one`);
  const maxPositionEmbeddings = int('max_position_embeddings', { fallback: defaults.maxPositionEmbeddings });

  const rmsNormEps = positiveNumber(c, 'rms_norm_eps', defaults.rmsNormEps, fail);
  if (rmsNormEps >= 1) fail(`'rms_norm_eps' is ${rmsNormEps}; expected a small positive number`);

  const hiddenAct = c.hidden_act ?? 'silu';
  if (hiddenAct !== 'silu') fail(`'hidden_act' is ${JSON.stringify(hiddenAct)}; only 'silu' (SwiGLU) is supported`);
  if (c.use_sliding_window === true) fail(`'use_sliding_window' is true; sliding-window attention is not supported`);

  const rope = readRope(c, family, defaults.ropeTheta, maxPositionEmbeddings, fail);

  const attentionBiasKey = family === 'internlm2' ? 'bias' : 'attention_bias';
  const attentionBiasDefault = family === 'internlm2' ? true : family === 'qwen2';
  const attentionBias = bool(c, attentionBiasKey, attentionBiasDefault, fail);
  const mlpBias = family === 'llama' ? bool(c, 'mlp_bias', false, fail) : false;
  const qkvBias = family === 'qwen2' ? true : attentionBias;
  const oBias = family === 'qwen2' ? false : attentionBias;

  const tieWordEmbeddings = bool(c, 'tie_word_embeddings', false, fail);
  const tokenId = (key: string): number | null => {
    const v = c[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) return fail(`'${key}' is ${JSON.stringify(v)}, not a token id`);
    return v;
  };
  const bosTokenId = tokenId('bos_token_id');
  const padTokenId = tokenId('pad_token_id');
  let eosTokenIds: number[] = [];
  const eos = c.eos_token_id;
  if (Array.isArray(eos)) {
    for (const e of eos) if (typeof e !== 'number' || !Number.isInteger(e) || e < 0) fail(`'eos_token_id' ${JSON.stringify(eos)} holds something that is not a token id`);
    eosTokenIds = [...new Set(eos as number[])];
  } else if (eos !== undefined && eos !== null) {
    eosTokenIds = [tokenId('eos_token_id')!];
  }
  const dtype = c.torch_dtype ?? c.dtype ?? null;
  if (dtype !== null && typeof dtype !== 'string') fail(`'torch_dtype' is ${JSON.stringify(dtype)}, not a string`);

  return {
    family,
    architecture,
    modelType,
    vocabSize,
    hidden,
    intermediate,
    layers,
    nHeads,
    nKvHeads,
    headDim,
    rmsNormEps,
    rope,
    maxPositionEmbeddings,
    tieWordEmbeddings,
    qkvBias,
    oBias,
    qkNorm: family === 'qwen3',
    attentionBias,
    mlpBias,
    bosTokenId,
    eosTokenIds,
    padTokenId,
    torchDtype: dtype as string | null,
  };
}

function detectFamily(c: Json, fail: (msg: string) => never): { family: ModelFamily; architecture: string } {
  const archs = c.architectures;
  const modelType = c.model_type;
  const supported = `supported: ${Object.keys(SUPPORTED_ARCHITECTURES).join(', ')} (Llama 3.x and SmolLM2 are LlamaForCausalLM; Qwen2.5 is Qwen2ForCausalLM)`;
  if (Array.isArray(archs) && archs.length > 0) {
    const first = archs[0];
    if (typeof first === 'string' && Object.hasOwn(SUPPORTED_ARCHITECTURES, first)) return { family: SUPPORTED_ARCHITECTURES[first]!, architecture: first };
    return fail(`unsupported model: architectures ${JSON.stringify(archs)}, model_type ${JSON.stringify(modelType ?? null)}; ${supported}`);
  }
  if (archs !== undefined && archs !== null && !Array.isArray(archs)) fail(`'architectures' is ${JSON.stringify(archs)}, not a list`);
  if (typeof modelType === 'string' && Object.hasOwn(SUPPORTED_MODEL_TYPES, modelType)) return { family: SUPPORTED_MODEL_TYPES[modelType]!, architecture: modelType };
  return fail(`unsupported model: no architectures, model_type ${JSON.stringify(modelType ?? null)}; ${supported}`);
}

function positiveNumber(c: Json, key: string, fallback: number, fail: (msg: string) => never): number {
  const v = c[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) return fail(`'${key}' is ${JSON.stringify(v)}; expected a positive number`);
  return v;
}

function bool(c: Json, key: string, fallback: boolean, fail: (msg: string) => never): boolean {
  const v = c[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') return fail(`'${key}' is ${JSON.stringify(v)}, not true or false`);
  return v;
}

/**
 * rope_theta + rope_scaling (transformers 4) or rope_parameters (transformers 5). rope_parameters may
 * also be keyed by layer type ({full_attention: {...}}); our families use full attention only.
 */
function readRope(c: Json, family: ModelFamily, defaultTheta: number, maxPos: number, fail: (msg: string) => never): RopeSpec {
  let params: Json | null = null;
  let where = 'rope_scaling';
  let theta: number;
  const rp = c.rope_parameters;
  if (rp !== undefined && rp !== null) {
    if (typeof rp !== 'object' || Array.isArray(rp)) return fail(`'rope_parameters' is ${JSON.stringify(rp)}, not an object`);
    let p = rp as Json;
    if (p.rope_theta === undefined && p.rope_type === undefined && typeof p.full_attention === 'object' && p.full_attention !== null) {
      p = p.full_attention as Json;
      where = 'rope_parameters.full_attention';
    } else {
      where = 'rope_parameters';
    }
    params = p;
    theta = positiveNumber(p, 'rope_theta', typeof c.rope_theta === 'number' ? c.rope_theta : defaultTheta, (m) => fail(`${where}: ${m}`));
  } else {
    theta = positiveNumber(c, 'rope_theta', defaultTheta, fail);
    const rs = c.rope_scaling;
    if (rs !== undefined && rs !== null) {
      if (typeof rs !== 'object' || Array.isArray(rs)) return fail(`'rope_scaling' is ${JSON.stringify(rs)}, not an object`);
      params = rs as Json;
    }
  }
  // inv_freq = theta^(-2i/d): a base at or below 1 makes the frequencies grow without bound (every real
  // model uses 10^4..10^7); refuse it rather than produce infinite rotations.
  if (!(theta > 1)) return fail(`'rope_theta' is ${theta}: the RoPE base must be greater than 1 (models use 10000 to 10^7)`);
  if (params === null) return { theta, scaling: { type: 'none' } };
  const p = params;
  const type = p.rope_type ?? p.type ?? 'default';
  const sub = (m: string): never => fail(`${where}: ${m}`);
  const factor = (): number => {
    const f = positiveNumber(p, 'factor', NaN, sub);
    if (Number.isNaN(f)) return sub(`'factor' is missing for rope type ${JSON.stringify(type)}`);
    return f;
  };
  switch (type) {
    case 'default':
      return { theta, scaling: { type: 'none' } };
    case 'linear':
      return { theta, scaling: { type: 'linear', factor: factor() } };
    case 'dynamic':
      // InternLM2 writes {type: dynamic, factor: 1.0 or 2.0}; with factor 1 the base never changes.
      return { theta, scaling: { type: 'dynamic', factor: factor(), maxPositionEmbeddings: maxPos } };
    case 'llama3': {
      const need = (key: string): number => {
        const v = positiveNumber(p, key, NaN, sub);
        return Number.isNaN(v) ? sub(`'${key}' is missing for rope type llama3`) : v;
      };
      const lowFreqFactor = need('low_freq_factor');
      const highFreqFactor = need('high_freq_factor');
      if (highFreqFactor <= lowFreqFactor) sub(`'high_freq_factor' (${highFreqFactor}) must exceed 'low_freq_factor' (${lowFreqFactor})`);
      const orig = need('original_max_position_embeddings');
      if (!Number.isInteger(orig)) sub(`'original_max_position_embeddings' is ${orig}, not an integer`);
      return { theta, scaling: { type: 'llama3', factor: factor(), lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: orig } };
    }
    default:
      return sub(`rope type ${JSON.stringify(type)} is not supported for ${family} (supported: default, linear, dynamic, llama3)`);
  }
}

/** Inverse rotary frequencies (length headDim/2) for sequences up to `seqLen`, scaling applied as transformers does. */
export function ropeInvFreq(spec: Pick<ModelSpec, 'headDim' | 'rope'>, seqLen = 0): Float64Array {
  const { rope, headDim } = spec;
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) throw new Error(`rope: head_dim must be a positive even integer, got ${headDim}`);
  if (!(rope.theta > 0)) throw new Error(`rope: theta must be positive, got ${rope.theta}`);
  const d = headDim;
  const sc = rope.scaling;
  let base = rope.theta;
  if (sc.type === 'dynamic') {
    const maxPos = sc.maxPositionEmbeddings;
    const len = seqLen > maxPos ? seqLen : maxPos;
    base = base * ((sc.factor * len) / maxPos - (sc.factor - 1)) ** (d / (d - 2));
  }
  const inv = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / base ** ((2 * i) / d);
  if (sc.type === 'linear') {
    for (let i = 0; i < inv.length; i++) inv[i] = inv[i]! / sc.factor;
  } else if (sc.type === 'llama3') {
    const { factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig } = sc;
    const lowWavelen = orig / low;
    const highWavelen = orig / high;
    for (let i = 0; i < inv.length; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] = f / factor;
      } else {
        const s = (orig / wavelen - low) / (high - low);
        inv[i] = ((1 - s) * f) / factor + s * f;
      }
    }
  }
  return inv;
}

/** Uploads inv_freq (rounded once to f32) for the rope kernel. */

/** Parameter count of the base model (embeddings counted once when tied). */
export function parameterCount(spec: ModelSpec): number {
  const { hidden: h, intermediate: i, headDim: d, nHeads, nKvHeads } = spec;
  const q = nHeads * d;
  const kv = nKvHeads * d;
  let perLayer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h;
  if (spec.qkvBias) perLayer += q + 2 * kv;
  if (spec.oBias) perLayer += h;
  if (spec.mlpBias) perLayer += 2 * i + h;
  if (spec.qkNorm) perLayer += 2 * d;
  const embed = spec.vocabSize * h;
  return spec.layers * perLayer + embed + (spec.tieWordEmbeddings ? 0 : embed) + h;
}
