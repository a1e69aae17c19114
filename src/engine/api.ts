/**
 * The one typed interface between the UI thread and the engine worker. The worker implements it; the UI
 * holds a comlink proxy of it (src/ui/engine-client.ts). Plain data crosses the boundary, never GPU objects.
 */
import type { GpuSummary } from './gpu/context.ts';

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
}
