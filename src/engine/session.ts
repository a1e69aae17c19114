/**
 * What the engine worker does for the app, written against a GpuContext so that it runs (and is tested)
 * in Node too: load a model (the offline demo, or a folder's files), train an adapter on prepared rows
 * with progress events, chat with the base or the tuned model, and export the adapter.
 */
import { int8MatmulSupport } from './gpu/features.ts';
import type { GpuContext } from './gpu/context.ts';
import { bytesSource, blobSource, type ByteSource } from '../formats/bytes.ts';
import { loadTokenizer, type LoadedTokenizer, type TokenizerSource } from '../data/tokenizer.ts';
import { tokenizerSourceFromFiles } from '../data/tokenizer-files.ts';
import { demoModelFiles, DEMO_MODEL_ID } from './demo/demo-model.ts';
import { loadBaseWeights, releaseBaseWeights, type BaseWeights } from './model/base-weights.ts';
import { modelSpecFromConfig, parameterCount, parseModelConfig, type ModelSpec } from './model/config.ts';
import { CURATED_MODELS } from './model/curated.ts';
import { CheckpointIndex } from './model/weights.ts';
import { longestRow } from '../data/rows.ts';
import { Trainer, type EvalLoss, type TrainConfig, type TrainProgress, type TrainRow } from './train/trainer.ts';
import { Generator } from './generate/generator.ts';
import { ChatSession, chatStopTokenIds, decodeTokensPerSecond, defaultSystemPrompt, generationConfigEosIds } from './generate/chat.ts';
import type { FinishReason, GenerationSettings } from './generate/settings.ts';
import { exportAdapterZip, type AdapterBundle } from './share/adapter-zip.ts';
import { recipeZip, type RecipeRunOptions, type RecipeSample } from './share/recipe.ts';
import { ggufExport, installAdapter, mergedExport, ollamaExport, type AdapterFiles, type ExportFile, type ImportedAdapterSummary, type InstalledAdapter } from './share/adapter-exports.ts';
import type { ExportDType } from './share/dtype.ts';
import type { MergeResult } from './share/merge-export.ts';
import type { SinkFactory } from './share/sinks.ts';
import type { LoraRuntime } from './model/transformer.ts';
import { loraModules, type PeftLoraConfig } from './model/peft.ts';
import { MemoryBlobStore, type BlobStore } from './share/checkpoint.ts';
import { DEFAULT_MATMUL_PRECISION, DEFAULT_TRAIN_CONFIG } from './train/trainer.ts';
import { ceChunkTokens } from './kernels/cross_entropy.ts';
import { formatBytes, planMemory, withAttentionChoice, type MemoryPlan, type TrainingMemoryConfig } from './model/memory-plan.ts';
import { RunCheckpointer, DEFAULT_CHECKPOINT_POLICY, type CheckpointPolicy } from './runs/checkpointer.ts';
import * as runStore from './runs/run-store.ts';
import { DeviceLostError, GpuOutOfMemoryError } from './gpu/errors.ts';
import { availableBytes, describePlan, ExplainedOutOfMemoryError, explainTrainingOutOfMemory } from './train/out-of-memory.ts';
import type { CheckpointInfo, RunDataStats, RunModelSource } from './runs/run-store.ts';

export interface ModelInfo {
  id: string;
  architecture: string;
  family: string;
  /** The projections a LoRA adapter can target in this family (PEFT's module names), in layer order. */
  loraTargets: string[];
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
  /** The run ended before its last step without a stop (pause(), or the trainer paused itself): resumable. */
  paused?: boolean;
  /** Why the trainer paused itself (K non-finite steps in a row: what happened and what to change). */
  pauseReason?: string;
  /** For runs (trainRun/resumeRun): the run and its latest checkpoint. */
  runId?: string;
  checkpoint?: CheckpointInfo | null;
}

/** A stored, resumable training run (trainRun / resumeRun): its id, evaluation prompts and checkpoint policy. */
export interface RunOptions {
  runId: string;
  /**
   * Evaluation every N steps (and at the last): the prompts answered, and the eval loss measured on the
   * held-out rows. Without it the eval loss is measured about ten times a run.
   */
  evaluation?: EvalOptions;
  /** trainRun: held-out rows (the data split's eval rows), stored with the run; a resumed run uses those. */
  evalRows?: readonly TrainRow[];
  checkpoint?: Partial<CheckpointPolicy>;
  /**
   * The user's GPU memory budget: while the run sets up and trains, the buffer pool refuses to hold more
   * than this (model included), so a run that would not fit stops with the memory plan and what to change
   * instead of pushing the GPU (and the browser) out of memory.
   */
  memoryBudgetBytes?: number;
}

/** What a run reports while it trains, in order: started, then progress / answers / checkpoint events. */
export type RunEvent =
  | { type: 'started'; runId: string; step: number; totalSteps: number; data: RunDataStats; model: RunModelSource }
  | { type: 'progress'; progress: TrainProgress }
  | { type: 'answers'; answers: EvalAnswers }
  /** The adapter's mean loss on the held-out rows after `step` (Trainer.evalLoss). */
  | { type: 'eval-loss'; step: number; loss: number; tokens: number }
  | { type: 'checkpoint'; checkpoint: CheckpointInfo }
  /** A periodic checkpoint failed (quota, disk): training goes on, the previous checkpoint stays current. */
  | { type: 'checkpoint-error'; message: string };

export type { CheckpointInfo, RunDataStats, RunModelSource };

/** One chat reply and its numbers. */
export interface ChatTurn {
  text: string;
  /** Generated tokens (the stop token included when one ended it). */
  tokens: number;
  finishReason: FinishReason;
  promptTokens: number;
  /** Prompt tokens whose keys and values were already in this side's KV cache (not computed again). */
  reusedTokens: number;
  /** Prompt tokens computed for this turn (promptTokens − reusedTokens): a follow-up turn's new part only. */
  prefilledTokens: number;
  prefillMs: number;
  decodeMs: number;
  /** Decoding speed (tokens after the first per second of decoding). */
  tokensPerSecond: number;
}

export type ModelFiles = ReadonlyMap<string, Blob | Uint8Array | string>;

/** A curated model's predicted training memory (or why it could not be planned). */
export type CuratedPlan = { id: string; totalBytes: number; fits: boolean; parameters: number } | { id: string; error: string };

/** What a lost GPU device cost and what came back (EngineSession.afterDeviceLoss). */
export interface DeviceLossReport {
  /** For the user: what happened, what was restored, what to do. */
  message: string;
  /** The first part of `message` only: what happened and what was restored, without what to do about a run. */
  restored: string;
  /** The model, loaded again on the new device (null when none was loaded or it could not be). */
  model: ModelInfo | null;
  /** The run that was training when the device was lost, and its last checkpoint (resume continues from it). */
  runId: string | null;
  checkpoint: CheckpointInfo | null;
  wasTraining: boolean;
}

const TOKENIZER_NAMES = new Set(['tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja', 'chat_template.json', 'tokenizer.model', 'special_tokens_map.json']);

/** The rejection of a merged export the user cancelled. */
export class MergeCancelledError extends Error {
  override name = 'MergeCancelledError';
  constructor() {
    super('the merged export was cancelled');
  }
}

export class EngineSession {
  private exportAbort: AbortController | null = null;
  private weights: BaseWeights | null = null;
  private spec: ModelSpec | null = null;
  private modelId = '';
  private tokenizerSrc: TokenizerSource | null = null;
  private tokenizer: LoadedTokenizer | null = null;
  /** generation_config.json's eos_token_id list of the loaded model ([] without one). */
  private generationEos: number[] = [];
  private trainer: Trainer | null = null;
  private stopRequested = false;
  /**
   * One generator (own KV cache) per side, so alternating base and tuned turns never discards the other
   * side's cache; each keeps it across turns while its adapter's weights are unchanged (tunedVersion).
   */
  private generators = new Map<'base' | 'tuned', Generator>();
  /**
   * The tuned adapter's weights version: bumped wherever they change (a new or loaded trainer, every
   * training step, an import or its removal); the tuned generator's cache remembers the version it was
   * computed with and is emptied when it differs.
   */
  private tunedVersion = 0;
  private chats = new Map<'base' | 'tuned', ChatSession>();
  /** The chat's system prompt (both sides); null: the template's default. */
  private chatSystem: string | null = null;
  /** The reply being generated per side: stopGeneration aborts it between two tokens. */
  private chatAborts = new Map<'base' | 'tuned', AbortController>();
  private lastLoss = NaN;
  /** An adapter imported in Share: the tuned model until the next training run (the latest of the two wins). */
  private imported: InstalledAdapter | null = null;
  /** The loaded base's files and index, for the merged export. */
  private baseFiles: ModelFiles | null = null;
  private baseIndex: CheckpointIndex | null = null;
  private modelSource: RunModelSource | null = null;
  private pauseRequested = false;
  private training = false;
  /** The stored run that is training now (trainRun / resumeRun), if any. */
  private activeRun: string | null = null;
  /** Set when a lost device ended training (afterDeviceLoss reports the run). */
  private interruptedByLoss: { runId: string | null } | null = null;

  /** `store`: where runs keep their rows and checkpoints (OPFS in the app's worker). */
  constructor(
    readonly ctx: GpuContext,
    readonly store: BlobStore = new MemoryBlobStore(),
  ) {}

  /** The offline demo model (created from a seed, nothing downloaded). */
  async loadDemoModel(seed = 1): Promise<ModelInfo> {
    const next = this.loading.catch(() => undefined).then(() => this.load(demoModelFiles(seed), { id: DEMO_MODEL_ID, quantize: false }, { kind: 'demo', id: DEMO_MODEL_ID, seed }));
    this.loading = next;
    return next;
  }

  /** Loads run one at a time, in call order (a second request waits for the first and then replaces it). */
  private loading: Promise<unknown> = Promise.resolve();

  /** A Hugging Face checkpoint folder's files (config.json, safetensors, tokenizer files). */
  loadModelFiles(files: ModelFiles, opts: { id: string; quantize: boolean }): Promise<ModelInfo> {
    const next = this.loading.catch(() => undefined).then(() => this.load(files, opts));
    this.loading = next;
    return next;
  }

  private async load(files: ModelFiles, opts: { id: string; quantize: boolean }, origin?: RunModelSource): Promise<ModelInfo> {
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
    // transformers stops generation on every id of generation_config's eos_token_id (a list for the chat
    // models whose end-of-turn token differs from eos: Llama-3.2's <|eot_id|>, Qwen's <|im_end|>).
    const generationEos = files.has('generation_config.json') ? generationConfigEosIds(await text('generation_config.json'), `${opts.id}/generation_config.json`) : [];
    const index = await CheckpointIndex.open(spec, source, [...files.keys()]);
    this.unload();
    try {
      this.weights = await this.ctx.allocating(`the weights of ${opts.id}`, () => loadBaseWeights(this.ctx, index, { quantize: opts.quantize }));
    } catch (err) {
      throw this.explainLoadOutOfMemory(err, spec, opts);
    }
    this.spec = spec;
    this.modelId = opts.id;
    this.modelSource = origin ?? { kind: 'files', id: opts.id, quantized: this.weights.quantized };
    this.tokenizerSrc = tokenizerSrc;
    this.tokenizer = tokenizer;
    this.generationEos = generationEos;
    this.baseFiles = files;
    this.baseIndex = index;
    return this.info();
  }

  /** Where a reply ends: the tokenizer's eos and end-of-turn tokens, config.json's and generation_config.json's eos ids. */
  private stopTokenIds(): number[] {
    return chatStopTokenIds(this.tokenizer!, this.spec!.eosTokenIds, this.generationEos);
  }

  info(): ModelInfo {
    const spec = this.requireSpec();
    return {
      id: this.modelId,
      architecture: spec.architecture,
      family: spec.family,
      loraTargets: loraModules(spec.family),
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
    return this.drive(this.newTrainer(rows, config), onProgress, evaluation);
  }

  /** Replaces the current adapter with a fresh trainer (not while one trains). */
  private newTrainer(rows: readonly TrainRow[], config: Partial<TrainConfig>, evalRows: readonly TrainRow[] = []): Trainer {
    if (this.training) throw new Error('a run is training: pause or stop it first');
    this.dropChats();
    this.dropImported();
    this.trainer?.release();
    this.trainer = null;
    this.tunedVersion++;
    // Under a memory budget, unset keepAttention becomes the plan's choice (kept where it then fits); the
    // trainer's config, which the run stores, carries it, so a resumed run makes the same choice.
    const budget = this.ctx.pool.budgetBytes;
    if (config.keepAttention === undefined && budget !== null && rows.length > 0) {
      const mc = this.memoryConfig(this.spec!, config, longestRow(rows), { evalSeqLen: longestRow(evalRows), budgetBytes: budget });
      config = { ...config, keepAttention: mc.keepAttention };
    }
    // The adapter and optimizer state: on failure half-way, what was allocated goes back to the pool.
    const scope = this.ctx.pool.openScope();
    try {
      this.trainer = new Trainer(this.ctx, this.weights!, rows, config, this.modelId, evalRows.length ? { evalRows } : {});
      scope.commit();
    } catch (err) {
      scope.rollback();
      throw this.explainOutOfMemory(err, config, longestRow(rows), 'Nothing was trained yet; no checkpoint was touched.', longestRow(evalRows));
    }
    return this.trainer;
  }

  /** A GpuOutOfMemoryError from training, explained with the memory plan of `config` (other errors pass through). */
  private explainOutOfMemory(err: unknown, config: Partial<TrainConfig>, seqLen: number, runNote: string, evalSeqLen = 0): unknown {
    if (!(err instanceof GpuOutOfMemoryError) || err instanceof ExplainedOutOfMemoryError || !this.spec || !this.weights) return err;
    const mc = this.memoryConfig(this.spec, config, Math.max(1, seqLen), { evalSeqLen });
    let plan: MemoryPlan | null = null;
    try {
      plan = planMemory(this.spec, mc, { budgetBytes: availableBytes(err) });
    } catch {
      // Settings the planner rejects: the advice then comes from the settings alone.
    }
    return explainTrainingOutOfMemory(err, plan, mc, runNote);
  }

  /** A model that does not fit: its weights' size from the plan and what to load instead. */
  private explainLoadOutOfMemory(err: unknown, spec: ModelSpec, opts: { id: string; quantize: boolean }): unknown {
    if (!(err instanceof GpuOutOfMemoryError)) return err;
    let plan: MemoryPlan | null = null;
    try {
      plan = planMemory(spec, this.memoryConfig(spec, {}, 512, { quantized: opts.quantize }), { budgetBytes: availableBytes(err) });
    } catch {
      // No plan for this spec: the message goes without the sizes.
    }
    const suggestions = [
      ...(opts.quantize ? [] : ['Load it in 4 bits (QLoRA): about 1/7 of the f32 weights']),
      'Choose a smaller model',
      'Close other tabs or programs that use the GPU, then load again',
    ];
    const lines = [
      `Loading ${opts.id} ran out of GPU memory ${err.message.replace(/^out of GPU memory /, '')}. No model is loaded now; nothing stored was changed.`,
      ...(plan ? [`Its ${opts.quantize ? '4-bit' : 'f32'} weights need about ${formatBytes(plan.weights.bytes)} on the GPU (${formatBytes(plan.loadingPeakBytes)} while loading); training at 512 tokens: ${describePlan(plan)}.`] : []),
      'What to change:',
      ...suggestions.map((x) => `  • ${x}`),
    ];
    return new ExplainedOutOfMemoryError(err, plan, suggestions, lines.join('\n'));
  }

  /** Trains until done, stop() or pause(); `afterStep` (checkpoints) runs after each step's evaluation. */
  private async drive(
    trainer: Trainer,
    onProgress?: (p: TrainProgress) => void,
    evaluation?: EvalOptions & { onAnswers: (a: EvalAnswers) => void; onEvalLoss?: (e: { step: number } & EvalLoss) => void },
    afterStep?: () => Promise<void>,
  ): Promise<TrainResult> {
    this.stopRequested = false;
    this.pauseRequested = false;
    this.training = true;
    const every = evaluation && evaluation.every > 0 ? evaluation.every : Math.max(1, Math.round(trainer.totalSteps / 10));
    const due = (p: TrainProgress) => p.step % every === 0 || p.step === p.totalSteps;
    const evaluate = async (p: TrainProgress) => {
      if (!evaluation || !due(p)) return;
      if (evaluation.onEvalLoss && trainer.hasEvalRows) {
        const r = await trainer.evalLoss();
        if (r) evaluation.onEvalLoss({ step: p.step, ...r });
      }
      if (evaluation.prompts.length > 0 && evaluation.every > 0) evaluation.onAnswers({ step: p.step, answers: await this.answer(evaluation.prompts, evaluation.settings ?? {}) });
    };
    try {
      await trainer.train(
        (p) => {
          this.tunedVersion++; // the step changed the adapter's weights
          this.lastLoss = p.loss;
          onProgress?.(p);
        },
        () => this.stopRequested || this.pauseRequested,
        async (p) => {
          await evaluate(p);
          await afterStep?.();
        },
      );
    } catch (err) {
      // A device lost mid-step surfaces as whatever GPU call failed first: name the real cause.
      if (this.ctx.isLost) {
        this.interruptedByLoss = { runId: this.activeRun };
        const lost = await this.ctx.lost;
        throw new DeviceLostError(lost.reason, `${lost.message.replace(/^the GPU device was lost \([^)]*\): /, '')} — training stopped after step ${trainer.step}; the run keeps its last checkpoint and can be resumed once the GPU is back`);
      }
      // Out of memory (the device, or the pool's budget): what ran out, the plan of these settings, what to change.
      if (err instanceof GpuOutOfMemoryError) {
        const runId = this.activeRun;
        const ckpt = runId ? await runStore.runCheckpointInfo(this.store, runId).catch(() => null) : null;
        const note = runId
          ? ckpt
            ? `Nothing was lost: run ${runId} keeps its last checkpoint (step ${ckpt.step}), intact; resume it once memory is free, or start a new run with the changes.`
            : `Run ${runId} had no checkpoint yet: start a new run with the changes.`
          : `The adapter trained so far (step ${trainer.step}) stays loaded.`;
        throw this.explainOutOfMemory(err, trainer.config, trainer.seq, note, trainer.evalSeq);
      }
      throw err;
    } finally {
      this.training = false;
      this.tunedVersion++; // also after a step that failed half-way through its update
    }
    const stopped = this.stopRequested;
    return { steps: trainer.step, finalLoss: this.lastLoss, stopped, paused: !stopped && trainer.step < trainer.totalSteps, ...(trainer.pause ? { pauseReason: trainer.pause.message } : {}) };
  }

  stop(): void {
    this.stopRequested = true;
  }

  /**
   * A session on a fresh GpuContext after this one's device was lost (driver reset, GPU taken, sleep):
   * the same store (runs and their checkpoints live outside the GPU, untouched), and the same model
   * loaded again from what it was loaded from. A run that was training is left paused at its last
   * checkpoint, to be continued with resumeRun; nothing of the old device is reused.
   */
  static async afterDeviceLoss(lost: EngineSession, ctx: GpuContext): Promise<{ session: EngineSession; report: DeviceLossReport }> {
    const session = new EngineSession(ctx, lost.store);
    const interrupted = lost.interruptedByLoss ?? (lost.training ? { runId: lost.activeRun } : null);
    const runId = interrupted?.runId ?? null;
    const wasTraining = interrupted !== null;
    const checkpoint = runId ? await runStore.runCheckpointInfo(lost.store, runId).catch(() => null) : null;
    let model: ModelInfo | null = null;
    let modelNote = 'no model was loaded';
    const src = lost.modelSource;
    try {
      if (src?.kind === 'demo') model = await session.loadDemoModel(src.seed);
      else if (src && lost.baseFiles) model = await session.loadModelFiles(lost.baseFiles, { id: lost.modelId, quantize: src.quantized });
      if (model) modelNote = `${model.id} is loaded again`;
    } catch (err) {
      modelNote = `loading ${lost.modelId} again failed (${(err as Error).message}); load it in the Model section`;
    }
    const reason = (await Promise.race([lost.ctx.lost, Promise.resolve(null)]))?.message ?? 'the GPU device was lost';
    const training = wasTraining
      ? runId
        ? ` The training run paused; ${checkpoint ? `its last checkpoint (step ${checkpoint.step}) is intact and it can be resumed from there` : 'it had no checkpoint yet, so it starts again from step 0 when resumed'}.`
        : ' The training run that was going stopped; an adapter that was not saved must be trained again.'
      : '';
    const restored = `${reason.replace(/[.\s]+$/, '')}. A new GPU device was set up and ${modelNote}.`;
    return { session, report: { message: `${restored}${training}`, restored, model, runId, checkpoint, wasTraining } };
  }

  /** Ends the run after the current step and checkpoints it (trainRun/resumeRun), so it can be resumed. */
  pause(): void {
    this.pauseRequested = true;
  }

  /**
   * A new stored run: its config, the model it trains and its rows go to the store first, then it trains
   * with checkpoints (policy; always at pause, stop and the end) and, once finished or stopped, its
   * adapter zip. A fresh page can continue it with resumeRun.
   */
  async trainRun(rows: readonly TrainRow[], config: Partial<TrainConfig>, opts: RunOptions, onEvent: (e: RunEvent) => void): Promise<TrainResult> {
    this.requireSpec();
    runStore.checkRunId(opts.runId);
    return this.withinBudget(opts.memoryBudgetBytes, async () => {
      const evalRows = opts.evalRows ?? [];
      const trainer = this.newTrainer(rows, config, evalRows);
      const manifest = await runStore.createRun(this.store, { id: opts.runId, model: this.modelSource!, config: trainer.config, rows, evalRows });
      return this.driveRun(trainer, manifest, opts, null, onEvent);
    });
  }

  /** Continues a stored run from its last checkpoint (loading the demo model it was trained on if needed). */
  async resumeRun(opts: RunOptions, onEvent: (e: RunEvent) => void): Promise<TrainResult> {
    return this.withinBudget(opts.memoryBudgetBytes, async () => {
      const { trainer, manifest, step } = await this.openStoredRun(opts.runId);
      return this.driveRun(trainer, manifest, opts, step, onEvent);
    });
  }

  /** Runs `fn` with the pool capped at `budget` bytes (none: the device's own limit), restoring the cap after. */
  private async withinBudget<T>(budget: number | undefined, fn: () => Promise<T>): Promise<T> {
    if (budget === undefined) return fn();
    if (!(budget > 0)) throw new Error(`memory budget must be a positive number of bytes, got ${budget}`);
    const pool = this.ctx.pool;
    const before = pool.budgetBytes;
    pool.budgetBytes = budget;
    try {
      return await fn();
    } finally {
      pool.budgetBytes = before;
    }
  }

  /** Loads a stored run's latest checkpoint as the tuned model (for chat and export); its step and length. */
  async openRun(runId: string): Promise<{ step: number; totalSteps: number }> {
    const { trainer } = await this.openStoredRun(runId);
    this.lastLoss = NaN;
    return { step: trainer.step, totalSteps: trainer.totalSteps };
  }

  private async openStoredRun(runId: string): Promise<{ trainer: Trainer; manifest: runStore.RunManifest; step: number }> {
    if (this.training) throw new Error('a run is training: pause or stop it first');
    const { manifest, rows, evalRows } = await runStore.readRun(this.store, runId);
    await this.useRunModel(manifest.model);
    const state = await runStore.loadRunCheckpoint(this.store, runId);
    if (!state) throw new runStore.RunStoreError(`run '${runId}' has no checkpoint yet (it was closed before its first save): start it again`);
    const trainer = this.newTrainer(rows, manifest.config, evalRows);
    trainer.loadState(state);
    this.tunedVersion++;
    return { trainer, manifest, step: state.step };
  }

  /** Makes the run's base model the loaded one: the demo model is re-created from its seed; others must be loaded by the user. */
  private async useRunModel(source: RunModelSource): Promise<void> {
    await this.loading.catch(() => undefined);
    const cur = this.modelSource;
    if (cur && JSON.stringify(cur) === JSON.stringify(source)) return;
    if (source.kind === 'demo') {
      await this.loadDemoModel(source.seed);
      return;
    }
    throw new Error(`this run trains ${source.id} (${source.quantized ? '4-bit' : 'f32'} base); ${cur ? `the loaded model is ${cur.id}` : 'no model is loaded'}: load ${source.id} in the Model section, then resume`);
  }

  private async driveRun(trainer: Trainer, manifest: runStore.RunManifest, opts: RunOptions, resumedFrom: number | null, onEvent: (e: RunEvent) => void): Promise<TrainResult> {
    const runId = manifest.id;
    onEvent({ type: 'started', runId, step: trainer.step, totalSteps: trainer.totalSteps, data: manifest.data, model: manifest.model });
    const policy = { ...DEFAULT_CHECKPOINT_POLICY, ...opts.checkpoint };
    const ckpt = new RunCheckpointer(this.store, runId, trainer, policy, resumedFrom, (c) => onEvent({ type: 'checkpoint', checkpoint: c }));
    const evaluation = {
      ...(opts.evaluation ?? { prompts: [], every: 0 }),
      onAnswers: (a: EvalAnswers) => onEvent({ type: 'answers', answers: a }),
      onEvalLoss: (e: { step: number } & EvalLoss) => onEvent({ type: 'eval-loss', ...e }),
    };
    this.activeRun = runId;
    try {
      const result = await this.drive(trainer, (p) => onEvent({ type: 'progress', progress: p }), evaluation, async () => {
        // A failed periodic save is reported and training goes on; the previous checkpoint stays current.
        await ckpt.afterStep().catch((e: unknown) => onEvent({ type: 'checkpoint-error', message: e instanceof Error ? e.message : String(e) }));
      });
      const checkpoint = await ckpt.save();
      if (!result.paused) await runStore.saveRunAdapter(this.store, runId, await this.exportAdapter());
      return { ...result, runId, checkpoint };
    } finally {
      this.activeRun = null;
    }
  }

  /** A stored run's adapter zip: the one written when it ended, else one made from its last checkpoint. */
  async exportRunAdapter(runId: string): Promise<Uint8Array> {
    const zip = await runStore.readRunAdapter(this.store, runId);
    if (zip) return zip;
    await this.openRun(runId);
    return this.exportAdapter();
  }

  /** The current checkpoint of a stored run (step, time, size), or null. */
  runCheckpoint(runId: string): Promise<CheckpointInfo | null> {
    return runStore.runCheckpointInfo(this.store, runId);
  }

  /** Ids of the runs kept in the store. */
  storedRuns(): Promise<string[]> {
    return runStore.listRunIds(this.store);
  }

  /** Removes a stored run's rows, checkpoints and adapter. */
  async deleteRun(runId: string): Promise<void> {
    if (this.activeRun === runId) throw new Error('this run is training: stop it first');
    await runStore.deleteRun(this.store, runId);
  }

  /**
   * The predicted GPU memory of training each curated model (src/engine/model/curated.ts) with `config` on rows of
   * `seqLen` tokens, 4-bit or f32 base, before any of it is downloaded. LoRA targets are the family's own
   * module names, so a stored choice for another family does not carry over: every linear layer is planned.
   */
  planCuratedTraining(config: Partial<TrainConfig>, seqLen: number, quantized: boolean, budgetBytes?: number): CuratedPlan[] {
    const { targets: _familyNames, ...rest } = config;
    return CURATED_MODELS.map((m) => {
      try {
        const spec = modelSpecFromConfig(m.config, `${m.id} config.json`);
        const plan = planMemory(spec, this.memoryConfig(spec, rest, seqLen, { quantized, budgetBytes }), budgetBytes === undefined ? {} : { budgetBytes });
        return { id: m.id, totalBytes: plan.totalBytes, fits: plan.fits, parameters: parameterCount(spec) };
      } catch (e) {
        return { id: m.id, error: e instanceof Error ? e.message : String(e) };
      }
    });
  }

  /**
   * The predicted GPU memory of training the loaded model with `config` on rows of `seqLen` tokens
   * (src/engine/model/memory-plan.ts), against `budgetBytes`; with advice when it does not fit.
   */
  planTraining(config: Partial<TrainConfig>, seqLen: number, budgetBytes?: number, evalSeqLen = 0): MemoryPlan {
    const spec = this.requireSpec();
    return planMemory(spec, this.memoryConfig(spec, config, seqLen, { evalSeqLen, budgetBytes }), budgetBytes === undefined ? {} : { budgetBytes });
  }

  /**
   * The planner's view of a training config on the loaded model (or, while loading, one `quantized` or not),
   * with held-out rows of `evalSeqLen` tokens when the run measures an eval loss.
   */
  private memoryConfig(spec: ModelSpec, config: Partial<TrainConfig>, seqLen: number, opts: { quantized?: boolean; evalSeqLen?: number; budgetBytes?: number } = {}): TrainingMemoryConfig {
    const quantized = opts.quantized ?? this.weights?.quantized ?? false;
    const evalSeqLen = opts.evalSeqLen ?? 0;
    const c = { ...DEFAULT_TRAIN_CONFIG, ...config };
    const mc: TrainingMemoryConfig = {
      seqLen,
      microBatch: c.microBatch,
      loraRank: c.loraRank,
      ...(c.targets ? { targets: c.targets } : {}),
      quantBits: quantized ? 4 : 32,
      groupSize: 64,
      optimizerOffload: c.optimizerOffload ?? 'gpu',
      activationCheckpointing: true,
      ...(c.keepAttention === undefined ? {} : { keepAttention: c.keepAttention }),
      ceChunkTokens: ceChunkTokens(spec.vocabSize, seqLen * c.microBatch, { chunkTokens: c.lossChunkTokens, limits: this.ctx.limits }),
      int8Matmuls: (c.matmulPrecision ?? DEFAULT_MATMUL_PRECISION) === 'int8' && int8MatmulSupport(this.ctx.features).ok,
      ...(evalSeqLen > 0 ? { evalSeqLen } : {}),
    };
    // Unset keepAttention against a budget: kept where the plan then fits, as newTrainer decides it.
    return opts.budgetBytes === undefined ? mc : withAttentionChoice(spec, mc, opts.budgetBytes);
  }

  /** One chat turn with the base model or the tuned one (each keeps its own conversation and cache). */
  async chat(which: 'base' | 'tuned', user: string, settings: Partial<GenerationSettings>, onText?: (delta: string) => void): Promise<string> {
    return (await this.chatTurn(which, user, settings, onText)).text;
  }

  /** chat() with the reply's numbers; stopGeneration(which) ends it early, keeping the partial reply in the conversation. */
  async chatTurn(which: 'base' | 'tuned', user: string, settings: Partial<GenerationSettings>, onText?: (delta: string) => void): Promise<ChatTurn> {
    this.requireSpec();
    const tuned = this.tunedLora();
    if (which === 'tuned' && !tuned) throw new Error('no adapter yet: train one in the Train section (or import one in Share)');
    const generator = await this.generatorFor(which);
    let session = this.chats.get(which);
    if (!session) {
      session = new ChatSession(generator, this.tokenizer!, { stopTokenIds: this.stopTokenIds(), ...(this.chatSystem !== null ? { system: this.chatSystem } : {}) });
      this.chats.set(which, session);
    }
    // The side's cache stays when its adapter's weights are the ones it was computed with: only the new turn is prefilled.
    generator.useAdapter(which === 'tuned' ? tuned : null, which === 'tuned' ? this.tunedVersion : 0);
    const abort = new AbortController();
    this.chatAborts.set(which, abort);
    try {
      const { text, result } = await session.send(user, settings, onText, abort.signal);
      return { text, tokens: result.tokens.length, finishReason: result.finishReason, promptTokens: result.promptTokens, reusedTokens: result.reusedTokens, prefilledTokens: result.promptTokens - result.reusedTokens, prefillMs: result.prefillMs, decodeMs: result.decodeMs, tokensPerSecond: decodeTokensPerSecond(result) };
    } finally {
      if (this.chatAborts.get(which) === abort) this.chatAborts.delete(which);
    }
  }

  /** Stops the reply being generated for one side (or both): it ends after the current token. */
  stopGeneration(which?: 'base' | 'tuned'): void {
    for (const [side, abort] of this.chatAborts) if (which === undefined || which === side) abort.abort();
  }

  /** The side's generator, created on first use (its KV cache holds that side's conversation). */
  private async generatorFor(which: 'base' | 'tuned'): Promise<Generator> {
    let g = this.generators.get(which);
    if (!g) {
      const maxTokens = Math.min(1024, this.spec!.maxPositionEmbeddings);
      // Under an out-of-memory scope: a device (or budget) that refuses the cache gives a GpuOutOfMemoryError
      // naming it, and whatever was allocated goes back to the pool.
      g = await this.ctx.allocating(`the ${which} chat's KV cache (${maxTokens} tokens)`, () => Generator.create(this.ctx, this.weights!, { maxTokens }));
      this.generators.set(which, g);
    }
    return g;
  }

  /** The chat template's default system prompt (null when it has none), for the editor's initial text. */
  chatDefaultSystem(): string | null {
    return this.tokenizer ? defaultSystemPrompt(this.tokenizer) : null;
  }

  /** Each prompt as a fresh one-turn conversation with the current adapter (greedy unless settings say otherwise). */
  private async answer(prompts: readonly string[], settings: Partial<GenerationSettings>): Promise<{ prompt: string; answer: string }[]> {
    const t = this.trainer!;
    // The tuned side's generator: its cache then holds an evaluation prompt, which the tuned conversation's
    // next turn shares only a prefix with (generate reuses just that).
    const generator = await this.generatorFor('tuned');
    generator.useAdapter({ layout: t.layout, params: t.state.params, grads: t.state.grads }, this.tunedVersion);
    const out: { prompt: string; answer: string }[] = [];
    for (const prompt of prompts) {
      const reply = await new ChatSession(generator, this.tokenizer!, { stopTokenIds: this.stopTokenIds() }).send(prompt, { temperature: 0, maxNewTokens: 64, ...settings });
      out.push({ prompt, answer: reply.text });
    }
    return out;
  }

  /** A new conversation for one side; with `system`, under that system prompt (null: the template's default) for both sides from now on. */
  resetChat(which: 'base' | 'tuned', system?: string | null): void {
    if (system !== undefined) {
      this.chatSystem = system;
      const def = this.tokenizer ? defaultSystemPrompt(this.tokenizer) : null;
      for (const s of this.chats.values()) s.system = system ?? def ?? '';
    }
    this.chats.get(which)?.clear();
  }

  /** The tuned model's adapter (trained here or imported) with its card, chat template and stop tokens. */
  private async adapterBundle(): Promise<AdapterBundle> {
    const spec = this.requireSpec();
    if (this.imported) return this.imported.bundle;
    if (!this.trainer) throw new Error('no adapter to export: train one first (or import one)');
    const t = this.trainer;
    const c = t.config;
    const params = await this.ctx.read(t.state.params);
    const config: PeftLoraConfig = { r: c.loraRank, loraAlpha: c.loraAlpha, loraDropout: c.loraDropout, targetModules: c.targets ?? loraModules(spec.family), baseModelNameOrPath: this.modelId };
    const tok = this.tokenizer!;
    return {
      spec,
      config,
      tensors: t.layout.unpackPeft(params),
      training: { dataset: { rows: t.rows.length }, hyperParameters: { lr: c.lr, epochs: c.epochs, rank: c.loraRank, alpha: c.loraAlpha, dropout: c.loraDropout, batch: c.microBatch, gradAccum: c.gradAccum }, steps: t.step, finalLoss: Number.isFinite(this.lastLoss) ? this.lastLoss : null },
      // The template in effect (a chat_template.jinja, or tokenizer_config.json's chat_template).
      chat: { chatTemplate: tok.chatTemplate, stopTokenIds: this.stopTokenIds(), stopStrings: this.stopTokenIds().map((id) => tok.decode([id], { skipSpecialTokens: false })) },
    };
  }

  /** The adapter as a PEFT-compatible .zip (with model card, chat template and stop tokens). */
  async exportAdapter(): Promise<Uint8Array> {
    return exportAdapterZip(await this.adapterBundle());
  }

  /** The adapter as a GGUF LoRA (llama.cpp) or an Ollama package (adapter.gguf + Modelfile, zipped). */
  async exportAdapterAs(format: 'gguf' | 'ollama'): Promise<ExportFile> {
    const b = await this.adapterBundle();
    return format === 'gguf' ? ggufExport(b, this.modelId) : ollamaExport(b, this.modelId);
  }

  /**
   * Base + adapter merged into a Hugging Face checkpoint in `dtype`: streamed into `open` (a folder the user
   * picked), or with `open` null into a zip in memory (small models only; the error says what to do otherwise).
   */
  async exportMerged(dtype: ExportDType, open: SinkFactory | null, onProgress?: (p: { tensor: string; done: number; total: number }) => void): Promise<{ result: MergeResult; zip: ExportFile | null }> {
    const b = await this.adapterBundle();
    if (this.exportAbort) throw new Error('a merged export is already running: wait for it or cancel it');
    const abort = new AbortController();
    this.exportAbort = abort;
    try {
      return await mergedExport(this.baseIndex!, b, open, { dtype, modelId: this.modelId, baseFiles: this.baseFiles!, signal: abort.signal, ...(onProgress ? { onProgress } : {}) });
    } finally {
      this.exportAbort = null;
    }
  }

  /** Cancels the merged export in progress (between tensors; its exportMerged rejects with MergeCancelledError). */
  cancelExport(): void {
    this.exportAbort?.abort(new MergeCancelledError());
  }

  /**
   * A PEFT adapter (.zip bytes, or a folder's files by relative path) checked against the loaded base — a
   * shape mismatch names the tensor and both shapes — and installed as the tuned model for Chat.
   */
  async importAdapter(input: Uint8Array | AdapterFiles, source = 'adapter.zip'): Promise<ImportedAdapterSummary> {
    const spec = this.requireSpec();
    if (this.training) throw new Error('a run is training: pause or stop it first');
    // Under an out-of-memory scope: a refused buffer names the adapter, and the tuned model in place stays.
    const installed = await this.ctx.allocating(`the adapter ${source}`, () => installAdapter(this.ctx, spec, input, { source, modelId: this.modelId, chatTemplate: this.tokenizer?.chatTemplate ?? null }));
    this.dropImported();
    this.imported = installed;
    this.tunedVersion++;
    this.chats.delete('tuned');
    return installed.summary;
  }

  /** The tuned side's adapter: the imported one, else the trained one. */
  private tunedLora(): LoraRuntime | null {
    if (this.imported) return this.imported.lora;
    const t = this.trainer;
    return t ? { layout: t.layout, params: t.state.params, grads: t.state.grads } : null;
  }

  private dropImported(): void {
    if (!this.imported) return;
    this.chats.delete('tuned');
    this.generators.get('tuned')?.setLora(null); // its passes read the buffers released here
    this.imported.release();
    this.imported = null;
    this.tunedVersion++;
  }

  /** The last run's hyper-parameters (or opts.config) on this model as a recipe zip for a GPU cluster (share/recipe.ts). */
  exportRecipe(samples: readonly RecipeSample[], opts: RecipeRunOptions): Uint8Array {
    const spec = this.requireSpec();
    const config = { ...(this.trainer?.config ?? {}), ...opts.config };
    return recipeZip({ modelId: this.modelId, family: spec.family, config, maxLength: opts.maxLength, pack: opts.pack, quantize: this.weights!.quantized, chatTemplate: this.tokenizerSrc?.chatTemplate ?? null, samples, ...(opts.evaluation ? { evaluation: opts.evaluation } : {}) });
  }

  private dropChats(): void {
    this.chats.clear();
    for (const g of this.generators.values()) g.release();
    this.generators.clear();
  }

  unload(): void {
    this.dropChats();
    this.dropImported();
    this.baseFiles = null;
    this.baseIndex = null;
    this.trainer?.release();
    this.trainer = null;
    if (this.weights) releaseBaseWeights(this.ctx, this.weights);
    this.weights = null;
    this.spec = null;
    this.modelSource = null;
  }
}
