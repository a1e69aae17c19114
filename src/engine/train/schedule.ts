/** Learning-rate schedules, as XTuner's configs use them: linear warmup, then cosine (to 0) or constant. */
export type ScheduleKind = 'cosine' | 'constant' | 'linear';

export interface Schedule {
  kind: ScheduleKind;
  lr: number;
  totalSteps: number;
  warmupSteps: number;
}

/** Learning rate of optimizer step t (1-based). Warmup rises linearly to lr over warmupSteps. */
export function learningRate(s: Schedule, t: number): number {
  if (s.warmupSteps > 0 && t <= s.warmupSteps) return (s.lr * t) / s.warmupSteps;
  if (s.kind === 'constant') return s.lr;
  const span = Math.max(1, s.totalSteps - s.warmupSteps);
  const progress = Math.min(1, Math.max(0, (t - s.warmupSteps) / span));
  return s.kind === 'linear' ? s.lr * (1 - progress) : s.lr * 0.5 * (1 + Math.cos(Math.PI * progress));
}
