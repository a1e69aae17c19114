/**
 * When a training run writes a checkpoint: every N optimizer steps, or when M minutes have passed since
 * the last one (whichever comes first), and whenever the run ends, pauses or is stopped. Saving reads the
 * LoRA weights and AdamW moments back from the GPU, so a step-count and a wall-clock bound keep both long
 * slow steps and many fast ones from costing too much progress when the tab closes.
 */
import type { BlobStore } from '../share/checkpoint.ts';
import type { TrainerState } from '../train/trainer.ts';
import { saveRunCheckpoint, type CheckpointInfo } from './run-store.ts';

export interface CheckpointPolicy {
  /** Save after every this many optimizer steps (0: never by count). */
  everySteps: number;
  /** Save when this many minutes have passed since the last save (0: never by time). */
  everyMinutes: number;
}

export const DEFAULT_CHECKPOINT_POLICY: CheckpointPolicy = { everySteps: 50, everyMinutes: 10 };

/** What the checkpointer needs of a trainer. */
export interface Checkpointable {
  readonly step: number;
  readonly totalSteps: number;
  saveState(): Promise<TrainerState>;
}

export class RunCheckpointer {
  private lastStep: number;
  private lastAt: number;
  /** The most recent checkpoint this checkpointer wrote. */
  latest: CheckpointInfo | null = null;

  /**
   * `resumedFrom`: the step of the checkpoint the trainer was loaded from (null for a new run, whose
   * step 0 is saved too if it is paused before its first step).
   */
  constructor(
    private readonly store: BlobStore,
    private readonly runId: string,
    private readonly trainer: Checkpointable,
    private readonly policy: CheckpointPolicy,
    resumedFrom: number | null,
    private readonly onSaved: (c: CheckpointInfo) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {
    for (const [k, v] of Object.entries(policy)) if (!(Number.isFinite(v) && v >= 0)) throw new RangeError(`checkpoint policy: ${k} is ${v}; expected a number ≥ 0`);
    this.lastStep = resumedFrom ?? -1;
    this.lastAt = now();
  }

  /** Whether the step just finished should be saved (the last step is saved by save() at the end). */
  due(): boolean {
    const { step, totalSteps } = this.trainer;
    if (step >= totalSteps || step === this.lastStep) return false;
    const { everySteps, everyMinutes } = this.policy;
    return (everySteps > 0 && step % everySteps === 0) || (everyMinutes > 0 && this.now() - this.lastAt >= everyMinutes * 60_000);
  }

  async afterStep(): Promise<CheckpointInfo | null> {
    return this.due() ? this.save() : null;
  }

  /** Saves the trainer's current state unless it is already the latest checkpoint. */
  async save(): Promise<CheckpointInfo | null> {
    if (this.trainer.step === this.lastStep) return this.latest;
    const info = await saveRunCheckpoint(this.store, this.runId, await this.trainer.saveState());
    this.lastStep = info.step;
    this.lastAt = this.now();
    this.latest = info;
    this.onSaved(info);
    return info;
  }
}
