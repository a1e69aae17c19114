/**
 * An adapter as one download: adapter_config.json + adapter_model.safetensors exactly as PEFT's
 * save_pretrained writes them (peft.ts), plus what PEFT does not carry but whoever loads the adapter needs:
 * a README.md model card (base model, data, hyper-parameters, final loss), the chat template used in
 * training (chat_template.jinja) and its stop tokens (webtune.json). Import takes the same from a .zip or
 * a folder (any map of file name → ByteSource: a directory picker, a Hub download, the Node file system).
 */
import { bytesSource, type ByteSource } from '../../formats/bytes.ts';
import type { ModelSpec } from '../model/config.ts';
import { PeftError, readPeftAdapter, writePeftAdapter, type PeftAdapter, type PeftLoraConfig, type PeftTensor } from '../model/peft.ts';
import { DEFAULT_ZIP_LIMITS, readZip, writeZip, type ZipLimits } from './zip.ts';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
export const CHAT_TEMPLATE_FILE = 'chat_template.jinja';
export const WEBTUNE_FILE = 'webtune.json';
export const README_FILE = 'README.md';

/** How the adapter was trained, for the model card and the recipe export. */
export interface TrainingSummary {
  /** Dataset name (file name or Hub id) and statistics. */
  dataset?: { name?: string; rows: number; tokens?: number; supervisedTokens?: number };
  /** Hyper-parameters as shown in the card (lr, epochs, batch, …). */
  hyperParameters: Readonly<Record<string, string | number | boolean>>;
  steps?: number;
  finalLoss: number | null;
}

/** The prompt format of training: whoever loads the adapter must prompt it the same way. */
export interface ChatSetup {
  /** The Jinja chat template (tokenizer_config.json's chat_template or a chat_template.jinja). */
  chatTemplate: string | null;
  /** Token ids that end a turn (eos and end-of-turn tokens). */
  stopTokenIds: readonly number[];
  /** Their strings (e.g. "<|im_end|>"), for runtimes that stop on text. */
  stopStrings: readonly string[];
}

export interface AdapterBundle {
  readonly spec: ModelSpec;
  readonly config: PeftLoraConfig;
  readonly tensors: ReadonlyMap<string, PeftTensor>;
  readonly training?: TrainingSummary;
  readonly chat?: ChatSetup;
}

/** The contents of webtune.json. */
export interface WebtuneAdapterInfo {
  format: 'webtune-adapter';
  version: 1;
  family: string;
  architecture: string;
  base_model: string | null;
  chat_template: string | null;
  stop_token_ids: number[];
  stop_strings: string[];
  training: TrainingSummary | null;
}

const enc = new TextEncoder();

function cardValue(v: string | number | boolean): string {
  return typeof v === 'number' && !Number.isInteger(v) ? String(Number(v.toPrecision(6))) : String(v);
}

/** README.md: a Hub model card with YAML front matter (base_model, library_name: peft) and the run's facts. */
export function modelCard(b: AdapterBundle): string {
  const base = b.config.baseModelNameOrPath;
  const t = b.training;
  const lines = ['---'];
  if (base) lines.push(`base_model: ${base}`);
  lines.push('library_name: peft', 'pipeline_tag: text-generation', 'tags:', '- lora', '- webtune', '---', '');
  lines.push(`# LoRA adapter${base ? ` for ${base}` : ''}`, '');
  lines.push(`Trained in the browser with WebTune (LoRA r=${b.config.r}, alpha=${b.config.loraAlpha}, ${b.config.targetModules.length} target modules: ${b.config.targetModules.join(', ')}).`, '');
  lines.push('## Base model', '', `- ${base ?? '(not recorded)'} (${b.spec.architecture}, ${b.spec.layers} layers, hidden ${b.spec.hidden})`, '');
  if (t) {
    lines.push('## Data', '');
    if (t.dataset) {
      if (t.dataset.name) lines.push(`- dataset: ${t.dataset.name}`);
      lines.push(`- rows: ${t.dataset.rows}`);
      if (t.dataset.tokens !== undefined) lines.push(`- tokens: ${t.dataset.tokens}`);
      if (t.dataset.supervisedTokens !== undefined) lines.push(`- supervised tokens: ${t.dataset.supervisedTokens}`);
    } else lines.push('- (not recorded)');
    lines.push('', '## Hyper-parameters', '', '| parameter | value |', '| --- | --- |');
    for (const [k, v] of Object.entries(t.hyperParameters)) lines.push(`| ${k} | ${cardValue(v)} |`);
    lines.push('', '## Result', '');
    if (t.steps !== undefined) lines.push(`- optimizer steps: ${t.steps}`);
    lines.push(`- final training loss: ${t.finalLoss === null ? '(not recorded)' : t.finalLoss.toFixed(4)}`, '');
  }
  if (b.chat) {
    lines.push('## Prompt format', '');
    lines.push(b.chat.chatTemplate ? `Trained with the chat template in \`${CHAT_TEMPLATE_FILE}\`; prompt the adapter with it.` : 'No chat template was used (plain text).');
    if (b.chat.stopStrings.length > 0) lines.push(`Stop generating at: ${b.chat.stopStrings.map((s) => `\`${s}\``).join(', ')} (token ids ${b.chat.stopTokenIds.join(', ')}).`);
    lines.push('');
  }
  lines.push('## Use', '', '```python', 'from peft import PeftModel', 'from transformers import AutoModelForCausalLM, AutoTokenizer', '');
  lines.push(`base = AutoModelForCausalLM.from_pretrained(${JSON.stringify(base ?? '<base model>')}${b.spec.family === 'internlm2' ? ', trust_remote_code=True' : ''})`);
  lines.push('model = PeftModel.from_pretrained(base, "<this folder>")', '```', '');
  return lines.join('\n');
}

/** Every file of the export, by name (the zip's contents; also what a folder export writes). */
export function adapterFiles(b: AdapterBundle): Map<string, Uint8Array> {
  const { adapterConfigJson, adapterSafetensors } = writePeftAdapter(b.spec, b.config, b.tensors);
  const files = new Map<string, Uint8Array>([
    [ADAPTER_CONFIG, enc.encode(adapterConfigJson)],
    [ADAPTER_WEIGHTS, adapterSafetensors],
    [README_FILE, enc.encode(modelCard(b))],
  ]);
  if (b.chat?.chatTemplate) files.set(CHAT_TEMPLATE_FILE, enc.encode(b.chat.chatTemplate));
  const info: WebtuneAdapterInfo = {
    format: 'webtune-adapter',
    version: 1,
    family: b.spec.family,
    architecture: b.spec.architecture,
    base_model: b.config.baseModelNameOrPath,
    chat_template: b.chat?.chatTemplate ? CHAT_TEMPLATE_FILE : null,
    stop_token_ids: [...(b.chat?.stopTokenIds ?? b.spec.eosTokenIds)],
    stop_strings: [...(b.chat?.stopStrings ?? [])],
    training: b.training ?? null,
  };
  files.set(WEBTUNE_FILE, enc.encode(JSON.stringify(info, null, 2) + '\n'));
  return files;
}

/** The .zip download. */
export function exportAdapterZip(b: AdapterBundle): Uint8Array {
  return writeZip(adapterFiles(b));
}

export interface ImportedAdapter {
  readonly adapter: PeftAdapter;
  readonly chat: ChatSetup | null;
  readonly info: WebtuneAdapterInfo | null;
  readonly readme: string | null;
}

async function textOf(src: ByteSource): Promise<string> {
  return new TextDecoder().decode(await src.read(0, src.size));
}

/**
 * An adapter from a folder: `files` maps names (relative paths) to contents. The files may sit in one
 * sub-folder (a zipped directory); adapter_config.json decides where.
 */
export async function importAdapterFolder(files: ReadonlyMap<string, ByteSource>, spec: ModelSpec, source = 'adapter'): Promise<ImportedAdapter> {
  const configs = [...files.keys()].filter((n) => n === ADAPTER_CONFIG || n.endsWith(`/${ADAPTER_CONFIG}`));
  if (configs.length === 0) throw new PeftError(`${source}: no ${ADAPTER_CONFIG} (a PEFT adapter folder holds ${ADAPTER_CONFIG} and ${ADAPTER_WEIGHTS})`);
  if (configs.length > 1) throw new PeftError(`${source}: several adapters (${configs.join(', ')}); pick one folder`);
  const prefix = configs[0]!.slice(0, -ADAPTER_CONFIG.length);
  const get = (n: string) => files.get(prefix + n);
  const weights = get(ADAPTER_WEIGHTS);
  if (!weights) {
    const bin = get('adapter_model.bin');
    throw new PeftError(`${source}: no ${ADAPTER_WEIGHTS}${bin ? ' (adapter_model.bin is a pickle; re-save with safe_serialization=True)' : ''}`);
  }
  const adapter = await readPeftAdapter(await textOf(get(ADAPTER_CONFIG)!), weights, spec);
  let info: WebtuneAdapterInfo | null = null;
  const infoSrc = get(WEBTUNE_FILE);
  if (infoSrc) {
    try {
      const parsed = JSON.parse(await textOf(infoSrc)) as WebtuneAdapterInfo;
      if (parsed.format === 'webtune-adapter') info = parsed;
    } catch (e) {
      throw new PeftError(`${source}: ${WEBTUNE_FILE} is not valid JSON (${(e as Error).message})`);
    }
  }
  const tmpl = get(CHAT_TEMPLATE_FILE);
  const chatTemplate = tmpl ? await textOf(tmpl) : null;
  const chat: ChatSetup | null =
    chatTemplate !== null || info ? { chatTemplate, stopTokenIds: info?.stop_token_ids ?? [], stopStrings: info?.stop_strings ?? [] } : null;
  const readmeSrc = get(README_FILE);
  return { adapter, chat, info, readme: readmeSrc ? await textOf(readmeSrc) : null };
}

/** An adapter from a .zip (zip-bomb caps applied before inflating anything). */
export async function importAdapterZip(zip: ByteSource | Uint8Array, spec: ModelSpec, limits: Partial<ZipLimits> = {}): Promise<ImportedAdapter> {
  const src = zip instanceof Uint8Array ? bytesSource(zip, 'adapter.zip') : zip;
  const files = await readZip(src, { ...DEFAULT_ZIP_LIMITS, ...limits });
  const sources = new Map<string, ByteSource>();
  for (const [name, data] of files) sources.set(name, bytesSource(data, `${src.name}:${name}`));
  return importAdapterFolder(sources, spec, src.name);
}
