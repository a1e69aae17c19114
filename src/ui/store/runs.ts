/**
 * The runs history the Train section lists: one record per training run in IndexedDB (idb-keyval) with
 * what the page shows — config, model, data stats, loss curve, evaluation answers, checkpoints, status.
 * The run's tensors and rows live in OPFS, owned by the engine worker (src/engine/runs/run-store.ts);
 * both are keyed by the same run id. `applyRunEvent` folds the worker's run events into a record.
 */
import type { CheckpointInfo, EvalAnswers, RunDataStats, RunEvent, TrainConfig } from '../../engine/api.ts';
import { idbKeyValue, type KeyValueStore } from './kv.ts';

/**
 * training: in progress in this page. paused: checkpointed on request. interrupted: the page closed (or
 * crashed) while training; resumable from its last checkpoint. stopped: ended early by the user (its
 * adapter kept; may be continued). finished: all steps done. failed: an error ended it.
 */
export type RunStatus = 'training' | 'paused' | 'interrupted' | 'stopped' | 'finished' | 'failed';

export interface RunRecord {
  id: string;
  createdAt: string;
  updatedAt: string;
  status: RunStatus;
  modelId: string;
  config: Partial<TrainConfig>;
  evaluation: { prompts: string[]; every: number };
  checkpointPolicy: { everySteps: number; everyMinutes: number };
  data: RunDataStats | null;
  step: number;
  totalSteps: number;
  curve: { step: number[]; loss: number[]; lr: number[] };
  /** The eval loss on the held-out rows at the evaluation steps (absent in records from before it was kept). */
  evalCurve?: { step: number[]; loss: number[] };
  answers: EvalAnswers[];
  /** Checkpoints written, oldest first; only the last one is kept on disk (each save replaces the previous). */
  checkpoints: CheckpointInfo[];
  finalLoss: number | null;
  error: string | null;
}

export function newRunId(now = new Date(), random = Math.random): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
  return `run-${stamp}-${Math.floor(random() * 36 ** 4).toString(36).padStart(4, '0')}`;
}

export function newRunRecord(init: Pick<RunRecord, 'id' | 'modelId' | 'config' | 'evaluation' | 'checkpointPolicy'>, now = new Date()): RunRecord {
  const at = now.toISOString();
  return { ...init, createdAt: at, updatedAt: at, status: 'training', data: null, step: 0, totalSteps: 0, curve: { step: [], loss: [], lr: [] }, evalCurve: { step: [], loss: [] }, answers: [], checkpoints: [], finalLoss: null, error: null };
}

/** A run can continue when it is not done, not training here, and has a checkpoint to continue from. */
export function isResumable(r: RunRecord): boolean {
  return r.status !== 'finished' && r.status !== 'training' && r.checkpoints.length > 0 && r.step < r.totalSteps;
}

/**
 * Folds one run event into the record. 'started' (also on resume) sets the step the run continues from
 * and drops curve points and answers after it: those steps are trained again, so the curve continues
 * from the checkpoint with no duplicate or reset step numbers.
 */
export function applyRunEvent(r: RunRecord, e: RunEvent, now = new Date()): RunRecord {
  const next: RunRecord = { ...r, updatedAt: now.toISOString() };
  switch (e.type) {
    case 'started': {
      const keep = r.curve.step.findIndex((s) => s > e.step);
      const n = keep < 0 ? r.curve.step.length : keep;
      next.curve = { step: r.curve.step.slice(0, n), loss: r.curve.loss.slice(0, n), lr: r.curve.lr.slice(0, n) };
      const ev = r.evalCurve ?? { step: [], loss: [] };
      const m = ev.step.filter((s) => s <= e.step).length;
      next.evalCurve = { step: ev.step.slice(0, m), loss: ev.loss.slice(0, m) };
      next.answers = r.answers.filter((a) => a.step <= e.step);
      next.step = e.step;
      next.totalSteps = e.totalSteps;
      next.data = e.data;
      next.status = 'training';
      next.error = null;
      break;
    }
    case 'progress':
      next.curve = { step: [...r.curve.step, e.progress.step], loss: [...r.curve.loss, e.progress.loss], lr: [...r.curve.lr, e.progress.lr] };
      next.step = e.progress.step;
      next.totalSteps = e.progress.totalSteps;
      break;
    case 'answers':
      next.answers = [...r.answers, e.answers];
      break;
    case 'eval-loss': {
      const ev = r.evalCurve ?? { step: [], loss: [] };
      next.evalCurve = { step: [...ev.step, e.step], loss: [...ev.loss, e.loss] };
      break;
    }
    case 'checkpoint':
      next.checkpoints = [...r.checkpoints, e.checkpoint];
      break;
    case 'checkpoint-error':
      next.error = e.message;
      break;
  }
  return next;
}

export class RunHistory {
  constructor(private readonly kv: KeyValueStore = idbKeyValue('webtune-runs')) {}

  /** Newest first. */
  async list(): Promise<RunRecord[]> {
    return (await this.kv.entries<RunRecord>()).map(([, r]) => r).sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  }

  get(id: string): Promise<RunRecord | undefined> {
    return this.kv.get<RunRecord>(id);
  }

  put(r: RunRecord): Promise<void> {
    return this.kv.set(r.id, r);
  }

  delete(id: string): Promise<void> {
    return this.kv.delete(id);
  }

  /**
   * Called once when the page opens: no run can be training in a page that just started, so a record
   * still saying 'training' is one whose tab was closed (or crashed) mid-run.
   */
  async markInterrupted(): Promise<RunRecord[]> {
    const out: RunRecord[] = [];
    for (const r of await this.list()) {
      if (r.status === 'training') {
        const next = { ...r, status: 'interrupted' as const };
        await this.put(next);
        out.push(next);
      } else out.push(r);
    }
    return out;
  }
}
