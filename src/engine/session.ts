/**
 * What the engine worker does for the app, written against a GpuContext so that it runs (and is tested)
 * in Node too: load a model (the offline demo, or a folder's files), train an adapter on prepared rows
 * with progress events, chat with the base or the tuned model, and export the adapter.
 */
import type { GpuContext } from './gpu/context.ts';
import { bytesSource, blobSource, type ByteSource } from '../formats/bytes.ts';
import { loadTokenizer, type LoadedTokenizer, type TokenizerSource } from '../data/tokenizer.ts';
import { tokenizerSourceFromFiles } from '../data/tokenizer-files.ts';
import { demoModelFiles, DEMO_MODEL_ID } from './demo/demo-model.ts';
import { loadBaseWeights, releaseBaseWeights, type BaseWeights } from './model/base-weights.ts';
import { parameterCount, parseModelConfig, type ModelSpec } from './model/config.ts';
import { CheckpointIndex } from './model/weights.ts';
import { Trainer, type TrainConfig, type TrainProgress, type TrainRow } from './train/trainer.ts';
import { Generator } from './generate/generator.ts';
import { ChatSession } from './generate/chat.ts';
import type { GenerationSettings } from './generate/settings.ts';
import { exportAdapterZip } from './share/adapter-zip.ts';
import { loraModules, type PeftLoraConfig } from './model/peft.ts';

export interface ModelInfo {
  id: string;
  architecture: string;
  family: string;
  layers: number;
  hidden: number;
  vocab: number;
  parameters: number;
  quantized: boolean;
  gpuBytes: number;
}

/** XTuner's evaluation_inputs / evaluation_freq: prompts answered by the model in training every N steps. */
export interface EvalOptions {
  prompts: string[];
  every: number;
  settings?: Partial<GenerationSettings>;
}

export interface EvalAnswers {
  step: number;
  answers: { prompt: string; answer: string }[];
}

export interface TrainResult {
  steps: number;
  finalLoss: number;
  stopped: boolean;
}

export type ModelFiles = ReadonlyMap<string, Blob | Uint8Array | string>;

const TOKENIZER_NAMES = new Set(['tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja', 'chat_template.json', 'tokenizer.model', 'special_tokens_map.json']);

export class EngineSession {
  private weights: BaseWeights | null = null;
  private spec: ModelSpec | null = null;
  private modelId = '';
  private tokenizerSrc: TokenizerSource | null = null;
  private tokenizer: LoadedTokenizer | null = null;
  private trainer: Trainer | null = null;
  private stopRequested = false;
  private generator: Generator | null = null;
  private chats = new Map<'base' | 'tuned', ChatSession>();
  private lastLoss = NaN;

  constructor(readonly ctx: GpuContext) {}

  /** The offline demo model (created from a seed, nothing downloaded). */
  async loadDemoModel(seed = 1): Promise<ModelInfo> {
    return this.loadModelFiles(demoModelFiles(seed), { id: DEMO_MODEL_ID, quantize: false });
  }

  /** Loads run one at a time, in call order (a second request waits for the first and then replaces it). */
  private loading: Promise<unknown> = Promise.resolve();

  /** A Hugging Face checkpoint folder's files (config.json, safetensors, tokenizer files). */
  loadModelFiles(files: ModelFiles, opts: { id: string; quantize: boolean }): Promise<ModelInfo> {
    const next = this.loading.catch(() => undefined).then(() => this.load(files, opts));
    this.loading = next;
    return next;
  }

  private async load(files: ModelFiles, opts: { id: string; quantize: boolean }): Promise<ModelInfo> {
    const source = async (name: string): Promise<ByteSource> => {
      const f = files.get(name);
      if (f === undefined) throw new Error(`${opts.id}: no file '${name}' in the model folder`);
      if (typeof f === 'string') return bytesSource(new TextEncoder().encode(f), name);
      return f instanceof Uint8Array ? bytesSource(f, name) : blobSource(f, name);
    };
    const text = async (name: string) => {
      const s = await source(name);
      return new TextDecoder().decode(await s.read(0, s.size));
    };
    const spec = parseModelConfig(await text('config.json'), `${opts.id}/config.json`);
    const tokFiles = new Map<string, string | Uint8Array>();
    for (const name of files.keys()) {
      if (!TOKENIZER_NAMES.has(name)) continue;
      tokFiles.set(name, name === 'tokenizer.model' ? (await source(name).then((s) => s.read(0, s.size))) : await text(name));
    }
    const tokenizerSrc = tokenizerSourceFromFiles(tokFiles, opts.id);
    const tokenizer = loadTokenizer(tokenizerSrc);
    const index = await CheckpointIndex.open(spec, source, [...files.keys()]);
    this.unload();
    this.weights = await loadBaseWeights(this.ctx, index, { quantize: opts.quantize });
    this.spec = spec;
    this.modelId = opts.id;
    this.tokenizerSrc = tokenizerSrc;
    this.tokenizer = tokenizer;
    return this.info();
  }

  info(): ModelInfo {
    const spec = this.requireSpec();
    return {
      id: this.modelId,
      architecture: spec.architecture,
      family: spec.family,
      layers: spec.layers,
      hidden: spec.hidden,
      vocab: spec.vocabSize,
      parameters: parameterCount(spec),
      quantized: this.weights!.quantized,
      gpuBytes: this.ctx.pool.liveBytes,
    };
  }

  tokenizerSource(): TokenizerSource | null {
    return this.tokenizerSrc;
  }

  private requireSpec(): ModelSpec {
    if (!this.spec || !this.weights) throw new Error('no model is loaded: choose one in the Model section first');
    return this.spec;
  }

  /** Trains a fresh adapter on the rows, reporting every step; stop() ends it after the current step. */
  async train(rows: readonly TrainRow[], config: Partial<TrainConfig>, onProgress?: (p: TrainProgress) => void, evaluation?: EvalOptions & { onAnswers: (a: EvalAnswers) => void }): Promise<TrainResult> {
    this.requireSpec();
    this.dropChats();
    this.trainer?.release();
    const trainer = new Trainer(this.ctx, this.weights!, rows, config, this.modelId);
    this.trainer = trainer;
    this.stopRequested = false;
    const evaluate = evaluation && evaluation.prompts.length > 0 && evaluation.every > 0
      ? async (p: TrainProgress) => {
          if (p.step % evaluation.every !== 0 && p.step !== p.totalSteps) return;
          evaluation.onAnswers({ step: p.step, answers: await this.answer(evaluation.prompts, evaluation.settings ?? {}) });
        }
      : undefined;
    await trainer.train(
      (p) => {
        this.lastLoss = p.loss;
        onProgress?.(p);
      },
      () => this.stopRequested,
      evaluate,
    );
    return { steps: this.trainer.step, finalLoss: this.lastLoss, stopped: this.stopRequested };
  }

  stop(): void {
    this.stopRequested = true;
  }

  /** One chat turn with the base model or the tuned one (each keeps its own conversation and cache). */
  async chat(which: 'base' | 'tuned', user: string, settings: Partial<GenerationSettings>, onText?: (delta: string) => void): Promise<string> {
    this.requireSpec();
    if (which === 'tuned' && !this.trainer) throw new Error('no adapter yet: train one in the Train section (or import one)');
    let session = this.chats.get(which);
    if (!session) {
      this.generator ??= await Generator.create(this.ctx, this.weights!, { maxTokens: Math.min(1024, this.spec!.maxPositionEmbeddings) });
      session = new ChatSession(this.generator, this.tokenizer!);
      this.chats.set(which, session);
    }
    // One generator serves both: switching the adapter empties its KV cache, the conversation re-renders.
    this.generator!.setLora(which === 'tuned' ? { layout: this.trainer!.layout, params: this.trainer!.state.params, grads: this.trainer!.state.grads } : null);
    const reply = await session.send(user, settings, onText);
    return reply.text;
  }

  /** Each prompt as a fresh one-turn conversation with the current adapter (greedy unless settings say otherwise). */
  private async answer(prompts: readonly string[], settings: Partial<GenerationSettings>): Promise<{ prompt: string; answer: string }[]> {
    const t = this.trainer!;
    this.generator ??= await Generator.create(this.ctx, this.weights!, { maxTokens: Math.min(1024, this.spec!.maxPositionEmbeddings) });
    this.generator.setLora({ layout: t.layout, params: t.state.params, grads: t.state.grads });
    const out: { prompt: string; answer: string }[] = [];
    for (const prompt of prompts) {
      const reply = await new ChatSession(this.generator, this.tokenizer!).send(prompt, { temperature: 0, maxNewTokens: 64, ...settings });
      out.push({ prompt, answer: reply.text });
    }
    this.chats.clear(); // the generator's cache now holds an evaluation prompt
    return out;
  }

  resetChat(which: 'base' | 'tuned'): void {
    this.chats.get(which)?.clear();
  }

  /** The trained adapter as a PEFT-compatible .zip (with model card, chat template and stop tokens). */
  async exportAdapter(): Promise<Uint8Array> {
    const spec = this.requireSpec();
    if (!this.trainer) throw new Error('no adapter to export: train one first');
    const t = this.trainer;
    const c = t.config;
    const params = await this.ctx.read(t.state.params);
    const config: PeftLoraConfig = { r: c.loraRank, loraAlpha: c.loraAlpha, loraDropout: c.loraDropout, targetModules: c.targets ?? loraModules(spec.family), baseModelNameOrPath: this.modelId };
    const tok = this.tokenizer!;
    return exportAdapterZip({
      spec,
      config,
      tensors: t.layout.unpackPeft(params),
      training: { dataset: { rows: t.rows.length }, hyperParameters: { lr: c.lr, epochs: c.epochs, rank: c.loraRank, alpha: c.loraAlpha, dropout: c.loraDropout, batch: c.microBatch, gradAccum: c.gradAccum }, steps: t.step, finalLoss: Number.isFinite(this.lastLoss) ? this.lastLoss : null },
      chat: { chatTemplate: this.tokenizerSrc?.chatTemplate ?? null, stopTokenIds: tok.eosTokenIds, stopStrings: tok.eosTokenIds.map((id) => tok.decode([id], { skipSpecialTokens: false })) },
    });
  }

  private dropChats(): void {
    this.chats.clear();
    this.generator?.release();
    this.generator = null;
  }

  unload(): void {
    this.dropChats();
    this.trainer?.release();
    this.trainer = null;
    if (this.weights) releaseBaseWeights(this.ctx, this.weights);
    this.weights = null;
    this.spec = null;
  }
}
