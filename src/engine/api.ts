/**
 * The one typed interface between the UI thread and the engine worker. The worker implements it; the UI
 * holds a comlink proxy of it (src/ui/engine-client.ts). Plain data crosses the boundary, never GPU objects.
 */
import type { GpuSummary } from './gpu/context.ts';
import type { EvalAnswers, EvalOptions, ModelInfo, TrainResult } from './session.ts';
import type { TrainConfig, TrainProgress, TrainRow } from './train/trainer.ts';
import type { GenerationSettings } from './generate/settings.ts';
import type { TokenizerSource } from '../data/tokenizer.ts';

export type { EvalAnswers, EvalOptions, ModelInfo, TrainResult, TrainConfig, TrainProgress, TrainRow, GenerationSettings, TokenizerSource };

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
  /** The loaded model's tokenizer files, for the data pipeline (null before a model is loaded). */
  tokenizerSource(): Promise<TokenizerSource | null>;
  /** Trains a new adapter; onProgress is a comlink proxy called once per optimizer step. */
  train(rows: TrainRow[], config: Partial<TrainConfig>, onProgress: (p: TrainProgress) => void, evaluation?: EvalOptions, onAnswers?: (a: EvalAnswers) => void): Promise<TrainResult>;
  stopTraining(): Promise<void>;
  /** One chat turn; onText (a proxy) receives the reply as it is generated. */
  chat(which: 'base' | 'tuned', user: string, settings: Partial<GenerationSettings>, onText: (delta: string) => void): Promise<string>;
  resetChat(which: 'base' | 'tuned'): Promise<void>;
  /** The adapter as a PEFT-compatible zip. */
  exportAdapter(): Promise<Uint8Array>;
}
