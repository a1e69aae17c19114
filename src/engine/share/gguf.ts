/**
 * GGUF (llama.cpp's file format, version 3): header, key/value metadata, tensor infos, data aligned to
 * `general.alignment` (32 by default). Plus the LoRA adapter conversion llama.cpp's convert_lora_to_gguf.py
 * does, and an Ollama Modelfile.
 *
 * LoRA in GGUF: `general.type` = "adapter", `adapter.type` = "lora", `adapter.lora.alpha` (f32); for each
 * adapted base tensor T (its GGUF name, e.g. blk.0.attn_q.weight) `T.lora_a` with numpy shape [r, in] and
 * `T.lora_b` [out, r] (GGUF lists dimensions innermost first: ne = [in, r] and [r, out]). The transforms
 * convert_hf_to_gguf.py applies to the base weight's rows are applied to lora_b (A is unchanged):
 * - llama: q_proj rows permuted with n_head, k_proj with n_kv_head (LlamaModel.permute: per head, the two
 *   rotary halves interleaved);
 * - internlm2: wqkv split per KV group into q/k/v (each sharing lora_a), then q and k permuted like llama's;
 * - qwen2/qwen3: names only.
 */
import type { ModelFamily, ModelSpec } from '../model/config.ts';
import { peftKey, type LoraModule, type PeftLoraConfig, type PeftTensor } from '../model/peft.ts';
import { gatherRows, wqkvRowRanges } from '../model/weights.ts';
import { f16ToF32 } from '../../formats/safetensors.ts';
import { f32ToF16Bits } from './dtype.ts';

export class GgufError extends Error {
  override name = 'GgufError';
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_DEFAULT_ALIGNMENT = 32;

export enum GgufValueType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}

/** ggml tensor types we write and read. */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
}

export type GgufValue =
  | { type: GgufValueType.STRING; value: string }
  | { type: GgufValueType.FLOAT32 | GgufValueType.FLOAT64 | GgufValueType.UINT8 | GgufValueType.INT8 | GgufValueType.UINT16 | GgufValueType.INT16 | GgufValueType.UINT32 | GgufValueType.INT32; value: number }
  | { type: GgufValueType.UINT64 | GgufValueType.INT64; value: bigint }
  | { type: GgufValueType.BOOL; value: boolean }
  | { type: GgufValueType.ARRAY; itemType: GgufValueType; value: Array<string | number | bigint | boolean> };

export interface GgufTensor {
  readonly name: string;
  /** numpy/PyTorch order (outermost first); written reversed as GGUF's ne. */
  readonly shape: readonly number[];
  readonly type: GgmlType;
  readonly data: Float32Array;
}

export interface GgufFile {
  readonly version: number;
  readonly metadata: Map<string, GgufValue>;
  readonly tensors: Map<string, GgufTensor>;
}

const str = (value: string): GgufValue => ({ type: GgufValueType.STRING, value });
const f32v = (value: number): GgufValue => ({ type: GgufValueType.FLOAT32, value });
const u32v = (value: number): GgufValue => ({ type: GgufValueType.UINT32, value });

class Writer {
  private parts: Uint8Array[] = [];
  size = 0;
  private push(b: Uint8Array) {
    this.parts.push(b);
    this.size += b.length;
  }
  u32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.push(b);
  }
  u64(v: number | bigint) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    this.push(b);
  }
  string(s: string) {
    const e = new TextEncoder().encode(s);
    this.u64(e.length);
    this.push(e);
  }
  scalar(type: GgufValueType, v: string | number | bigint | boolean) {
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    switch (type) {
      case GgufValueType.STRING: return this.string(v as string);
      case GgufValueType.UINT8: b[0] = v as number; return this.push(b.slice(0, 1));
      case GgufValueType.INT8: dv.setInt8(0, v as number); return this.push(b.slice(0, 1));
      case GgufValueType.BOOL: b[0] = v ? 1 : 0; return this.push(b.slice(0, 1));
      case GgufValueType.UINT16: dv.setUint16(0, v as number, true); return this.push(b.slice(0, 2));
      case GgufValueType.INT16: dv.setInt16(0, v as number, true); return this.push(b.slice(0, 2));
      case GgufValueType.UINT32: dv.setUint32(0, v as number, true); return this.push(b.slice(0, 4));
      case GgufValueType.INT32: dv.setInt32(0, v as number, true); return this.push(b.slice(0, 4));
      case GgufValueType.FLOAT32: dv.setFloat32(0, v as number, true); return this.push(b.slice(0, 4));
      case GgufValueType.FLOAT64: dv.setFloat64(0, v as number, true); return this.push(b);
      case GgufValueType.UINT64: dv.setBigUint64(0, BigInt(v as bigint), true); return this.push(b);
      case GgufValueType.INT64: dv.setBigInt64(0, BigInt(v as bigint), true); return this.push(b);
      default: throw new GgufError(`cannot write a scalar of type ${type}`);
    }
  }
  pad(align: number) {
    const n = (align - (this.size % align)) % align;
    if (n) this.push(new Uint8Array(n));
  }
  bytes(b: Uint8Array) {
    this.push(b);
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

function tensorBytes(t: GgufTensor): Uint8Array {
  if (t.type === GgmlType.F32) return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const h = new Uint16Array(t.data.length);
  for (let i = 0; i < h.length; i++) h[i] = f32ToF16Bits(t.data[i]!);
  return new Uint8Array(h.buffer);
}

export function writeGguf(metadata: ReadonlyMap<string, GgufValue>, tensors: readonly GgufTensor[]): Uint8Array {
  const alignV = metadata.get('general.alignment');
  const align = alignV && alignV.type === GgufValueType.UINT32 ? alignV.value : GGUF_DEFAULT_ALIGNMENT;
  const w = new Writer();
  w.u32(GGUF_MAGIC);
  w.u32(3);
  w.u64(tensors.length);
  w.u64(metadata.size);
  for (const [k, v] of metadata) {
    w.string(k);
    w.u32(v.type);
    if (v.type === GgufValueType.ARRAY) {
      w.u32(v.itemType);
      w.u64(v.value.length);
      for (const item of v.value) w.scalar(v.itemType, item);
    } else w.scalar(v.type, v.value);
  }
  const datas = tensors.map(tensorBytes);
  let offset = 0;
  tensors.forEach((t, i) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new GgufError(`tensor '${t.name}': ${t.data.length} values for shape [${t.shape.join(', ')}]`);
    w.string(t.name);
    w.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) w.u64(d);
    w.u32(t.type);
    w.u64(offset);
    offset += datas[i]!.length;
    offset += (align - (offset % align)) % align;
  });
  w.pad(align);
  for (const d of datas) {
    w.bytes(d);
    w.pad(align);
  }
  return w.finish();
}

export function readGguf(bytes: Uint8Array, name = 'file.gguf'): GgufFile {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const fail = (msg: string): never => {
    throw new GgufError(`${name}: ${msg} (at byte ${at})`);
  };
  const need = (n: number) => {
    if (at + n > bytes.length) fail('truncated');
  };
  const u32 = () => (need(4), (at += 4), dv.getUint32(at - 4, true));
  const u64 = () => {
    need(8);
    at += 8;
    const v = dv.getBigUint64(at - 8, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail('a 64-bit count is too large');
    return Number(v);
  };
  const string = () => {
    const n = u64();
    need(n);
    at += n;
    return new TextDecoder().decode(bytes.subarray(at - n, at));
  };
  const scalar = (t: GgufValueType): string | number | bigint | boolean => {
    switch (t) {
      case GgufValueType.STRING: return string();
      case GgufValueType.UINT8: need(1); return bytes[at++]!;
      case GgufValueType.INT8: need(1); return dv.getInt8(at++);
      case GgufValueType.BOOL: need(1); return bytes[at++] !== 0;
      case GgufValueType.UINT16: need(2); at += 2; return dv.getUint16(at - 2, true);
      case GgufValueType.INT16: need(2); at += 2; return dv.getInt16(at - 2, true);
      case GgufValueType.UINT32: return u32();
      case GgufValueType.INT32: need(4); at += 4; return dv.getInt32(at - 4, true);
      case GgufValueType.FLOAT32: need(4); at += 4; return dv.getFloat32(at - 4, true);
      case GgufValueType.FLOAT64: need(8); at += 8; return dv.getFloat64(at - 8, true);
      case GgufValueType.UINT64: need(8); at += 8; return dv.getBigUint64(at - 8, true);
      case GgufValueType.INT64: need(8); at += 8; return dv.getBigInt64(at - 8, true);
      default: return fail(`unknown value type ${t}`);
    }
  };
  if (u32() !== GGUF_MAGIC) fail('not a GGUF file (bad magic)');
  const version = u32();
  if (version !== 2 && version !== 3) fail(`GGUF version ${version} is not supported`);
  const nTensors = u64();
  const nKv = u64();
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = string();
    const type = u32() as GgufValueType;
    if (type === GgufValueType.ARRAY) {
      const itemType = u32() as GgufValueType;
      const n = u64();
      const value: Array<string | number | bigint | boolean> = [];
      for (let j = 0; j < n; j++) value.push(scalar(itemType));
      metadata.set(key, { type, itemType, value });
    } else metadata.set(key, { type, value: scalar(type) } as GgufValue);
  }
  const alignV = metadata.get('general.alignment');
  const align = alignV && alignV.type === GgufValueType.UINT32 ? alignV.value : GGUF_DEFAULT_ALIGNMENT;
  const infos: Array<{ name: string; shape: number[]; type: GgmlType; offset: number }> = [];
  for (let i = 0; i < nTensors; i++) {
    const tname = string();
    const nd = u32();
    if (nd > 4) fail(`tensor '${tname}' has ${nd} dimensions`);
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) ne.push(u64());
    const type = u32();
    if (type !== GgmlType.F32 && type !== GgmlType.F16) fail(`tensor '${tname}' has ggml type ${type}; only F32 and F16 are read`);
    const offset = u64();
    if (offset % align !== 0) fail(`tensor '${tname}' data offset ${offset} is not aligned to ${align}`);
    infos.push({ name: tname, shape: ne.reverse(), type, offset });
  }
  at += (align - (at % align)) % align;
  const dataStart = at;
  const tensors = new Map<string, GgufTensor>();
  for (const t of infos) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const start = dataStart + t.offset;
    const len = n * (t.type === GgmlType.F32 ? 4 : 2);
    if (start + len > bytes.length) fail(`tensor '${t.name}' runs past the end of the file`);
    const raw = bytes.slice(start, start + len);
    const data = t.type === GgmlType.F32 ? new Float32Array(raw.buffer) : Float32Array.from(new Uint16Array(raw.buffer), (h) => f16ToF32(h));
    tensors.set(t.name, { name: t.name, shape: t.shape, type: t.type, data });
  }
  return { version, metadata, tensors };
}

// ---------------------------------------------------------------------------------------------------
// LoRA conversion (convert_lora_to_gguf.py)
// ---------------------------------------------------------------------------------------------------

const GGUF_ARCH: Record<ModelFamily, string> = { llama: 'llama', qwen2: 'qwen2', qwen3: 'qwen3', internlm2: 'internlm2' };

const LLAMA_NAMES: Partial<Record<LoraModule, string>> = { q_proj: 'attn_q', k_proj: 'attn_k', v_proj: 'attn_v', o_proj: 'attn_output', gate_proj: 'ffn_gate', up_proj: 'ffn_up', down_proj: 'ffn_down' };
const INTERNLM2_NAMES: Partial<Record<LoraModule, string>> = { wo: 'attn_output', w1: 'ffn_gate', w3: 'ffn_up', w2: 'ffn_down' };

/**
 * convert_hf_to_gguf.py's LlamaModel.permute on the rows of a [rows, cols] matrix:
 * reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2): within each head, row (half h, index i) moves to i·2 + h.
 */
export function ggufPermuteRows(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  const out = new Float32Array(w.length);
  const headRows = rows / nHead;
  const half = headRows / 2;
  if (!Number.isInteger(half)) throw new GgufError(`permute: ${rows} rows do not split into ${nHead} heads of even size`);
  for (let h = 0; h < nHead; h++) {
    for (let part = 0; part < 2; part++) {
      for (let i = 0; i < half; i++) {
        const src = h * headRows + part * half + i;
        const dst = h * headRows + i * 2 + part;
        out.set(w.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
    }
  }
  return out;
}

/** The GGUF tensors of the base weight's LoRA, after the base's own transform: {gguf name, rows transform}. */
export interface GgufLoraPair {
  readonly target: string;
  readonly a: Float32Array;
  readonly b: Float32Array;
  readonly r: number;
  readonly in: number;
  readonly out: number;
}

export function ggufLoraPairs(spec: ModelSpec, config: Pick<PeftLoraConfig, 'r' | 'targetModules' | 'layersToTransform'>, tensors: ReadonlyMap<string, PeftTensor>): GgufLoraPair[] {
  const r = config.r;
  const layers = config.layersToTransform ?? Array.from({ length: spec.layers }, (_, i) => i);
  const out: GgufLoraPair[] = [];
  for (const l of layers) {
    for (const m of config.targetModules) {
      const A = tensors.get(peftKey(spec.family, l, m, 'A'));
      const B = tensors.get(peftKey(spec.family, l, m, 'B'));
      if (!A || !B) throw new GgufError(`the adapter lacks ${!A ? peftKey(spec.family, l, m, 'A') : peftKey(spec.family, l, m, 'B')}`);
      const inF = A.shape[1]!;
      const blk = `blk.${l}.`;
      if (spec.family === 'internlm2' && m === 'wqkv') {
        const ranges = wqkvRowRanges(spec.nHeads, spec.nKvHeads, spec.headDim);
        const q = gatherRows(B.data, r, ranges.q);
        const k = gatherRows(B.data, r, ranges.k);
        const v = gatherRows(B.data, r, ranges.v);
        const qr = spec.nHeads * spec.headDim;
        const kr = spec.nKvHeads * spec.headDim;
        out.push({ target: `${blk}attn_q.weight`, a: A.data, b: ggufPermuteRows(q, qr, r, spec.nHeads), r, in: inF, out: qr });
        out.push({ target: `${blk}attn_k.weight`, a: A.data, b: ggufPermuteRows(k, kr, r, spec.nKvHeads), r, in: inF, out: kr });
        out.push({ target: `${blk}attn_v.weight`, a: A.data, b: v, r, in: inF, out: kr });
        continue;
      }
      const name = (spec.family === 'internlm2' ? INTERNLM2_NAMES : LLAMA_NAMES)[m];
      if (!name) throw new GgufError(`no GGUF name for ${m}`);
      const outF = B.shape[0]!;
      let b = B.data;
      if (spec.family === 'llama' && m === 'q_proj') b = ggufPermuteRows(b, outF, r, spec.nHeads);
      if (spec.family === 'llama' && m === 'k_proj') b = ggufPermuteRows(b, outF, r, spec.nKvHeads);
      out.push({ target: `${blk}${name}.weight`, a: A.data, b, r, in: inF, out: outF });
    }
  }
  return out;
}

export interface GgufLoraOptions {
  /** F32 (default) or F16 tensors. */
  type?: GgmlType;
  name?: string;
}

/** The adapter as a GGUF LoRA file that llama.cpp (--lora) and Ollama (ADAPTER) load over the base's GGUF. */
export function loraToGguf(spec: ModelSpec, config: PeftLoraConfig, tensors: ReadonlyMap<string, PeftTensor>, o: GgufLoraOptions = {}): Uint8Array {
  if (config.useRslora) throw new GgufError('rsLoRA adapters have no GGUF equivalent (llama.cpp scales by alpha / r)');
  const type = o.type ?? GgmlType.F32;
  const md = new Map<string, GgufValue>([
    ['general.architecture', str(GGUF_ARCH[spec.family])],
    ['general.type', str('adapter')],
    ['general.name', str(o.name ?? (config.baseModelNameOrPath ? `${config.baseModelNameOrPath} LoRA` : 'LoRA adapter'))],
    ['general.alignment', u32v(GGUF_DEFAULT_ALIGNMENT)],
    ['adapter.type', str('lora')],
    ['adapter.lora.alpha', f32v(config.loraAlpha)],
  ]);
  const ts: GgufTensor[] = [];
  for (const p of ggufLoraPairs(spec, config, tensors)) {
    ts.push({ name: `${p.target}.lora_a`, shape: [p.r, p.in], type, data: p.a });
    ts.push({ name: `${p.target}.lora_b`, shape: [p.out, p.r], type, data: p.b });
  }
  return writeGguf(md, ts);
}

// ---------------------------------------------------------------------------------------------------
// Ollama Modelfile
// ---------------------------------------------------------------------------------------------------

export type TemplateKind = 'chatml' | 'llama3';

/** Which Go template matches a Jinja chat template (by its turn markers; no template: the family's usual one). */
export function templateKind(chatTemplate: string | null, family: ModelFamily): TemplateKind | null {
  if (chatTemplate?.includes('<|start_header_id|>')) return 'llama3';
  if (chatTemplate?.includes('<|im_start|>')) return 'chatml';
  if (chatTemplate === null && (family === 'qwen2' || family === 'qwen3' || family === 'internlm2')) return 'chatml';
  return null;
}

/**
 * Ollama's Go templates (text/template over .System, .Messages with .Role/.Content) rendering what the Jinja
 * templates render with add_generation_prompt: Ollama keeps system turns inside .Messages as well as in
 * .System, so the range skips them; the generation prompt follows a last user turn, and a last assistant
 * turn stays open (Ollama's continuation). The bos token is not written: llama.cpp adds it from the GGUF.
 */
function goTemplate(kind: TemplateKind, chatTemplate: string | null): string {
  if (kind === 'chatml') {
    return [
      '{{- if .System }}<|im_start|>system',
      '{{ .System }}<|im_end|>',
      '{{ end }}',
      '{{- range $i, $_ := .Messages }}',
      '{{- $last := eq (len (slice $.Messages $i)) 1 }}',
      '{{- if eq .Role "user" }}<|im_start|>user',
      '{{ .Content }}<|im_end|>',
      '{{ if $last }}<|im_start|>assistant',
      '{{ end }}',
      '{{- else if eq .Role "assistant" }}<|im_start|>assistant',
      '{{ .Content }}{{ if not $last }}<|im_end|>',
      '{{ end }}',
      '{{- end }}',
      '{{- end }}',
    ].join('\n');
  }
  // Llama 3.1 / 3.2 always open with a system block carrying the knowledge-cutoff lines (the date is the
  // template's own fallback when strftime_now is absent); Llama 3.0 writes one only for a system prompt.
  const dated = chatTemplate?.includes('Cutting Knowledge Date') ?? false;
  const system = dated
    ? ['<|start_header_id|>system<|end_header_id|>', '', 'Cutting Knowledge Date: December 2023', 'Today Date: 26 Jul 2024', '', '{{ if .System }}{{ .System }}{{ end }}<|eot_id|>']
    : ['{{- if .System }}<|start_header_id|>system<|end_header_id|>', '', '{{ .System }}<|eot_id|>', '{{- end }}'];
  return [
    ...system,
    '{{- range $i, $_ := .Messages }}',
    '{{- $last := eq (len (slice $.Messages $i)) 1 }}',
    '{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>',
    '',
    '{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>',
    '',
    '{{ end }}',
    '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>',
    '',
    '{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}',
    '{{- end }}',
    '{{- end }}',
  ].join('\n');
}

const GO_STOPS: Record<TemplateKind, string[]> = {
  chatml: ['<|im_end|>', '<|im_start|>'],
  llama3: ['<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>'],
};

/** A Modelfile string argument: """…""" unless the text holds """ itself (then a JSON-style quoted string). */
function modelfileString(s: string): string {
  return s.includes('"""') ? JSON.stringify(s) : `"""${s}"""`;
}

/**
 * FROM the base (an Ollama model name or a GGUF path), ADAPTER the GGUF LoRA, TEMPLATE (Go) and stop
 * parameters matching the training chat template, and SYSTEM: `system` if given, else the template's own
 * default system prompt (`defaultSystem`, e.g. Qwen2.5's) so that Ollama renders what training rendered.
 * Chat templates other than ChatML and Llama 3 get a comment asking for a hand-written TEMPLATE.
 */
export function ollamaModelfile(o: { from: string; adapter: string; chatTemplate: string | null; family: ModelFamily; stopStrings?: readonly string[]; system?: string; defaultSystem?: string | null }): string {
  const kind = templateKind(o.chatTemplate, o.family);
  const lines = [`FROM ${o.from}`, `ADAPTER ${o.adapter}`];
  const stops = new Set<string>();
  if (kind) {
    lines.push(`TEMPLATE ${modelfileString(goTemplate(kind, o.chatTemplate))}`);
    for (const s of GO_STOPS[kind]) stops.add(s);
  } else {
    lines.push('# The training chat template is neither ChatML nor Llama 3: write TEMPLATE by hand from chat_template.jinja.');
  }
  for (const s of o.stopStrings ?? []) if (s) stops.add(s);
  const system = o.system ?? o.defaultSystem ?? '';
  if (system) lines.push(`SYSTEM ${modelfileString(system)}`);
  for (const s of stops) lines.push(`PARAMETER stop ${JSON.stringify(s)}`);
  return lines.join('\n') + '\n';
}
