/**
 * The page's small persistent state (src/ui/store): the runs history's records folded from the worker's
 * run events (a resume continues the curve from the checkpoint), interrupted-run detection at page load,
 * and settings that survive malformed stored values. IndexedDB is replaced by the in-memory store.
 */
import { describe, expect, it } from 'vitest';
import type { RunEvent, TrainProgress } from '../../../src/engine/api.ts';
import { memoryKeyValue } from '../../../src/ui/store/kv.ts';
import { RunHistory, applyRunEvent, isResumable, newRunId, newRunRecord, type RunRecord } from '../../../src/ui/store/runs.ts';
import { DEFAULT_TRAIN_SETTINGS, SettingsStore, cleanSettings } from '../../../src/ui/store/settings.ts';

const progress = (step: number, loss: number): RunEvent => ({
  type: 'progress',
  progress: { step, totalSteps: 6, epoch: 0, loss, lr: 0.01, gradNorm: 1, tokensPerSecond: 1, etaSeconds: 1, liveBytes: 0, peakBytes: 0 } as TrainProgress,
});
const started = (step: number): RunEvent => ({ type: 'started', runId: 'r', step, totalSteps: 6, data: { rows: 3, tokens: 30, supervisedTokens: 20, maxLength: 12 }, model: { kind: 'demo', id: 'demo', seed: 1 } });

function record(): RunRecord {
  return newRunRecord({ id: 'r', modelId: 'demo', config: { lr: 0.01 }, evaluation: { prompts: ['hi'], every: 2 }, checkpointPolicy: { everySteps: 2, everyMinutes: 10 } }, new Date('2025-01-02T03:04:05Z'));
}

describe('run records', () => {
  it('a resumed run drops the steps after its checkpoint and continues the curve without a reset', () => {
    let r = record();
    const events: RunEvent[] = [
      started(0),
      progress(1, 3),
      progress(2, 2.5),
      { type: 'checkpoint', checkpoint: { step: 2, savedAt: '2025-01-02T03:05:00Z', bytes: 100 } },
      { type: 'eval-loss', step: 2, loss: 2.7, tokens: 9 },
      { type: 'answers', answers: { step: 2, answers: [{ prompt: 'hi', answer: 'a' }] } },
      progress(3, 2.2),
      { type: 'eval-loss', step: 3, loss: 2.6, tokens: 9 },
      { type: 'answers', answers: { step: 3, answers: [{ prompt: 'hi', answer: 'b' }] } },
      // the tab closes here; the page reloads and resumes from the checkpoint of step 2
      started(2),
      progress(3, 2.2),
      progress(4, 2),
      { type: 'eval-loss', step: 4, loss: 2.4, tokens: 9 },
    ];
    for (const e of events) r = applyRunEvent(r, e);
    expect(r.evalCurve).toEqual({ step: [2, 4], loss: [2.7, 2.4] });
    expect(r.curve.step).toEqual([1, 2, 3, 4]);
    expect(r.curve.loss).toEqual([3, 2.5, 2.2, 2]);
    expect(r.answers.map((a) => a.step)).toEqual([2]);
    expect(r).toMatchObject({ step: 4, totalSteps: 6, status: 'training', data: { rows: 3 } });
    expect(r.checkpoints.map((c) => c.step)).toEqual([2]);
  });

  it('is resumable when unfinished with a checkpoint, and not while training or once finished', () => {
    const r = { ...record(), step: 2, totalSteps: 6, checkpoints: [{ step: 2, savedAt: '', bytes: 1 }] };
    expect(isResumable({ ...r, status: 'paused' })).toBe(true);
    expect(isResumable({ ...r, status: 'interrupted' })).toBe(true);
    expect(isResumable({ ...r, status: 'training' })).toBe(false);
    expect(isResumable({ ...r, status: 'finished' })).toBe(false);
    expect(isResumable({ ...r, status: 'paused', checkpoints: [] })).toBe(false);
  });

  it('a checkpoint failure is kept on the record', () => {
    expect(applyRunEvent(record(), { type: 'checkpoint-error', message: 'quota exhausted' }).error).toBe('quota exhausted');
  });

  it('run ids are unique, sortable and safe as storage names', () => {
    const id = newRunId(new Date('2025-01-02T03:04:05.678Z'), () => 0.5);
    expect(id).toMatch(/^run-20250102-030405-[0-9a-z]{4}$/);
    expect(new Set(Array.from({ length: 50 }, () => newRunId())).size).toBeGreaterThan(45);
  });
});

describe('runs history', () => {
  it('lists newest first; at page load a run still marked training becomes interrupted', async () => {
    const history = new RunHistory(memoryKeyValue());
    await history.put({ ...record(), id: 'old', createdAt: '2025-01-01T00:00:00Z', status: 'finished' });
    await history.put({ ...record(), id: 'new', createdAt: '2025-01-03T00:00:00Z', status: 'training' });
    const runs = await history.markInterrupted();
    expect(runs.map((r) => [r.id, r.status])).toEqual([
      ['new', 'interrupted'],
      ['old', 'finished'],
    ]);
    expect((await history.get('new'))?.status).toBe('interrupted');
    await history.delete('old');
    expect((await history.list()).map((r) => r.id)).toEqual(['new']);
  });
});

describe('settings', () => {
  it('round-trip, merging changes', async () => {
    const store = new SettingsStore(memoryKeyValue());
    expect(await store.load()).toEqual({ section: null, theme: 'system', train: DEFAULT_TRAIN_SETTINGS });
    await Promise.all([store.save({ section: 'train' }), store.save({ theme: 'dark' }), store.save({ train: { evalEvery: 7, config: { lr: 0.001, epochs: 2 } } }), store.save({ train: { budgetGiB: 4 } })]);
    const s = await store.load();
    expect(s.section).toBe('train');
    expect(s.theme).toBe('dark');
    expect(s.train).toMatchObject({ evalEvery: 7, budgetGiB: 4, config: { lr: 0.001, epochs: 2 }, preset: 'quick' });
  });

  it('malformed stored values fall back to defaults field by field', () => {
    const s = cleanSettings({ section: 3, theme: 'purple', train: { preset: 'qlora', evalEvery: -1, budgetGiB: 'big', evalPrompts: 'a\nb', config: { lr: 'x', loraRank: 16, schedule: 'weird', optimizerOffload: 'cpu', matmulPrecision: 'int8', epochs: Infinity } } });
    expect(s.section).toBeNull();
    expect(s.theme).toBe('system');
    expect(s.train).toEqual({ ...DEFAULT_TRAIN_SETTINGS, preset: 'qlora', evalPrompts: 'a\nb', config: { loraRank: 16, optimizerOffload: 'cpu', matmulPrecision: 'int8' } });
    expect(cleanSettings(null)).toEqual({ section: null, theme: 'system', train: DEFAULT_TRAIN_SETTINGS });
    expect(cleanSettings({ theme: 'light' }).theme).toBe('light');
  });
});
