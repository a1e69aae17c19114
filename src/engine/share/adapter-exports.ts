/**
 * The Share section's engine side, apart from the session's bookkeeping: an imported PEFT adapter put on
 * the GPU as the tuned model, and the adapter's other downloads (GGUF LoRA, an Ollama package, the merged
 * model). Everything takes an AdapterBundle, so a trained adapter and an imported one export the same way.
 */
import { bytesSource, blobSource, type ByteSource } from '../../formats/bytes.ts';
import type { GpuContext } from '../gpu/context.ts';
import { createOptimizerState, releaseOptimizerState } from '../kernels/adamw.ts';
import { parameterCount, type ModelSpec } from '../model/config.ts';
import { LoraLayout } from '../model/lora-layout.ts';
import type { LoraRuntime } from '../model/transformer.ts';
import type { CheckpointIndex } from '../model/weights.ts';
import { importAdapterFolder, importAdapterZip, type AdapterBundle, type ImportedAdapter } from './adapter-zip.ts';
import { DTYPE_BYTES, type ExportDType } from './dtype.ts';
import { loraToGguf, ollamaModelfile } from './gguf.ts';
import { mergeExport, type MergeResult } from './merge-export.ts';
import { memorySinks, type SinkFactory } from './sinks.ts';
import { writeZip } from './zip.ts';

/** An adapter folder or zip as the UI hands it over: file name (relative path) → contents. */
export type AdapterFiles = ReadonlyMap<string, Blob | Uint8Array | string>;

/** What the Share section shows about an imported adapter. */
export interface ImportedAdapterSummary {
  source: string;
  r: number;
  loraAlpha: number;
  targetModules: string[];
  baseModel: string | null;
  /** Things that load but deserve a look (another base model's name, another chat template, extra keys). */
  warnings: string[];
}

/** An imported adapter on the GPU: the runtime the generator uses, the bundle it re-exports as, and its release. */
export interface InstalledAdapter {
  readonly lora: LoraRuntime;
  readonly bundle: AdapterBundle;
  readonly summary: ImportedAdapterSummary;
  release(): void;
}

function sourceOf(name: string, f: Blob | Uint8Array | string): ByteSource {
  if (typeof f === 'string') return bytesSource(new TextEncoder().encode(f), name);
  return f instanceof Uint8Array ? bytesSource(f, name) : blobSource(f, name);
}

/**
 * Reads and validates an adapter (.zip bytes, or a folder's files) against the loaded base — every tensor's
 * shape is checked, a mismatch names the tensor and both shapes — and uploads it for generation. Nothing
 * on the GPU changes when validation fails.
 */
export async function installAdapter(
  ctx: GpuContext,
  spec: ModelSpec,
  input: Uint8Array | AdapterFiles,
  o: { source: string; modelId: string; chatTemplate: string | null },
): Promise<InstalledAdapter> {
  let imported: ImportedAdapter;
  if (input instanceof Uint8Array) imported = await importAdapterZip(bytesSource(input, o.source), spec);
  else {
    const files = new Map<string, ByteSource>();
    for (const [name, f] of input) files.set(name, sourceOf(`${o.source}/${name}`, f));
    imported = await importAdapterFolder(files, spec, o.source);
  }
  const { adapter, chat, info } = imported;
  const warnings: string[] = [];
  const base = adapter.config.baseModelNameOrPath;
  if (base && base !== o.modelId) warnings.push(`trained on ${base}; the loaded model is ${o.modelId} (the shapes match, the answers may not)`);
  if (chat?.chatTemplate && o.chatTemplate !== null && chat.chatTemplate.trim() !== o.chatTemplate.trim()) {
    warnings.push('it was trained with a different chat template than the loaded model uses; replies may be off');
  }
  if (adapter.unknownKeys.length > 0) warnings.push(`${adapter.unknownKeys.length} tensors the config does not call for were ignored (${adapter.unknownKeys.slice(0, 3).join(', ')}${adapter.unknownKeys.length > 3 ? ', …' : ''})`);
  const layout = new LoraLayout(spec, adapter.config);
  const packed = layout.packPeft(adapter.tensors);
  // Generation reads the parameters only: no optimizer moments.
  const state = createOptimizerState(ctx, layout.optimizer, { residentMoments: false });
  ctx.write(state.params, packed);
  const stopTokenIds = chat?.stopTokenIds.length ? chat.stopTokenIds : spec.eosTokenIds;
  const bundle: AdapterBundle = {
    spec,
    config: adapter.config,
    tensors: adapter.tensors,
    ...(info?.training ? { training: info.training } : {}),
    chat: { chatTemplate: chat?.chatTemplate ?? o.chatTemplate, stopTokenIds, stopStrings: chat?.stopStrings ?? [] },
  };
  return {
    lora: { layout, params: state.params, grads: state.grads },
    bundle,
    summary: { source: o.source, r: adapter.config.r, loraAlpha: adapter.config.loraAlpha, targetModules: [...adapter.config.targetModules], baseModel: base, warnings },
    release: () => releaseOptimizerState(ctx, state),
  };
}

/** A download: its suggested file name and bytes. */
export interface ExportFile {
  name: string;
  bytes: Uint8Array;
}

function slug(s: string): string {
  return s.replace(/[^\w.-]+/g, '_');
}

/** The GGUF LoRA for llama.cpp (`--lora`) and Ollama (ADAPTER). */
export function ggufExport(b: AdapterBundle, modelId: string): ExportFile {
  return { name: `${slug(modelId)}-lora.gguf`, bytes: loraToGguf(b.spec, b.config, b.tensors, { name: `${modelId} LoRA` }) };
}

/**
 * For Ollama: adapter.gguf and a Modelfile (FROM the base's GGUF, which the user converts or pulls; ADAPTER,
 * TEMPLATE and stop parameters of the training template) in one zip, with a README saying what to run.
 */
export function ollamaExport(b: AdapterBundle, modelId: string): ExportFile {
  const base = `./${slug(modelId.split('/').pop() ?? modelId)}.gguf`;
  const modelfile = ollamaModelfile({ from: base, adapter: './adapter.gguf', chatTemplate: b.chat?.chatTemplate ?? null, family: b.spec.family, stopStrings: b.chat?.stopStrings ?? [] });
  const readme = [
    `# ${modelId} + LoRA adapter for Ollama`,
    '',
    `1. Put the base model as GGUF next to these files as \`${base.slice(2)}\` (llama.cpp's convert_hf_to_gguf.py makes one from the Hugging Face folder), or change FROM to an Ollama model of the same base.`,
    '2. `ollama create my-assistant -f Modelfile`',
    '3. `ollama run my-assistant`',
    '',
  ].join('\n');
  const enc = new TextEncoder();
  const files = new Map<string, Uint8Array>([
    ['adapter.gguf', loraToGguf(b.spec, b.config, b.tensors, { name: `${modelId} LoRA` })],
    ['Modelfile', enc.encode(modelfile)],
    ['README.md', enc.encode(readme)],
  ]);
  return { name: `${slug(modelId)}-ollama.zip`, bytes: writeZip(files) };
}

/** Bytes of the merged checkpoint in `dtype` (tensor data only; headers and tokenizer files are small). */
export function mergedBytes(spec: ModelSpec, dtype: ExportDType): number {
  return parameterCount(spec) * DTYPE_BYTES[dtype];
}

/** A merged export held in memory (zipped) is refused above this size: a folder on disk takes it instead. */
export const MERGED_ZIP_LIMIT = 1024 ** 3;

export interface MergeExportOptions {
  dtype: ExportDType;
  modelId: string;
  /** The base checkpoint's files: config.json, generation_config.json and tokenizer files pass through. */
  baseFiles: ReadonlyMap<string, Blob | Uint8Array | string>;
  onProgress?: (p: { tensor: string; done: number; total: number }) => void;
  signal?: AbortSignal;
}

const PASS_THROUGH = /^(tokenizer\.json|tokenizer_config\.json|tokenizer\.model|special_tokens_map\.json|chat_template\.jinja|chat_template\.json|vocab\.json|merges\.txt|added_tokens\.json|.*\.py)$/;

async function textFile(files: ReadonlyMap<string, Blob | Uint8Array | string>, name: string): Promise<string | null> {
  const f = files.get(name);
  if (f === undefined) return null;
  if (typeof f === 'string') return f;
  return f instanceof Uint8Array ? new TextDecoder().decode(f) : await f.text();
}

/**
 * Base + adapter merged into a Hugging Face checkpoint, streamed tensor by tensor into `open` (a folder the
 * user picked), or — when `open` is null and the result is small enough — into a zip in memory.
 */
export async function mergedExport(index: CheckpointIndex, b: AdapterBundle, open: SinkFactory | null, o: MergeExportOptions): Promise<{ result: MergeResult; zip: ExportFile | null }> {
  const configJson = await textFile(o.baseFiles, 'config.json');
  if (configJson === null) throw new Error(`${o.modelId}: the loaded model has no config.json to export with`);
  const passThrough = new Map<string, ByteSource>();
  for (const [name, f] of o.baseFiles) if (PASS_THROUGH.test(name)) passThrough.set(name, sourceOf(name, f));
  if (b.chat?.chatTemplate && !o.baseFiles.has('chat_template.jinja')) passThrough.set('chat_template.jinja', bytesSource(new TextEncoder().encode(b.chat.chatTemplate), 'chat_template.jinja'));
  const options = {
    dtype: o.dtype,
    configJson,
    generationConfigJson: await textFile(o.baseFiles, 'generation_config.json'),
    stopTokenIds: b.chat?.stopTokenIds ?? [],
    passThrough,
    ...(o.onProgress ? { onProgress: o.onProgress } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
  };
  if (open) return { result: await mergeExport(index, b, open, options), zip: null };
  const size = mergedBytes(b.spec, o.dtype);
  if (size > MERGED_ZIP_LIMIT) {
    throw new Error(`the merged model is ${(size / 1024 ** 3).toFixed(1)} GiB in ${o.dtype}: too large to build as one download in memory. Pick a folder to write it into (Chrome or Edge), or export the adapter and merge with \`npm run cli -- merge\`.`);
  }
  const mem = memorySinks();
  const result = await mergeExport(index, b, mem.open, options);
  return { result, zip: { name: `${slug(o.modelId)}-merged-${o.dtype}.zip`, bytes: writeZip(mem.files) } };
}
