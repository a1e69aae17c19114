/**
 * Out of GPU memory, explained: what ran out, the memory plan of the settings that asked for it, and what
 * to change. The session turns a bare GpuOutOfMemoryError from a load or a training step into this, so the
 * user reads "shorten the maximum length to 256 tokens" rather than a driver message.
 */
import { GpuOutOfMemoryError } from '../gpu/errors.ts';
import { formatBytes, type MemoryPlan, type TrainingMemoryConfig } from '../model/memory-plan.ts';

/** A GpuOutOfMemoryError (same name, for the UI) whose message carries the plan and the advice. */
export class ExplainedOutOfMemoryError extends GpuOutOfMemoryError {
  constructor(
    cause: GpuOutOfMemoryError,
    /** The plan of the settings that ran out (null when there was none to make). */
    readonly plan: MemoryPlan | null,
    /** What to change, most helpful first. */
    readonly suggestions: readonly string[],
    message: string,
  ) {
    super(cause.what, cause.requestedBytes, cause.liveBytes, cause.budgetBytes);
    this.message = message;
  }
}

/**
 * What the device could hold, as far as we know: the pool's budget when one was set, else what was live
 * when it refused plus what was asked for (the device's own limit is not exposed by WebGPU).
 */
export function availableBytes(err: GpuOutOfMemoryError): number {
  return err.budgetBytes ?? Math.max(1, err.liveBytes + err.requestedBytes);
}

/** One line per section of the plan: "weights 1.20 MiB · LoRA … = 3.4 MiB at the training peak". */
export function describePlan(plan: MemoryPlan): string {
  const parts: [string, number][] = [
    ['base weights', plan.weights.bytes],
    ['LoRA params + grads', plan.lora.bytes],
    ['optimizer moments', plan.optimizer.bytes],
    ['activations', plan.activations.bytes],
    ['loss workspace', plan.ce.bytes],
    ['workspace', plan.workspace.bytes],
  ];
  return `${parts.map(([n, b]) => `${n} ${formatBytes(b)}`).join(' · ')} = ${formatBytes(plan.trainingPeakBytes)} at the training peak (loading: ${formatBytes(plan.loadingPeakBytes)}; largest buffer: ${plan.largestBuffer.name}, ${formatBytes(plan.largestBuffer.bytes)})`;
}

/**
 * What to change: the planner's advice for this budget when it has some (each change with its predicted
 * peak), else every setting that lowers memory, from the current values.
 */
export function outOfMemorySuggestions(plan: MemoryPlan | null, c: TrainingMemoryConfig, budgetBytes: number | null = null): string[] {
  const planned = plan ? plan.advice.filter((a) => !a.startsWith('Predicted peak')) : [];
  const out = planned.length
    ? [...planned]
    : [
        ...(c.seqLen > 128 ? [`Shorten the maximum length (now ${c.seqLen} tokens) in the Data section`] : []),
        ...(c.microBatch > 1 ? [`Use a smaller micro-batch (now ${c.microBatch}) with more gradient accumulation for the same effective batch`] : []),
        ...(c.quantBits === 32 ? ['Load the base model in 4 bits (QLoRA) in the Model section'] : []),
        ...(c.optimizerOffload === 'gpu' ? ['Keep the optimizer state in CPU memory or on disk (optimizer offload)'] : []),
        ...(c.loraRank > 4 ? [`Lower the LoRA rank (now ${c.loraRank})`] : []),
      ];
  // The pool's cap is the user's own budget (the Train form): the GPU itself may have room.
  if (budgetBytes !== null) out.push(`Or raise the GPU memory budget (now ${formatBytes(budgetBytes)}) in the Train section if this GPU has more free memory`);
  // The device itself refused: whatever else holds the GPU is the first thing to look at (on the lent H100,
  // filled by another program, a run holding 402 KiB was refused).
  else out.unshift('Close other tabs or programs that use the GPU, then try again');
  return out;
}

/** The training-side explanation: what ran out, the plan, the advice, and what happened to the run. */
export function explainTrainingOutOfMemory(err: GpuOutOfMemoryError, plan: MemoryPlan | null, c: TrainingMemoryConfig, runNote: string): ExplainedOutOfMemoryError {
  const suggestions = outOfMemorySuggestions(plan, c, err.budgetBytes);
  const settings = `maximum length ${c.seqLen}, micro-batch ${c.microBatch}, LoRA rank ${c.loraRank}, ${c.quantBits === 4 ? '4-bit' : 'f32'} base, optimizer state on ${c.optimizerOffload === 'gpu' ? 'the GPU' : c.optimizerOffload === 'cpu' ? 'the CPU' : 'disk'}`;
  const lines = [
    `Training ran out of GPU memory ${err.message.replace(/^out of GPU memory /, '')}.`,
    err.budgetBytes === null
      ? `Memory plan for these settings (${settings}); the GPU refused more while this run held ${formatBytes(err.liveBytes)} (other tabs or programs may hold the rest):`
      : `Memory plan for these settings (${settings}), against about ${formatBytes(availableBytes(err))} available:`,
    `  ${plan ? describePlan(plan) : 'not available'}`,
    'What to change:',
    ...suggestions.map((s) => `  • ${s}`),
    runNote,
  ];
  return new ExplainedOutOfMemoryError(err, plan, suggestions, lines.filter(Boolean).join('\n'));
}
