import { describe, expect, it } from 'vitest';
import { DeviceLostError, GpuOutOfMemoryError } from '../../../src/engine/gpu/errors.ts';
import { ExplainedOutOfMemoryError } from '../../../src/engine/train/out-of-memory.ts';
import { faultOfDeviceLoss, faultOfError } from '../../../src/ui/runs/run-fault.ts';

/** What comlink hands the page for a thrown error: a plain Error with the name and message copied over. */
const overComlink = (e: Error): Error => Object.assign(new Error(e.message), { name: e.name, message: e.message });

describe('run faults for the Train banner', () => {
  it('a lost GPU: waiting for the worker, no Resume until its report says a checkpoint exists', () => {
    const f = faultOfError(overComlink(new DeviceLostError('destroyed', 'driver reset')), 'run-a', true);
    expect(f).toEqual({ kind: 'device-lost', message: 'the GPU device was lost (destroyed): driver reset\nSetting up the GPU again…', resumeRunId: null, recovering: true });
    const report = { message: 'the GPU device was lost (destroyed). A new GPU device was set up and demo is loaded again. The training run paused; its last checkpoint (step 4) is intact and it can be resumed from there.', restored: 'the GPU device was lost (destroyed). A new GPU device was set up and demo is loaded again.', model: null, runId: 'run-a', checkpoint: { step: 4, savedAt: '2026-01-01T00:00:00Z', bytes: 100 }, wasTraining: true };
    expect(faultOfDeviceLoss(report, 5)).toEqual({ kind: 'device-lost', message: `${report.message} Your run stopped at step 5.`, resumeRunId: 'run-a' });
    expect(faultOfDeviceLoss({ ...report, checkpoint: null }, 5).resumeRunId).toBeNull();
    expect(faultOfDeviceLoss({ ...report, wasTraining: false, runId: null, checkpoint: null }, null).message).toBe(report.message);
  });

  it('out of GPU memory: the explained message as is; Resume only for a run with a checkpoint', () => {
    const err = new ExplainedOutOfMemoryError(new GpuOutOfMemoryError('logits chunk', 4096, 8192, 10000), null, ['Lower the LoRA rank (now 16)'], 'Training ran out of GPU memory: …\nWhat to change:\n  • Lower the LoRA rank (now 16)');
    expect(err.name).toBe('GpuOutOfMemoryError');
    expect(faultOfError(overComlink(err), 'run-b', true)).toEqual({ kind: 'out-of-memory', message: err.message, resumeRunId: 'run-b' });
    expect(faultOfError(overComlink(err), 'run-b', false)?.resumeRunId).toBeNull();
  });

  it('other errors are not faults (they show as the plain error)', () => {
    expect(faultOfError(new Error('no training rows'), 'run-c', true)).toBeNull();
    expect(faultOfError('a string', null, false)).toBeNull();
  });
});
