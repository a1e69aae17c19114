import type { DeviceLossReport } from '../../engine/api.ts';

/**
 * Why a run stopped by itself, for the banner: the GPU was lost (and set up again), it ran out of GPU
 * memory (the message carries the memory plan and what to change), or the trainer paused after
 * non-finite steps (the bad row or the learning-rate advice). `resumeRunId`: the run to offer Resume for.
 */
export interface RunFault {
  kind: 'device-lost' | 'out-of-memory' | 'paused';
  message: string;
  resumeRunId: string | null;
  /** Still waiting for the worker to set the GPU up again (device-lost only). */
  recovering?: boolean;
}

/** The fault of a failed training call, by the error's name (comlink keeps name and message), or null. */
export function faultOfError(e: unknown, runId: string | null, hasCheckpoint: boolean): RunFault | null {
  const name = e instanceof Error ? e.name : '';
  const message = e instanceof Error ? e.message : String(e);
  if (name === 'DeviceLostError') return { kind: 'device-lost', message: `${message}\nSetting up the GPU again…`, resumeRunId: null, recovering: true };
  if (name === 'GpuOutOfMemoryError') return { kind: 'out-of-memory', message, resumeRunId: hasCheckpoint ? runId : null };
  return null;
}

/** The device-lost fault once the worker reports what it restored (EngineApi.deviceLoss()). */
export function faultOfDeviceLoss(report: DeviceLossReport, stoppedAt: number | null): RunFault {
  const where = stoppedAt !== null && report.wasTraining ? ` Your run stopped at step ${stoppedAt}.` : '';
  return { kind: 'device-lost', message: `${report.message}${where}`, resumeRunId: report.runId && report.checkpoint ? report.runId : null };
}
