/**
 * The model's parameters under one set of internal names, and where each comes from in a Hugging Face
 * checkpoint of each family.
 *
 * Internal names (shapes are [rows, cols] = [out, in] as in PyTorch's nn.Linear):
 *   embed [vocab, hidden]                      final_norm [hidden]          lm_head [vocab, hidden]
 *   layers.{i}.attn_norm [hidden]              layers.{i}.mlp_norm [hidden]
 *   layers.{i}.q [nHeads·headDim, hidden]      layers.{i}.k, .v [nKvHeads·headDim, hidden]
 *   layers.{i}.o [hidden, nHeads·headDim]      layers.{i}.q_bias/.k_bias/.v_bias/.o_bias (when the family has them)
 *   layers.{i}.q_norm, .k_norm [headDim] (qwen3)
 *   layers.{i}.gate, .up [intermediate, hidden]   layers.{i}.down [hidden, intermediate]   (+ _bias with mlp_bias)
 *
 * InternLM2 packs q, k and v into one `attention.wqkv` whose rows are grouped per KV head:
 *   for each kv head g: [the q heads of group g (nHeads/nKvHeads of them)…, k head g, v head g], headDim rows each.
 * So q, k and v are each a list of row ranges of wqkv (wqkvRowRanges), and CheckpointIndex reads them as
 * such; packWqkv is the inverse (for merged exports and for tests).
 *
 * CheckpointIndex opens a single `model.safetensors` or a sharded checkpoint (`model.safetensors.index.json`
 * → shard files), checks every expected tensor's presence and shape up front, and then reads one parameter
 * (or a window of its rows) at a time as float32, so the whole model is never in memory.
 */
import type { ByteSource } from '../../formats/bytes.ts';
import { SAFETENSORS_DTYPE_BYTES, SafetensorsError, SafetensorsFile, toFloat32, type SafetensorsDType } from '../../formats/safetensors.ts';
import type { ModelFamily, ModelSpec } from './config.ts';

export type LayerParamKind =
  | 'attn_norm'
  | 'q'
  | 'k'
  | 'v'
  | 'q_bias'
  | 'k_bias'
  | 'v_bias'
  | 'o'
  | 'o_bias'
  | 'q_norm'
  | 'k_norm'
  | 'mlp_norm'
  | 'gate'
  | 'up'
  | 'down'
  | 'gate_bias'
  | 'up_bias'
  | 'down_bias';

export type GlobalParamKind = 'embed' | 'final_norm' | 'lm_head';

export interface ParamDesc {
  /** 'embed', 'final_norm', 'lm_head' or 'layers.{i}.{kind}'. */
  readonly name: string;
  readonly kind: LayerParamKind | GlobalParamKind;
  /** The layer index, or null for embed / final_norm / lm_head. */
  readonly layer: number | null;
  readonly shape: readonly number[];
}

export const layerParamName = (layer: number, kind: LayerParamKind): string => `layers.${layer}.${kind}`;

/** The kinds present in every layer of a model of this spec, in canonical order. */
export function layerParamKinds(spec: ModelSpec): LayerParamKind[] {
  const kinds: LayerParamKind[] = ['attn_norm', 'q', 'k', 'v'];
  if (spec.qkvBias) kinds.push('q_bias', 'k_bias', 'v_bias');
  if (spec.qkNorm) kinds.push('q_norm', 'k_norm');
  kinds.push('o');
  if (spec.oBias) kinds.push('o_bias');
  kinds.push('mlp_norm', 'gate', 'up', 'down');
  if (spec.mlpBias) kinds.push('gate_bias', 'up_bias', 'down_bias');
  return kinds;
}

/** The shape of one layer parameter. */
export function layerParamShape(spec: ModelSpec, kind: LayerParamKind): number[] {
  const { hidden: h, intermediate: i, headDim: d } = spec;
  const q = spec.nHeads * d;
  const kv = spec.nKvHeads * d;
  switch (kind) {
    case 'attn_norm':
    case 'mlp_norm':
    case 'o_bias':
    case 'down_bias':
      return [h];
    case 'q':
      return [q, h];
    case 'k':
    case 'v':
      return [kv, h];
    case 'q_bias':
      return [q];
    case 'k_bias':
    case 'v_bias':
      return [kv];
    case 'o':
      return [h, q];
    case 'q_norm':
    case 'k_norm':
      return [d];
    case 'gate':
    case 'up':
      return [i, h];
    case 'gate_bias':
    case 'up_bias':
      return [i];
    case 'down':
      return [h, i];
  }
}

/** Every parameter of the model in canonical order: embed, layer 0 …, final_norm, lm_head. */
export function modelParams(spec: ModelSpec): ParamDesc[] {
  const out: ParamDesc[] = [{ name: 'embed', kind: 'embed', layer: null, shape: [spec.vocabSize, spec.hidden] }];
  const kinds = layerParamKinds(spec);
  for (let l = 0; l < spec.layers; l++) {
    for (const kind of kinds) out.push({ name: layerParamName(l, kind), kind, layer: l, shape: layerParamShape(spec, kind) });
  }
  out.push({ name: 'final_norm', kind: 'final_norm', layer: null, shape: [spec.hidden] });
  out.push({ name: 'lm_head', kind: 'lm_head', layer: null, shape: [spec.vocabSize, spec.hidden] });
  return out;
}

// ---------------------------------------------------------------------------------------------------
// InternLM2's packed wqkv
// ---------------------------------------------------------------------------------------------------

/** Rows [start, start + count) of a tensor (elements, for a 1-D tensor such as a bias). */
export interface RowRange {
  readonly start: number;
  readonly count: number;
}

export interface WqkvLayout {
  /** Row ranges of wqkv that, concatenated in order, form q (rows of q heads 0..nHeads-1), k and v. */
  readonly q: readonly RowRange[];
  readonly k: readonly RowRange[];
  readonly v: readonly RowRange[];
  /** Total rows of wqkv: (nHeads + 2·nKvHeads)·headDim. */
  readonly rows: number;
}

/**
 * Where q, k and v live in InternLM2's wqkv: KV group g occupies rows [g·(G+2)·d, (g+1)·(G+2)·d) with
 * G = nHeads/nKvHeads; inside it, the G query heads (query head g·G + j at offset j·d), then k head g,
 * then v head g. Adjacent ranges are merged (with one KV head, q is a single range).
 */
export function wqkvRowRanges(nHeads: number, nKvHeads: number, headDim: number): WqkvLayout {
  if (nHeads % nKvHeads !== 0) throw new RangeError(`wqkv: ${nHeads} query heads are not a multiple of ${nKvHeads} KV heads`);
  const g = nHeads / nKvHeads;
  const group = (g + 2) * headDim;
  const q: RowRange[] = [];
  const k: RowRange[] = [];
  const v: RowRange[] = [];
  for (let kv = 0; kv < nKvHeads; kv++) {
    pushRange(q, kv * group, g * headDim);
    pushRange(k, kv * group + g * headDim, headDim);
    pushRange(v, kv * group + (g + 1) * headDim, headDim);
  }
  return { q, k, v, rows: nKvHeads * group };
}

function pushRange(list: RowRange[], start: number, count: number): void {
  const last = list[list.length - 1];
  if (last && last.start + last.count === start) list[list.length - 1] = { start: last.start, count: last.count + count };
  else list.push({ start, count });
}

/** Concatenates the given row ranges of a row-major [rows, cols] matrix. */
export function gatherRows(src: Float32Array, cols: number, ranges: readonly RowRange[]): Float32Array {
  const total = ranges.reduce((a, r) => a + r.count, 0);
  const out = new Float32Array(total * cols);
  let at = 0;
  for (const r of ranges) {
    if ((r.start + r.count) * cols > src.length) throw new RangeError(`gatherRows: rows [${r.start}, ${r.start + r.count}) are past the end (${src.length / cols} rows)`);
    out.set(src.subarray(r.start * cols, (r.start + r.count) * cols), at);
    at += r.count * cols;
  }
  return out;
}

/** Writes `part` (rows in range order) into `dst` at the given row ranges: the inverse of gatherRows. */
export function scatterRows(dst: Float32Array, cols: number, ranges: readonly RowRange[], part: Float32Array): void {
  let at = 0;
  for (const r of ranges) {
    dst.set(part.subarray(at, at + r.count * cols), r.start * cols);
    at += r.count * cols;
  }
  if (at !== part.length) throw new RangeError(`scatterRows: ${part.length / cols} rows given for ranges holding ${at / cols}`);
}

type HeadDims = Pick<ModelSpec, 'nHeads' | 'nKvHeads' | 'headDim'>;

/** Splits a packed wqkv [(nHeads+2·nKv)·d, cols] (or its bias, cols = 1) into q, k, v. */
export function unpackWqkv(wqkv: Float32Array, dims: HeadDims, cols: number): { q: Float32Array; k: Float32Array; v: Float32Array } {
  const layout = wqkvRowRanges(dims.nHeads, dims.nKvHeads, dims.headDim);
  if (wqkv.length !== layout.rows * cols) throw new RangeError(`unpackWqkv: ${wqkv.length} values, expected ${layout.rows}×${cols}`);
  return { q: gatherRows(wqkv, cols, layout.q), k: gatherRows(wqkv, cols, layout.k), v: gatherRows(wqkv, cols, layout.v) };
}

/** Packs q [nHeads·d, cols], k and v [nKv·d, cols] into InternLM2's wqkv layout. */
export function packWqkv(q: Float32Array, k: Float32Array, v: Float32Array, dims: HeadDims, cols: number): Float32Array {
  const layout = wqkvRowRanges(dims.nHeads, dims.nKvHeads, dims.headDim);
  const kvRows = dims.nKvHeads * dims.headDim;
  if (q.length !== dims.nHeads * dims.headDim * cols || k.length !== kvRows * cols || v.length !== kvRows * cols) {
    throw new RangeError(`packWqkv: q/k/v have ${q.length}/${k.length}/${v.length} values for ${dims.nHeads}/${dims.nKvHeads} heads of ${dims.headDim}×${cols}`);
  }
  const out = new Float32Array(layout.rows * cols);
  scatterRows(out, cols, layout.q, q);
  scatterRows(out, cols, layout.k, k);
  scatterRows(out, cols, layout.v, v);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Hugging Face checkpoint names
// ---------------------------------------------------------------------------------------------------

/** Where an internal parameter comes from: a whole HF tensor, or some of its rows (InternLM2 wqkv). */
export interface ParamSource {
  readonly tensor: string;
  /** Null: the whole tensor. Otherwise these rows, concatenated in order. */
  readonly rows: readonly RowRange[] | null;
  /** The shape the HF tensor must have. */
  readonly tensorShape: readonly number[];
}

const LLAMA_LAYER_NAMES: Record<LayerParamKind, string> = {
  attn_norm: 'input_layernorm.weight',
  q: 'self_attn.q_proj.weight',
  k: 'self_attn.k_proj.weight',
  v: 'self_attn.v_proj.weight',
  q_bias: 'self_attn.q_proj.bias',
  k_bias: 'self_attn.k_proj.bias',
  v_bias: 'self_attn.v_proj.bias',
  o: 'self_attn.o_proj.weight',
  o_bias: 'self_attn.o_proj.bias',
  q_norm: 'self_attn.q_norm.weight',
  k_norm: 'self_attn.k_norm.weight',
  mlp_norm: 'post_attention_layernorm.weight',
  gate: 'mlp.gate_proj.weight',
  up: 'mlp.up_proj.weight',
  down: 'mlp.down_proj.weight',
  gate_bias: 'mlp.gate_proj.bias',
  up_bias: 'mlp.up_proj.bias',
  down_bias: 'mlp.down_proj.bias',
};

/** InternLM2's names; q/k/v (and their biases) come from wqkv and are handled apart. */
const INTERNLM2_LAYER_NAMES: Partial<Record<LayerParamKind, string>> = {
  attn_norm: 'attention_norm.weight',
  o: 'attention.wo.weight',
  o_bias: 'attention.wo.bias',
  mlp_norm: 'ffn_norm.weight',
  gate: 'feed_forward.w1.weight',
  up: 'feed_forward.w3.weight',
  down: 'feed_forward.w2.weight',
};

const GLOBAL_NAMES: Record<'llama' | 'internlm2', Record<GlobalParamKind, string>> = {
  llama: { embed: 'model.embed_tokens.weight', final_norm: 'model.norm.weight', lm_head: 'lm_head.weight' },
  internlm2: { embed: 'model.tok_embeddings.weight', final_norm: 'model.norm.weight', lm_head: 'output.weight' },
};

const namesOf = (family: ModelFamily): 'llama' | 'internlm2' => (family === 'internlm2' ? 'internlm2' : 'llama');

/**
 * The HF tensor(s) one internal parameter is read from. For lm_head of a tied model this is the
 * embedding (CheckpointIndex prefers that; see its `tied`).
 */
export function hfSource(spec: ModelSpec, p: ParamDesc): ParamSource {
  const fam = namesOf(spec.family);
  if (p.layer === null) {
    const kind = p.kind as GlobalParamKind;
    return { tensor: GLOBAL_NAMES[fam][kind], rows: null, tensorShape: p.shape };
  }
  const kind = p.kind as LayerParamKind;
  const prefix = `model.layers.${p.layer}.`;
  if (fam === 'llama') return { tensor: prefix + LLAMA_LAYER_NAMES[kind], rows: null, tensorShape: p.shape };
  if (kind === 'q' || kind === 'k' || kind === 'v' || kind === 'q_bias' || kind === 'k_bias' || kind === 'v_bias') {
    const layout = wqkvRowRanges(spec.nHeads, spec.nKvHeads, spec.headDim);
    const isBias = kind.endsWith('_bias');
    const which = kind[0] as 'q' | 'k' | 'v';
    return {
      tensor: `${prefix}attention.wqkv.${isBias ? 'bias' : 'weight'}`,
      rows: layout[which],
      tensorShape: isBias ? [layout.rows] : [layout.rows, spec.hidden],
    };
  }
  const name = INTERNLM2_LAYER_NAMES[kind];
  if (name === undefined) throw new Error(`internlm2 checkpoints have no '${kind}' parameter`);
  return { tensor: prefix + name, rows: null, tensorShape: p.shape };
}

// ---------------------------------------------------------------------------------------------------
// Reading a checkpoint
// ---------------------------------------------------------------------------------------------------

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

/** Opens a file of the checkpoint folder by name ('model.safetensors', 'model-00001-of-00002.safetensors', …). */
export type FileOpener = (fileName: string) => Promise<ByteSource>;

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

export interface CheckpointParam extends ParamDesc {
  readonly source: ParamSource;
  /** The shard file the source tensor is in. */
  readonly file: string;
  readonly dtype: SafetensorsDType;
  /** lm_head of a tied model: read from the embedding (the same tensor; the engine may share its buffer). */
  readonly tied: boolean;
}

const READABLE_DTYPES: ReadonlySet<SafetensorsDType> = new Set(['F32', 'F16', 'BF16']);

export class CheckpointIndex {
  private constructor(
    readonly spec: ModelSpec,
    readonly params: readonly CheckpointParam[],
    private readonly files: ReadonlyMap<string, SafetensorsFile>,
    /** HF tensors in the checkpoint that no parameter uses (e.g. rotary inv_freq buffers, an lm_head a tied model ignores). */
    readonly unusedTensors: readonly string[],
  ) {}

  /**
   * Opens the checkpoint through `open`. `fileNames`, when known (a directory listing, the Hub's file
   * list), decides between the index and the single file; otherwise the index is tried first.
   */
  static async open(spec: ModelSpec, open: FileOpener, fileNames?: readonly string[]): Promise<CheckpointIndex> {
    const files = new Map<string, SafetensorsFile>();
    const openShard = async (name: string): Promise<SafetensorsFile> => {
      let f = files.get(name);
      if (!f) {
        f = await SafetensorsFile.open(await open(name));
        files.set(name, f);
      }
      return f;
    };
    // tensor name → shard file name
    const where = new Map<string, string>();
    const useIndex = fileNames ? fileNames.includes(INDEX_FILE) : undefined;
    let indexJson: string | null = null;
    if (useIndex === true || useIndex === undefined) {
      try {
        const src = await open(INDEX_FILE);
        indexJson = new TextDecoder().decode(await src.read(0, src.size));
      } catch (e) {
        if (useIndex === true) throw new CheckpointError(`${INDEX_FILE}: cannot be read (${(e as Error).message})`);
      }
    }
    if (indexJson !== null) {
      for (const [tensor, shard] of parseIndex(indexJson)) where.set(tensor, shard);
      for (const shard of new Set(where.values())) await openShard(shard);
      for (const [tensor, shard] of where) {
        if (!files.get(shard)!.entries.has(tensor)) throw new CheckpointError(`${INDEX_FILE} maps '${tensor}' to ${shard}, which has no such tensor`);
      }
    } else {
      if (fileNames && !fileNames.includes(SINGLE_FILE)) {
        throw new CheckpointError(`no ${SINGLE_FILE} or ${INDEX_FILE} among the checkpoint's files (${fileNames.join(', ') || 'none'})`);
      }
      let single: SafetensorsFile;
      try {
        single = await openShard(SINGLE_FILE);
      } catch (e) {
        throw new CheckpointError(`neither ${INDEX_FILE} nor ${SINGLE_FILE} could be opened (${(e as Error).message})`);
      }
      for (const name of single.names) where.set(name, SINGLE_FILE);
    }

    const problems: string[] = [];
    const used = new Set<string>();
    const params: CheckpointParam[] = [];
    const embedName = hfSource(spec, { name: 'embed', kind: 'embed', layer: null, shape: [] }).tensor;
    for (const p of modelParams(spec)) {
      let source = hfSource(spec, p);
      const tied = p.kind === 'lm_head' && spec.tieWordEmbeddings;
      if (tied) source = { tensor: embedName, rows: null, tensorShape: p.shape };
      const file = where.get(source.tensor);
      if (file === undefined) {
        problems.push(`missing tensor '${source.tensor}' (for ${p.name}), expected shape [${source.tensorShape.join(', ')}]`);
        continue;
      }
      const entry = files.get(file)!.entry(source.tensor);
      if (!sameShape(entry.shape, source.tensorShape)) {
        problems.push(`tensor '${source.tensor}' in ${file} has shape [${entry.shape.join(', ')}], expected [${source.tensorShape.join(', ')}] (for ${p.name})`);
        continue;
      }
      if (!READABLE_DTYPES.has(entry.dtype)) {
        problems.push(`tensor '${source.tensor}' in ${file} is ${entry.dtype}; only F32, F16 and BF16 weights are supported`);
        continue;
      }
      used.add(source.tensor);
      params.push({ ...p, source, file, dtype: entry.dtype, tied });
    }
    if (problems.length > 0) {
      const shown = problems.slice(0, 12).join('\n  ');
      const more = problems.length > 12 ? `\n  … and ${problems.length - 12} more` : '';
      throw new CheckpointError(`the checkpoint does not fit this ${spec.architecture} config (${problems.length} problem${problems.length > 1 ? 's' : ''}):\n  ${shown}${more}`);
    }
    const unused = [...where.keys()].filter((t) => !used.has(t)).sort();
    return new CheckpointIndex(spec, params, files, unused);
  }

  /** The shard files in use. */
  get fileNames(): string[] {
    return [...this.files.keys()];
  }

  param(name: string): CheckpointParam {
    const p = this.params.find((x) => x.name === name);
    if (!p) throw new CheckpointError(`no parameter named '${name}' in this ${this.spec.family} model`);
    return p;
  }

  /** Bytes of the source tensors as stored (for progress reporting); tied lm_head counted once. */
  get storedBytes(): number {
    let n = 0;
    for (const p of this.params) {
      if (p.tied) continue;
      n += (p.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[p.dtype]);
    }
    return n;
  }

  /** One parameter as float32 in its internal shape. */
  async read(name: string): Promise<Float32Array> {
    const p = this.param(name);
    return this.readRows(name, 0, p.shape[0]!);
  }

  /**
   * Rows [start, start + count) of a parameter (elements, for 1-D ones) as float32: what a quantizer
   * taking rows in pieces asks for. Only the bytes of those rows are read.
   */
  async readRows(name: string, start: number, count: number): Promise<Float32Array> {
    const p = this.param(name);
    const rows = p.shape[0]!;
    const cols = p.shape.length > 1 ? p.shape.slice(1).reduce((a, b) => a * b, 1) : 1;
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > rows) {
      throw new RangeError(`${name}: rows [${start}, ${start + count}) are outside its ${rows} rows`);
    }
    const file = this.files.get(p.file)!;
    const entry = file.entry(p.source.tensor);
    const bytesPerRow = cols * SAFETENSORS_DTYPE_BYTES[entry.dtype];
    const out = new Float32Array(count * cols);
    const ranges = p.source.rows ?? [{ start: 0, count: rows }];
    // Walk the logical rows: logical row `at` of the parameter is row (range.start + at − rangeBase) of the tensor.
    let rangeBase = 0;
    for (const r of ranges) {
      const lo = Math.max(start, rangeBase);
      const hi = Math.min(start + count, rangeBase + r.count);
      if (lo < hi) {
        const tensorRow = r.start + (lo - rangeBase);
        const bytes = await file.source.read(file.dataOffset + entry.begin + tensorRow * bytesPerRow, (hi - lo) * bytesPerRow);
        const values = toFloat32(bytes, entry.dtype, `${p.file}: tensor '${p.source.tensor}'`);
        // Weights from strangers: a NaN or ∞ would poison every output, so it stops the load by name.
        for (let i = 0; i < values.length; i++) {
          if (!Number.isFinite(values[i]!)) throw new SafetensorsError(`${p.file}: tensor '${p.source.tensor}' holds a NaN or infinite value (row ${tensorRow + Math.floor(i / cols)}, column ${i % cols}): the file is damaged or the model diverged`);
        }
        out.set(values, (lo - start) * cols);
      }
      rangeBase += r.count;
      if (rangeBase >= start + count) break;
    }
    return out;
  }

  /** Every parameter in canonical order, one at a time (tied lm_head included, read again from the embedding). */
  async *tensors(options: { skipTied?: boolean } = {}): AsyncGenerator<{ param: CheckpointParam; data: Float32Array }> {
    for (const param of this.params) {
      if (options.skipTied && param.tied) continue;
      yield { param, data: await this.read(param.name) };
    }
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Parses model.safetensors.index.json: {metadata?, weight_map: {tensor: shard file}}. */
export function parseIndex(text: string): Map<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`${INDEX_FILE}: not valid JSON (${(e as Error).message})`);
  }
  const wm = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new CheckpointError(`${INDEX_FILE}: no 'weight_map' object`);
  const out = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard === '' || shard.includes('/') || shard.includes('\\') || shard.startsWith('.')) {
      throw new CheckpointError(`${INDEX_FILE}: weight_map['${tensor}'] is ${JSON.stringify(shard)}, not a file name in the checkpoint folder`);
    }
    out.set(tensor, shard);
  }
  if (out.size === 0) throw new CheckpointError(`${INDEX_FILE}: weight_map is empty`);
  return out;
}

/** The HF checkpoint tensor names (and row ranges) of every internal parameter: what a merged export writes back. */
export function hfCheckpointLayout(spec: ModelSpec): Array<{ param: ParamDesc; source: ParamSource }> {
  return modelParams(spec)
    .filter((p) => !(p.kind === 'lm_head' && spec.tieWordEmbeddings))
    .map((param) => ({ param, source: hfSource(spec, param) }));
}
