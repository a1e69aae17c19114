/**
 * Merged export: base + LoRA adapter → a full Hugging Face checkpoint (what PEFT's merge_and_unload +
 * save_pretrained gives): safetensors shards (+ model.safetensors.index.json when there are several),
 * config.json with the export dtype, generation_config.json, and the tokenizer files passed through.
 *
 * Streamed on the CPU one tensor at a time: the shard plan (which tensor goes where) is computed from
 * shapes alone, each shard's header is written first, then each tensor is read from the base checkpoint
 * in HF layout, gets s·B·A added, is converted to the export dtype and appended. Peak memory is one
 * tensor (in f32) plus its converted copy; the model is never whole in memory.
 *
 * InternLM2's wqkv is rebuilt in its packed row order from q/k/v; its LoRA B is already in that order in
 * PEFT's tensor, so W_wqkv += s·B·A applies unchanged.
 */
import type { ByteSource } from '../../formats/bytes.ts';
import type { SafetensorsDType } from '../../formats/safetensors.ts';
import { loraScale, peftKey, peftModulePath, type PeftLoraConfig, type PeftTensor } from '../model/peft.ts';
import { hfCheckpointLayout, packWqkv, type CheckpointIndex, type ParamDesc } from '../model/weights.ts';
import { DTYPE_BYTES, SAFETENSORS_NAME, TORCH_NAME, encodeAs, type ExportDType } from './dtype.ts';
import { writeFileTo, type SinkFactory } from './sinks.ts';

export interface MergeAdapter {
  readonly config: Pick<PeftLoraConfig, 'r' | 'loraAlpha' | 'useRslora' | 'targetModules' | 'layersToTransform'>;
  readonly tensors: ReadonlyMap<string, PeftTensor>;
}

export interface MergeOptions {
  dtype: ExportDType;
  /** Start a new shard once the next tensor would pass this many bytes (default 2 GB; HF's default is 5 GB). */
  maxShardBytes?: number;
  /** The base's config.json text (rewritten with the export dtype). */
  configJson: string;
  /** The base's generation_config.json text; when absent one is written from the config's token ids. */
  generationConfigJson?: string | null;
  /** Stop ids of the training template: written as generation_config's eos_token_id (with the model's own). */
  stopTokenIds?: readonly number[];
  /** Copied unchanged: tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer.model, remote-code .py files, … */
  passThrough?: ReadonlyMap<string, ByteSource>;
  onProgress?: (p: { tensor: string; done: number; total: number }) => void;
  /** Cancels between tensors (the file being written is dropped; the rejection is the signal's reason). */
  signal?: AbortSignal;
}

export interface MergeResult {
  readonly files: string[];
  readonly shards: string[];
  readonly totalBytes: number;
}

interface HfTensor {
  readonly name: string;
  readonly shape: readonly number[];
  /** The internal parameters it is assembled from (one, or q/k/v of InternLM2's wqkv). */
  readonly params: ParamDesc[];
}

/** HF tensors of the merged checkpoint in canonical order (wqkv once, from its q/k/v parameters). */
export function mergedTensors(index: CheckpointIndex): HfTensor[] {
  const byName = new Map<string, HfTensor>();
  for (const { param, source } of hfCheckpointLayout(index.spec)) {
    let t = byName.get(source.tensor);
    if (!t) {
      t = { name: source.tensor, shape: source.tensorShape, params: [] };
      byName.set(source.tensor, t);
    }
    t.params.push(param);
  }
  return [...byName.values()];
}

/** A safetensors header (8-byte length + JSON padded with spaces to 8 bytes) for tensors in order. */
export function safetensorsHeader(tensors: ReadonlyArray<{ name: string; dtype: SafetensorsDType; shape: readonly number[]; bytes: number }>, metadata: Record<string, string>): Uint8Array {
  const obj: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    offset += t.bytes;
  }
  let json = JSON.stringify(obj);
  const enc = new TextEncoder();
  json += ' '.repeat((8 - ((8 + enc.encode(json).length) % 8)) % 8);
  const body = enc.encode(json);
  const out = new Uint8Array(8 + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(body.length), true);
  out.set(body, 8);
  return out;
}

/** W [out, in] += scale · B [out, r] · A [r, in], in place. */
export function addLoraDelta(w: Float32Array, A: Float32Array, B: Float32Array, r: number, outF: number, inF: number, scale: number): void {
  const row = new Float64Array(inF);
  for (let o = 0; o < outF; o++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const b = B[o * r + k]!;
      if (b === 0) continue;
      const a0 = k * inF;
      for (let i = 0; i < inF; i++) row[i]! += b * A[a0 + i]!;
    }
    const w0 = o * inF;
    for (let i = 0; i < inF; i++) w[w0 + i] = w[w0 + i]! + Math.fround(scale * row[i]!);
  }
}

/** Module path + '.weight' → the adapter's A/B for it. */
function deltasOf(index: CheckpointIndex, adapter: MergeAdapter | null): Map<string, { A: PeftTensor; B: PeftTensor }> {
  const out = new Map<string, { A: PeftTensor; B: PeftTensor }>();
  if (!adapter) return out;
  const spec = index.spec;
  const layers = adapter.config.layersToTransform ?? Array.from({ length: spec.layers }, (_, i) => i);
  for (const l of layers) {
    for (const m of adapter.config.targetModules) {
      const A = adapter.tensors.get(peftKey(spec.family, l, m, 'A'));
      const B = adapter.tensors.get(peftKey(spec.family, l, m, 'B'));
      if (!A || !B) throw new Error(`merge: the adapter lacks ${!A ? peftKey(spec.family, l, m, 'A') : peftKey(spec.family, l, m, 'B')}`);
      out.set(`${peftModulePath(spec.family, l, m)}.weight`, { A, B });
    }
  }
  return out;
}


export async function mergeExport(index: CheckpointIndex, adapter: MergeAdapter | null, open: SinkFactory, o: MergeOptions): Promise<MergeResult> {
  const spec = index.spec;
  const maxShard = o.maxShardBytes ?? 2_000_000_000;
  const stDtype = SAFETENSORS_NAME[o.dtype];
  const tensors = mergedTensors(index);
  const deltas = deltasOf(index, adapter);
  const scale = adapter ? loraScale(adapter.config) : 0;
  for (const name of deltas.keys()) if (!tensors.some((t) => t.name === name)) throw new Error(`merge: the adapter targets '${name}', which the base checkpoint does not have`);

  // Shard plan from shapes alone.
  const bytesOf = (t: HfTensor) => t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[o.dtype];
  const plan: HfTensor[][] = [[]];
  let current = 0;
  for (const t of tensors) {
    const b = bytesOf(t);
    if (current > 0 && current + b > maxShard) {
      plan.push([]);
      current = 0;
    }
    plan[plan.length - 1]!.push(t);
    current += b;
  }
  const n = plan.length;
  const shardName = (i: number) => (n === 1 ? 'model.safetensors' : `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`);
  const weightMap: Record<string, string> = {};
  let totalBytes = 0;
  let done = 0;
  for (let s = 0; s < n; s++) {
    const shard = plan[s]!;
    const name = shardName(s);
    const sink = await open(name);
    try {
      await sink.write(safetensorsHeader(shard.map((t) => ({ name: t.name, dtype: stDtype, shape: t.shape, bytes: bytesOf(t) })), { format: 'pt' }));
      for (const t of shard) {
        o.signal?.throwIfAborted();
        let data: Float32Array;
        if (t.params.length === 1) data = await index.read(t.params[0]!.name);
        else {
          // InternLM2 wqkv (or its bias): q, k, v parameters back into the packed row order.
          const part = (k: string) => t.params.find((p) => p.kind === k || p.kind === `${k}_bias`)!;
          const cols = t.shape.length > 1 ? t.shape[1]! : 1;
          data = packWqkv(await index.read(part('q').name), await index.read(part('k').name), await index.read(part('v').name), spec, cols);
        }
        const d = deltas.get(t.name);
        if (d) {
          const [outF, inF] = t.shape as [number, number];
          if (d.A.shape[1] !== inF || d.B.shape[0] !== outF) throw new Error(`merge: '${t.name}' is [${t.shape.join(', ')}] but its LoRA is A [${d.A.shape.join(', ')}], B [${d.B.shape.join(', ')}]`);
          addLoraDelta(data, d.A.data, d.B.data, d.A.shape[0]!, outF, inF, scale);
        }
        await sink.write(encodeAs(data, o.dtype));
        weightMap[t.name] = name;
        totalBytes += bytesOf(t);
        o.onProgress?.({ tensor: t.name, done: ++done, total: tensors.length });
      }
    } catch (e) {
      await sink.abort(e).catch(() => {});
      throw e;
    }
    await sink.close();
  }
  const enc = new TextEncoder();
  const files = plan.map((_, i) => shardName(i));
  if (n > 1) {
    const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]!]));
    await writeFileTo(open, 'model.safetensors.index.json', enc.encode(JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: sorted }, null, 2) + '\n'));
    files.push('model.safetensors.index.json');
  }
  const cfg = JSON.parse(o.configJson) as Record<string, unknown>;
  if ('torch_dtype' in cfg && !('dtype' in cfg)) cfg.torch_dtype = TORCH_NAME[o.dtype];
  else cfg.dtype = TORCH_NAME[o.dtype];
  await writeFileTo(open, 'config.json', enc.encode(JSON.stringify(cfg, null, 2) + '\n'));
  files.push('config.json');
  let gen: Record<string, unknown>;
  if (o.generationConfigJson) gen = JSON.parse(o.generationConfigJson) as Record<string, unknown>;
  else {
    gen = {};
    if (spec.bosTokenId !== null) gen.bos_token_id = spec.bosTokenId;
    if (spec.padTokenId !== null) gen.pad_token_id = spec.padTokenId;
    if (spec.eosTokenIds.length > 0) gen.eos_token_id = spec.eosTokenIds.length === 1 ? spec.eosTokenIds[0] : [...spec.eosTokenIds];
  }
  if (o.stopTokenIds && o.stopTokenIds.length > 0) {
    const have = gen.eos_token_id === undefined ? [] : Array.isArray(gen.eos_token_id) ? (gen.eos_token_id as number[]) : [gen.eos_token_id as number];
    const all = [...new Set([...have, ...o.stopTokenIds])];
    gen.eos_token_id = all.length === 1 ? all[0] : all;
  }
  await writeFileTo(open, 'generation_config.json', enc.encode(JSON.stringify(gen, null, 2) + '\n'));
  files.push('generation_config.json');
  const reserved = new Set(files);
  for (const [name, src] of o.passThrough ?? []) {
    o.signal?.throwIfAborted();
    if (reserved.has(name) || name.endsWith('.safetensors') || name === 'model.safetensors.index.json') continue;
    await writeFileTo(open, name, await src.read(0, src.size));
    files.push(name);
  }
  return { files, shards: plan.map((_, i) => shardName(i)), totalBytes };
}
