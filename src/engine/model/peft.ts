/**
 * LoRA adapters in PEFT's format, so that `PeftModel.from_pretrained(base, dir)` loads what we export and we
 * load what PEFT (or XTuner, Unsloth, …) trained.
 *
 * On disk (what `save_pretrained` writes, see ../shared/reference/fixtures/<family>/adapter_init/):
 * - adapter_model.safetensors: for each adapted module at path P (e.g. `model.layers.3.self_attn.q_proj`)
 *   `base_model.model.P.lora_A.weight` [r, in] and `base_model.model.P.lora_B.weight` [out, r]; tensors
 *   in name order, header metadata {"format": "pt"}. The layer computes y = W x + (alpha / r) · B A x
 *   (alpha / √r with use_rslora).
 * - adapter_config.json: Python's json.dumps(config, indent=2, sort_keys=True), no trailing newline.
 *
 * Module names per family: llama/qwen2/qwen3 q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
 * internlm2 wqkv, wo, w1 (gate), w3 (up), w2 (down). InternLM2's wqkv gets ONE LoRA pair on the packed
 * projection: lora_B's rows follow wqkv's row layout (weights.ts wqkvRowRanges splits them into q/k/v).
 *
 * PEFT warns and runs the bare base model when keys are missing, so we check the exact key set both ways.
 */
import type { ByteSource } from '../../formats/bytes.ts';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../formats/safetensors.ts';
import type { ModelFamily, ModelSpec } from './config.ts';
import { packWqkv, unpackWqkv, type LayerParamKind } from './weights.ts';

export type LoraModule = 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj' | 'gate_proj' | 'up_proj' | 'down_proj' | 'wqkv' | 'wo' | 'w1' | 'w2' | 'w3';

interface ModuleInfo {
  /** Path inside a decoder layer. */
  readonly path: string;
  /** The internal parameters (weights.ts) whose product the module computes, in output-row order. */
  readonly params: readonly LayerParamKind[];
}

const LLAMA_MODULES: Readonly<Partial<Record<LoraModule, ModuleInfo>>> = {
  q_proj: { path: 'self_attn.q_proj', params: ['q'] },
  k_proj: { path: 'self_attn.k_proj', params: ['k'] },
  v_proj: { path: 'self_attn.v_proj', params: ['v'] },
  o_proj: { path: 'self_attn.o_proj', params: ['o'] },
  gate_proj: { path: 'mlp.gate_proj', params: ['gate'] },
  up_proj: { path: 'mlp.up_proj', params: ['up'] },
  down_proj: { path: 'mlp.down_proj', params: ['down'] },
};

const INTERNLM2_MODULES: Readonly<Partial<Record<LoraModule, ModuleInfo>>> = {
  // wqkv's rows are packed per KV group (see weights.ts); `params` names what they hold, not their order.
  wqkv: { path: 'attention.wqkv', params: ['q', 'k', 'v'] },
  wo: { path: 'attention.wo', params: ['o'] },
  w1: { path: 'feed_forward.w1', params: ['gate'] },
  w3: { path: 'feed_forward.w3', params: ['up'] },
  w2: { path: 'feed_forward.w2', params: ['down'] },
};

const modulesOf = (family: ModelFamily) => (family === 'internlm2' ? INTERNLM2_MODULES : LLAMA_MODULES);

/** Every LoRA target the family supports, in canonical order (all of them: the default, like XTuner's QLoRA configs). */
export function loraModules(family: ModelFamily): LoraModule[] {
  return Object.keys(modulesOf(family)) as LoraModule[];
}

function moduleInfo(family: ModelFamily, module: string): ModuleInfo {
  const info = modulesOf(family)[module as LoraModule];
  if (!info) throw new PeftError(`'${module}' is not a LoRA target of ${family} models (supported: ${loraModules(family).join(', ')})`);
  return info;
}

/** The internal parameters the module's LoRA delta adds to. */
export function loraModuleParams(family: ModelFamily, module: LoraModule): readonly LayerParamKind[] {
  return moduleInfo(family, module).params;
}

/** in/out features of a module's base weight (lora_A is [r, in], lora_B [out, r]). */
export function loraModuleShape(spec: ModelSpec, module: LoraModule): { in: number; out: number } {
  const { hidden: h, intermediate: i, headDim: d } = spec;
  const q = spec.nHeads * d;
  const kv = spec.nKvHeads * d;
  moduleInfo(spec.family, module);
  switch (module) {
    case 'q_proj':
      return { in: h, out: q };
    case 'k_proj':
    case 'v_proj':
      return { in: h, out: kv };
    case 'wqkv':
      return { in: h, out: q + 2 * kv };
    case 'o_proj':
    case 'wo':
      return { in: q, out: h };
    case 'gate_proj':
    case 'up_proj':
    case 'w1':
    case 'w3':
      return { in: h, out: i };
    case 'down_proj':
    case 'w2':
      return { in: i, out: h };
  }
}

/** `model.layers.{layer}.self_attn.q_proj` etc.: the module path in the HF model. */
export function peftModulePath(family: ModelFamily, layer: number, module: LoraModule): string {
  return `model.layers.${layer}.${moduleInfo(family, module).path}`;
}

/** The key PEFT saves a LoRA matrix under. */
export function peftKey(family: ModelFamily, layer: number, module: LoraModule, which: 'A' | 'B'): string {
  return `base_model.model.${peftModulePath(family, layer, module)}.lora_${which}.weight`;
}

/**
 * InternLM2's wqkv LoRA: lora_B [(nHeads + 2·nKv)·headDim, r] has wqkv's packed row layout, so its rows
 * split into the q, k and v parts exactly as the base weight's do (the delta of q is B_q·A, etc.).
 */
export function splitWqkvLoraB(spec: ModelSpec, loraB: Float32Array, r: number): { q: Float32Array; k: Float32Array; v: Float32Array } {
  return unpackWqkv(loraB, spec, r);
}

/** The inverse of splitWqkvLoraB: q/k/v parts of lora_B packed into wqkv's row layout. */
export function packWqkvLoraB(spec: ModelSpec, q: Float32Array, k: Float32Array, v: Float32Array, r: number): Float32Array {
  return packWqkv(q, k, v, spec, r);
}

export class PeftError extends Error {
  override name = 'PeftError';
}

export interface PeftLoraConfig {
  readonly r: number;
  readonly loraAlpha: number;
  readonly loraDropout: number;
  /** Resolved to this family's module names, canonical order. */
  readonly targetModules: readonly LoraModule[];
  readonly baseModelNameOrPath: string | null;
  readonly revision?: string | null;
  /** Scale alpha/√r instead of alpha/r. */
  readonly useRslora?: boolean;
  /** Only these layers carry LoRA (null/absent: all). */
  readonly layersToTransform?: readonly number[] | null;
}

export interface PeftTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface PeftAdapter {
  readonly config: PeftLoraConfig;
  /** PEFT key → tensor, for exactly the expected keys. */
  readonly tensors: Map<string, PeftTensor>;
  /** Keys in the file that the config does not call for (not loaded; PEFT would not use them either). */
  readonly unknownKeys: readonly string[];
  /** adapter_config.json as parsed, for the fields we carry but do not interpret (task_type, peft_version, …). */
  readonly rawConfig: Readonly<Record<string, unknown>>;
}

/** The multiplier of B·A. */
export function loraScale(config: Pick<PeftLoraConfig, 'r' | 'loraAlpha' | 'useRslora'>): number {
  return config.useRslora ? config.loraAlpha / Math.sqrt(config.r) : config.loraAlpha / config.r;
}

export interface ExpectedLoraTensor {
  readonly key: string;
  readonly layer: number;
  readonly module: LoraModule;
  readonly which: 'A' | 'B';
  readonly shape: readonly [number, number];
}

/** Every tensor an adapter with this config must hold, in PEFT's save order (sorted by key). */
export function expectedLoraTensors(spec: ModelSpec, config: Pick<PeftLoraConfig, 'r' | 'targetModules' | 'layersToTransform'>): ExpectedLoraTensor[] {
  const layers = config.layersToTransform ?? Array.from({ length: spec.layers }, (_, i) => i);
  const out: ExpectedLoraTensor[] = [];
  for (const layer of layers) {
    if (!Number.isInteger(layer) || layer < 0 || layer >= spec.layers) throw new PeftError(`layers_to_transform names layer ${layer}; the model has ${spec.layers}`);
    for (const module of config.targetModules) {
      const s = loraModuleShape(spec, module);
      out.push({ key: peftKey(spec.family, layer, module, 'A'), layer, module, which: 'A', shape: [config.r, s.in] });
      out.push({ key: peftKey(spec.family, layer, module, 'B'), layer, module, which: 'B', shape: [s.out, config.r] });
    }
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------------

/**
 * Parses and checks adapter_config.json against the model: only plain LoRA (no DoRA, no trained biases,
 * no modules_to_save, no per-module ranks) on this family's linear projections.
 */
export function parsePeftConfig(configJsonText: string, spec: ModelSpec, source = 'adapter_config.json'): { config: PeftLoraConfig; raw: Record<string, unknown> } {
  const fail = (msg: string): never => {
    throw new PeftError(`${source}: ${msg}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(configJsonText);
  } catch (e) {
    fail(`not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('not a JSON object');
  const c = raw as Record<string, unknown>;
  if (c.peft_type !== 'LORA') fail(`peft_type is ${JSON.stringify(c.peft_type)}; only "LORA" adapters are supported`);
  if (c.task_type !== undefined && c.task_type !== null && c.task_type !== 'CAUSAL_LM') fail(`task_type is ${JSON.stringify(c.task_type)}; expected "CAUSAL_LM"`);
  const r = c.r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 1 || r > 65536) fail(`r is ${JSON.stringify(r)}; expected a positive integer`);
  const alpha = c.lora_alpha ?? 8;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || alpha <= 0) fail(`lora_alpha is ${JSON.stringify(alpha)}; expected a positive number`);
  const dropout = c.lora_dropout ?? 0;
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) fail(`lora_dropout is ${JSON.stringify(dropout)}; expected a number in [0, 1)`);
  const unsupported = (key: string, ok: (v: unknown) => boolean, what: string) => {
    if (!ok(c[key])) fail(`${key} is ${JSON.stringify(c[key])}: ${what} is not supported`);
  };
  const nullish = (v: unknown) => v === undefined || v === null;
  const emptyObj = (v: unknown) => nullish(v) || (typeof v === 'object' && v !== null && Object.keys(v).length === 0);
  const emptyList = (v: unknown) => nullish(v) || (Array.isArray(v) && v.length === 0);
  unsupported('use_dora', (v) => nullish(v) || v === false, 'DoRA');
  unsupported('bias', (v) => nullish(v) || v === 'none', 'training biases');
  unsupported('lora_bias', (v) => nullish(v) || v === false, 'a LoRA bias');
  unsupported('modules_to_save', emptyList, 'fully trained extra modules');
  unsupported('fan_in_fan_out', (v) => nullish(v) || v === false, 'fan_in_fan_out (Conv1D weights)');
  unsupported('rank_pattern', emptyObj, 'a per-module rank');
  unsupported('alpha_pattern', emptyObj, 'a per-module alpha');
  unsupported('layer_replication', nullish, 'layer replication');
  unsupported('target_parameters', emptyList, 'LoRA on raw parameters');
  unsupported('exclude_modules', emptyList, 'excluding modules');
  unsupported('trainable_token_indices', nullish, 'training token embeddings');
  unsupported('use_qalora', (v) => nullish(v) || v === false, 'QALoRA');
  unsupported('alora_invocation_tokens', nullish, 'activated LoRA');

  let layersToTransform: number[] | null = null;
  const ltt = c.layers_to_transform;
  if (typeof ltt === 'number') layersToTransform = [ltt];
  else if (Array.isArray(ltt)) layersToTransform = ltt as number[];
  else if (!nullish(ltt)) fail(`layers_to_transform is ${JSON.stringify(ltt)}; expected a layer index or a list`);
  if (layersToTransform) {
    for (const l of layersToTransform) if (typeof l !== 'number' || !Number.isInteger(l) || l < 0 || l >= spec.layers) fail(`layers_to_transform names layer ${JSON.stringify(l)}; the model has ${spec.layers}`);
    layersToTransform = [...new Set(layersToTransform)].sort((a, b) => a - b);
  }
  const targetModules = resolveTargets(c.target_modules, spec, layersToTransform, fail);
  const base = c.base_model_name_or_path;
  if (!nullish(base) && typeof base !== 'string') fail(`base_model_name_or_path is ${JSON.stringify(base)}, not a string`);
  const revision = c.revision;
  if (!nullish(revision) && typeof revision !== 'string') fail(`revision is ${JSON.stringify(revision)}, not a string`);
  const rslora = c.use_rslora ?? false;
  if (typeof rslora !== 'boolean') fail(`use_rslora is ${JSON.stringify(rslora)}, not true or false`);
  const config: PeftLoraConfig = {
    r: r as number,
    loraAlpha: alpha as number,
    loraDropout: dropout as number,
    targetModules,
    baseModelNameOrPath: (base as string | null | undefined) ?? null,
    revision: (revision as string | null | undefined) ?? null,
    useRslora: rslora as boolean,
    layersToTransform,
  };
  return { config, raw: c };
}

/**
 * target_modules as PEFT matches them: a list entry matches a module whose full path equals it or ends
 * with "." + entry; a string is a regular expression that must match the whole path; "all-linear" is
 * every linear projection except the output head. Entries that match nothing are errors (PEFT raises
 * too), and so are patterns that pick a module in some layers only (beyond layers_to_transform).
 */
function resolveTargets(tm: unknown, spec: ModelSpec, layersToTransform: readonly number[] | null, fail: (m: string) => never): LoraModule[] {
  const all = loraModules(spec.family);
  if (tm === 'all-linear') return all;
  const layers = layersToTransform ?? Array.from({ length: spec.layers }, (_, i) => i);
  let matches: (path: string) => boolean;
  const unmatched = new Set<string>();
  if (typeof tm === 'string') {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${tm})$`);
    } catch (e) {
      return fail(`target_modules ${JSON.stringify(tm)} is not a valid regular expression (${(e as Error).message})`);
    }
    matches = (p) => re.test(p);
  } else if (Array.isArray(tm) && tm.length > 0 && tm.every((t) => typeof t === 'string')) {
    const list = tm as string[];
    for (const t of list) unmatched.add(t);
    matches = (p) => {
      let hit = false;
      for (const t of list) {
        if (p === t || p.endsWith(`.${t}`)) {
          unmatched.delete(t);
          hit = true;
        }
      }
      return hit;
    };
  } else {
    return fail(`target_modules is ${JSON.stringify(tm)}; expected a non-empty list of module names or a regular expression`);
  }
  const chosen: LoraModule[] = [];
  for (const m of all) {
    const hits = layers.filter((l) => matches(peftModulePath(spec.family, l, m)));
    if (hits.length === 0) continue;
    if (hits.length !== layers.length) fail(`target_modules ${JSON.stringify(tm)} selects ${m} in layers ${hits.join(', ')} only; per-layer targets are not supported`);
    chosen.push(m);
  }
  if (unmatched.size > 0) {
    fail(`target_modules ${[...unmatched].map((t) => JSON.stringify(t)).join(', ')} match no LoRA-capable module of this ${spec.family} model (supported: ${all.join(', ')})`);
  }
  if (chosen.length === 0) fail(`target_modules ${JSON.stringify(tm)} selects no module of this ${spec.family} model (supported: ${all.join(', ')})`);
  return chosen;
}

/**
 * Reads adapter_config.json + adapter_model.safetensors and checks them against the base model: every
 * expected key present with shape [r, in] / [out, r]; mismatches name the tensor and both shapes. Keys the
 * config does not call for are returned in `unknownKeys`.
 */
export async function readPeftAdapter(configJsonText: string, safetensors: ByteSource, spec: ModelSpec): Promise<PeftAdapter> {
  const { config, raw } = parsePeftConfig(configJsonText, spec);
  const file = await SafetensorsFile.open(safetensors);
  const expected = expectedLoraTensors(spec, config);
  const expectedKeys = new Set(expected.map((e) => e.key));
  const problems: string[] = [];
  const tensors = new Map<string, PeftTensor>();
  for (const e of expected) {
    const entry = file.entries.get(e.key);
    if (!entry) {
      problems.push(`missing '${e.key}' (expected shape [${e.shape.join(', ')}])`);
      continue;
    }
    if (entry.shape.length !== 2 || entry.shape[0] !== e.shape[0] || entry.shape[1] !== e.shape[1]) {
      problems.push(`'${e.key}' has shape [${entry.shape.join(', ')}], but the base model needs [${e.shape.join(', ')}]`);
      continue;
    }
    if (entry.dtype !== 'F32' && entry.dtype !== 'F16' && entry.dtype !== 'BF16') {
      problems.push(`'${e.key}' is ${entry.dtype}; expected F32, F16 or BF16`);
      continue;
    }
    tensors.set(e.key, { shape: e.shape, data: await file.float32(e.key) });
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 12).join('\n  ');
    const more = problems.length > 12 ? `\n  … and ${problems.length - 12} more` : '';
    throw new PeftError(`${safetensors.name}: the adapter does not fit this ${spec.architecture} model (${problems.length} problem${problems.length > 1 ? 's' : ''}):\n  ${shown}${more}`);
  }
  const unknownKeys = file.names.filter((k) => !expectedKeys.has(k)).sort();
  return { config, tensors, unknownKeys, rawConfig: raw };
}

// ---------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------

/** The PEFT release whose save_pretrained output we reproduce field for field (the reference fixtures'). */
export const PEFT_FORMAT_VERSION = '0.21.0';

/** A float that Python's json writes with a decimal point (0.0, 0.05, 1e-05). */
class PyFloat {
  constructor(readonly value: number) {}
}

type PyJson = null | boolean | number | string | PyFloat | readonly PyJson[] | { readonly [k: string]: PyJson };

/** Python's repr() of a float: shortest round-trip digits, fixed notation for 1e-4 ≤ |x| < 1e16. */
export function pythonFloatRepr(x: number): string {
  if (!Number.isFinite(x)) throw new RangeError(`cannot write ${x} as JSON`);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expStr] = x.toExponential().split('e') as [string, string];
  const exp = Number(expStr);
  const neg = mant.startsWith('-');
  const digits = mant.replace('-', '').replace('.', '');
  const sign = neg ? '-' : '';
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      const intPart = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
      const frac = digits.slice(exp + 1) || '0';
      return `${sign}${intPart}.${frac}`;
    }
    return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  }
  const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  const e = Math.abs(exp).toString().padStart(2, '0');
  return `${sign}${m}e${exp < 0 ? '-' : '+'}${e}`;
}

/** json.dumps(value, indent=2, sort_keys=True) with Python's default ensure_ascii. */
export function pythonJsonDumps(value: PyJson, indent = 2, level = 0): string {
  const pad = (n: number) => ' '.repeat(indent * n);
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) return pythonFloatRepr(value);
    return String(value);
  }
  if (typeof value === 'string') return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => pad(level + 1) + pythonJsonDumps(v, indent, level + 1)).join(',\n')}\n${pad(level)}]`;
  }
  const obj = value as { readonly [k: string]: PyJson };
  const keys = Object.keys(obj).sort();
  if (keys.length === 0) return '{}';
  return `{\n${keys.map((k) => `${pad(level + 1)}${pythonJsonDumps(k, indent, level + 1)}: ${pythonJsonDumps(obj[k]!, indent, level + 1)}`).join(',\n')}\n${pad(level)}}`;
}

/** adapter_config.json exactly as PEFT 0.21's LoraConfig.save_pretrained writes it for plain LoRA. */
export function peftConfigJson(spec: ModelSpec, config: PeftLoraConfig): string {
  if (!Number.isInteger(config.r) || config.r < 1) throw new PeftError(`r is ${config.r}; expected a positive integer`);
  if (!(config.loraAlpha > 0)) throw new PeftError(`lora_alpha is ${config.loraAlpha}; expected a positive number`);
  if (!(config.loraDropout >= 0 && config.loraDropout < 1)) throw new PeftError(`lora_dropout is ${config.loraDropout}; expected [0, 1)`);
  const known = new Set<string>(loraModules(spec.family));
  for (const m of config.targetModules) if (!known.has(m)) throw new PeftError(`'${m}' is not a LoRA target of ${spec.family} models (supported: ${[...known].join(', ')})`);
  const cfg: Record<string, PyJson> = {
    alora_invocation_tokens: null,
    alpha_pattern: {},
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: config.baseModelNameOrPath,
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    kasa_config: null,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: config.layersToTransform ? [...config.layersToTransform] : null,
    loftq_config: {},
    // PEFT keeps the type it was given; we write an integer when alpha is one.
    lora_alpha: Number.isInteger(config.loraAlpha) ? config.loraAlpha : new PyFloat(config.loraAlpha),
    lora_bias: false,
    lora_dropout: new PyFloat(config.loraDropout),
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    monteclora_config: null,
    peft_type: 'LORA',
    peft_version: PEFT_FORMAT_VERSION,
    qalora_group_size: 16,
    r: config.r,
    rank_pattern: {},
    revision: config.revision ?? null,
    target_modules: [...config.targetModules],
    target_parameters: null,
    task_type: 'CAUSAL_LM',
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: false,
    use_qalora: false,
    use_rslora: config.useRslora ?? false,
    velora_config: null,
  };
  return pythonJsonDumps(cfg);
}

/**
 * adapter_config.json + adapter_model.safetensors as PEFT writes them. `tensors` must hold exactly the
 * expected keys with the expected shapes (anything else is an error: a partial adapter would load
 * silently as the bare base model).
 */
export function writePeftAdapter(spec: ModelSpec, config: PeftLoraConfig, tensors: ReadonlyMap<string, PeftTensor>): { adapterConfigJson: string; adapterSafetensors: Uint8Array } {
  const adapterConfigJson = peftConfigJson(spec, config);
  const expected = expectedLoraTensors(spec, config);
  const problems: string[] = [];
  const out: TensorToWrite[] = [];
  for (const e of expected) {
    const t = tensors.get(e.key);
    if (!t) {
      problems.push(`missing '${e.key}' [${e.shape.join(', ')}]`);
      continue;
    }
    const n = e.shape[0] * e.shape[1];
    if (t.shape.length !== 2 || t.shape[0] !== e.shape[0] || t.shape[1] !== e.shape[1] || t.data.length !== n) {
      problems.push(`'${e.key}' has shape [${t.shape.join(', ')}] (${t.data.length} values), expected [${e.shape.join(', ')}]`);
      continue;
    }
    out.push({ name: e.key, dtype: 'F32', shape: e.shape, data: t.data });
  }
  const expectedKeys = new Set(expected.map((e) => e.key));
  for (const k of tensors.keys()) if (!expectedKeys.has(k)) problems.push(`unexpected tensor '${k}' (not called for by the config)`);
  if (problems.length > 0) throw new PeftError(`cannot write the adapter (${problems.length} problem${problems.length > 1 ? 's' : ''}):\n  ${problems.slice(0, 12).join('\n  ')}`);
  return { adapterConfigJson, adapterSafetensors: writeSafetensors(out, { format: 'pt' }) };
}
