/**
 * The one typed interface between the UI thread and the engine worker. The worker implements it; the UI
 * holds a comlink proxy of it (src/ui/engine-client.ts). Plain data crosses the boundary, never GPU objects.
 */
import type { GpuSummary } from './gpu/context.ts';
import type { EvalAnswers, EvalOptions, ModelInfo, TrainResult, RunOptions, RunEvent, CheckpointInfo, RunDataStats, RunModelSource } from './session.ts';
import type { MemoryPlan } from './model/memory-plan.ts';
import type { TrainConfig, TrainProgress, TrainRow } from './train/trainer.ts';
import type { GenerationSettings } from './generate/settings.ts';
import type { ChatTurn, CuratedPlan, DeviceLossReport } from './session.ts';
import type { TokenizerSource } from '../data/tokenizer.ts';
import type { CachedModel, HubProgress } from '../hub/service.ts';
import type { RecipeRunOptions, RecipeSample } from './share/recipe.ts';

export type { CachedModel, HubProgress, RecipeRunOptions, RecipeSample };
import type { ExportFile, ImportedAdapterSummary } from './share/adapter-exports.ts';
import type { ExportDType } from './share/dtype.ts';

export type { EvalAnswers, EvalOptions, ModelInfo, TrainResult, TrainConfig, TrainProgress, TrainRow, GenerationSettings, TokenizerSource };
export type { ExportFile, ImportedAdapterSummary, ExportDType };
export type { RunOptions, RunEvent, CheckpointInfo, RunDataStats, RunModelSource, MemoryPlan };
export type { DeviceLossReport, CuratedPlan };

export type GpuStatus =
  | { ok: true; gpu: GpuSummary }
  | { ok: false; reason: 'no-webgpu' | 'no-adapter' | 'device-failed'; message: string };

export interface MatmulRequest {
  a: Float32Array;
  b: Float32Array;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
}

export interface MatmulResult {
  c: Float32Array;
  ms: number;
}

export type { ChatTurn };

export interface EngineApi {
  /** Acquires the GPU (once); the status explains what is missing when it fails. */
  gpuStatus(): Promise<GpuStatus>;
  /** Runs one matmul on the worker's GPU (the GPU self-test, and an end-to-end check of the stack). */
  matmul(req: MatmulRequest): Promise<MatmulResult>;
  /** Buffer pool counters: live and peak bytes. */
  memory(): Promise<{ liveBytes: number; peakBytes: number }>;
  /** The offline demo model (created from a seed). */
  loadDemoModel(seed?: number): Promise<ModelInfo>;
  /** A checkpoint folder the user picked: file name → File. */
  loadModelFiles(files: Map<string, Blob>, opts: { id: string; quantize: boolean }): Promise<ModelInfo>;
  /** A Hugging Face Hub model by repo id: downloaded into this browser's cache (resumable, verified) or opened from it, then loaded. */
  loadHubModel(repo: string, opts: { revision?: string; quantize: boolean }, onProgress: (p: HubProgress) => void): Promise<ModelInfo>;
  /** Cancels the Hub download in progress; what arrived is kept and the next download resumes from there. */
  cancelHubDownload(): Promise<void>;
  /** The Hub models kept in this browser, complete or partial. */
  cachedModels(): Promise<CachedModel[]>;
  deleteCachedModel(repo: string, commit: string): Promise<void>;
  /** Saves the Hugging Face access token in this browser (null forgets it); it is sent only to the Hub. */
  setHubToken(token: string | null): Promise<void>;
  hasHubToken(): Promise<boolean>;
  /** The last training run (or opts.config) as a zip: XTuner config, transformers+PEFT script, dataset JSONL, README. */
  exportRecipe(samples: RecipeSample[], opts: RecipeRunOptions): Promise<Uint8Array>;
  /** The loaded model's tokenizer files, for the data pipeline (null before a model is loaded). */
  tokenizerSource(): Promise<TokenizerSource | null>;
  /** Trains a new adapter; onProgress is a comlink proxy called once per optimizer step. */
  train(rows: TrainRow[], config: Partial<TrainConfig>, onProgress: (p: TrainProgress) => void, evaluation?: EvalOptions, onAnswers?: (a: EvalAnswers) => void): Promise<TrainResult>;
  stopTraining(): Promise<void>;
  /**
   * After the GPU device was lost (driver reset, another tab, sleep) the worker sets up a new one and loads
   * the model again: the report says what happened and whether a run can be resumed from its checkpoint.
   * Returned once (null when nothing was lost since the last call).
   */
  deviceLoss(): Promise<DeviceLossReport | null>;
  /** `listener` (a Comlink.proxy) gets every device-loss report as soon as the worker has recovered (deviceLoss() still returns it once). */
  watchDeviceLoss(listener: (report: DeviceLossReport) => void): Promise<void>;
  /**
   * Diagnostics (the GPU details panel; tests): destroys the worker's GPU device as a driver reset would, so
   * the recovery path (new device, model reloaded, a training run continued from its checkpoint) can be seen.
   */
  simulateDeviceLoss(): Promise<void>;
  /** A new stored run (its rows and checkpoints kept in OPFS); onEvent (a proxy) gets started/progress/answers/checkpoint events. */
  trainRun(rows: TrainRow[], config: Partial<TrainConfig>, opts: RunOptions, onEvent: (e: RunEvent) => void): Promise<TrainResult>;
  /** Continues a stored run from its last checkpoint, in this (possibly fresh) page. */
  resumeRun(opts: RunOptions, onEvent: (e: RunEvent) => void): Promise<TrainResult>;
  /** Ends the training run after the current step with a checkpoint (resumable). */
  pauseTraining(): Promise<void>;
  /** Loads a stored run's latest checkpoint as the tuned model (chat, export). */
  openRun(runId: string): Promise<{ step: number; totalSteps: number }>;
  /** A stored run's adapter as a PEFT-compatible zip. */
  exportRunAdapter(runId: string): Promise<Uint8Array>;
  /** A stored run's current checkpoint (step, time, size), or null. */
  runCheckpoint(runId: string): Promise<CheckpointInfo | null>;
  /** Ids of the runs kept in this browser's storage. */
  storedRuns(): Promise<string[]>;
  /** Removes a stored run's files (rows, checkpoints, adapter). */
  deleteRun(runId: string): Promise<void>;
  /** The predicted GPU memory split for training the loaded model with this config on rows of seqLen tokens. */
  /** …with `evalSeqLen` (the longest held-out row) the eval loss's forward-only plan is counted too. */
  planTraining(config: Partial<TrainConfig>, seqLen: number, budgetBytes?: number, evalSeqLen?: number): Promise<MemoryPlan>;
  /** planTraining for each curated model card (no model needs to be loaded). */
  planCuratedTraining(config: Partial<TrainConfig>, seqLen: number, quantized: boolean, budgetBytes?: number): Promise<CuratedPlan[]>;
  /** One chat turn; onText (a proxy) receives the reply as it is generated. */
  chat(which: 'base' | 'tuned', user: string, settings: Partial<GenerationSettings>, onText: (delta: string) => void): Promise<string>;
  /** chat() with the reply's numbers (tokens, finish reason, tokens/s); stopGeneration ends it early, the partial reply kept. */
  chatTurn(which: 'base' | 'tuned', user: string, settings: Partial<GenerationSettings>, onText: (delta: string) => void): Promise<ChatTurn>;
  /** Stops the reply being generated (one side, or both): comlink cannot pass an AbortSignal, so the stop is its own call. */
  stopGeneration(which?: 'base' | 'tuned'): Promise<void>;
  /** The chat template's default system prompt (null: none). */
  chatDefaultSystem(): Promise<string | null>;
  /** A new conversation; with `system` (null: the template's default), the system prompt of both sides from now on. */
  resetChat(which: 'base' | 'tuned', system?: string | null): Promise<void>;
  /** The adapter as a PEFT-compatible zip. */
  exportAdapter(): Promise<Uint8Array>;
  /** The adapter as a GGUF LoRA (llama.cpp) or an Ollama package (adapter.gguf + Modelfile, zipped): file name and bytes. */
  exportAdapterAs(format: 'gguf' | 'ollama'): Promise<ExportFile>;
  /**
   * Base + adapter merged into a Hugging Face checkpoint: written into `dir` (a folder the user picked) file by
   * file, or with `dir` null returned as one zip (small models only). onProgress (a proxy) gets each tensor.
   */
  exportMerged(dtype: ExportDType, dir: FileSystemDirectoryHandle | null, onProgress?: (p: { tensor: string; done: number; total: number }) => void): Promise<{ files: string[]; totalBytes: number; zip: ExportFile | null }>;
  /** Cancels the merged export in progress: its exportMerged rejects (MergeCancelledError) and a folder export's written files are removed. */
  cancelExport(): Promise<void>;
  /** A PEFT adapter (.zip bytes, or a folder's files by relative path), validated against the loaded base and installed as the tuned model. */
  importAdapter(input: Uint8Array | Map<string, Blob>, source: string): Promise<ImportedAdapterSummary>;
  /** A PEFT adapter from a Hub repo id (downloaded into the cache like a model, cancellable with cancelHubDownload), then imported. */
  importHubAdapter(repo: string, opts: { revision?: string }, onProgress: (p: HubProgress) => void): Promise<ImportedAdapterSummary>;
}
