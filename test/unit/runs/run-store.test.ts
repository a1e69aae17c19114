/**
 * The engine's run store (src/engine/runs/run-store.ts) on the memory and folder BlobStores: rows round
 * trip, corruption is named, checkpoints are listed, deleting a run removes every one of its files, and the
 * checkpoint policy saves when it should.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryBlobStore, type BlobStore } from '../../../src/engine/share/checkpoint.ts';
import { NodeDirBlobStore } from '../../../src/engine/share/node.ts';
import {
  createRun,
  decodeRows,
  deleteRun,
  encodeRows,
  listRunIds,
  loadRunCheckpoint,
  readRun,
  readRunAdapter,
  rowStats,
  runCheckpointInfo,
  saveRunAdapter,
  saveRunCheckpoint,
  type RunModelSource,
} from '../../../src/engine/runs/run-store.ts';
import { RunCheckpointer } from '../../../src/engine/runs/checkpointer.ts';
import { DEFAULT_TRAIN_CONFIG, type TrainerState, type TrainRow } from '../../../src/engine/train/trainer.ts';

function rows(lengths: number[], seed = 1): TrainRow[] {
  let x = seed;
  const next = () => (x = (x * 1103515245 + 12345) >>> 0) % 1000;
  return lengths.map((n) => ({
    inputIds: Int32Array.from({ length: n }, next),
    labels: Int32Array.from({ length: n }, (_, i) => (i < 2 ? -100 : next())),
    positionIds: Int32Array.from({ length: n }, (_, i) => i),
    documentIds: Int32Array.from({ length: n }, (_, i) => (i === n - 1 && n > 2 ? -1 : 0)),
  }));
}

function state(step: number, n = 10): TrainerState {
  const f = (k: number) => Float32Array.from({ length: n }, (_, i) => step * 100 + k * 10 + i);
  return { version: 1, step, totalSteps: 8, warmupSteps: 0, epoch: 0, position: step, seed: 1, config: { ...DEFAULT_TRAIN_CONFIG }, params: f(1), m: f(2), v: f(3) };
}

const demo: RunModelSource = { kind: 'demo', id: 'webtune/demo-tiny-llama', seed: 7 };
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const stores: Array<[string, () => BlobStore]> = [
  ['memory', () => new MemoryBlobStore()],
  [
    'folder',
    () => {
      const d = mkdtempSync(join(tmpdir(), 'webtune-runs-'));
      dirs.push(d);
      return new NodeDirBlobStore(d);
    },
  ],
];

describe('rows encoding', () => {
  it('round-trips any rows exactly', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 12 }), fc.integer(), (lengths, seed) => {
        const r = rows(lengths, seed);
        expect(decodeRows(encodeRows(r))).toEqual(r);
      }),
    );
  });

  it('names a truncated file, a foreign file and a ragged row', () => {
    const bytes = encodeRows(rows([5, 6]));
    expect(() => decodeRows(bytes.subarray(0, bytes.length - 8), 'runs/a/rows.bin')).toThrow(/runs\/a\/rows.bin: row 1 runs past the end/);
    expect(() => decodeRows(new Uint8Array(16), 'x.bin')).toThrow(/x.bin: not a WebTune rows file/);
    const bad = rows([4]);
    bad[0]!.labels = new Int32Array(3);
    expect(() => encodeRows(bad)).toThrow(/row 0: inputIds has 4 tokens but labels\/positionIds\/documentIds have 3\/4\/4/);
  });

  it('counts tokens, supervised tokens and the longest row', () => {
    expect(rowStats(rows([4, 6]))).toEqual({ rows: 2, tokens: 8, supervisedTokens: 6, maxLength: 6 });
  });
});

describe.each(stores)('runs in a %s store', (_, make) => {
  it('create → read back verified → checkpoints → adapter → delete leaves nothing', async () => {
    const store = make();
    const data = rows([8, 5, 7]);
    const man = await createRun(store, { id: 'run-1', model: demo, config: { ...DEFAULT_TRAIN_CONFIG, lr: 0.01 }, rows: data });
    expect(man.data).toEqual(rowStats(data));
    await createRun(store, { id: 'run-2', model: demo, config: DEFAULT_TRAIN_CONFIG, rows: data.slice(0, 1) });
    await expect(createRun(store, { id: 'run-1', model: demo, config: DEFAULT_TRAIN_CONFIG, rows: data })).rejects.toThrow(/already exists/);
    expect(await listRunIds(store)).toEqual(['run-1', 'run-2']);

    const back = await readRun(store, 'run-1');
    expect(back.rows).toEqual(data);
    expect(back.manifest.model).toEqual(demo);
    expect(back.manifest.config.lr).toBe(0.01);

    expect(await runCheckpointInfo(store, 'run-1')).toBeNull();
    expect(await loadRunCheckpoint(store, 'run-1')).toBeNull();
    const c2 = await saveRunCheckpoint(store, 'run-1', state(2));
    const c4 = await saveRunCheckpoint(store, 'run-1', state(4));
    expect(c2).toMatchObject({ step: 2, bytes: c4.bytes });
    expect(c4.bytes).toBeGreaterThan(3 * 40);
    expect(await runCheckpointInfo(store, 'run-1')).toEqual(c4);
    const loaded = (await loadRunCheckpoint(store, 'run-1'))!;
    expect(loaded.step).toBe(4);
    expect(Array.from(loaded.params)).toEqual(Array.from(state(4).params));

    await saveRunAdapter(store, 'run-1', new Uint8Array([80, 75, 3, 4]));
    expect(Array.from((await readRunAdapter(store, 'run-1'))!)).toEqual([80, 75, 3, 4]);

    await deleteRun(store, 'run-1');
    expect(await store.list('runs/run-1/')).toEqual([]);
    expect(await listRunIds(store)).toEqual(['run-2']);
    await expect(readRun(store, 'run-1')).rejects.toThrow(/run 'run-1' is not stored in this browser/);
    expect((await readRun(store, 'run-2')).rows).toEqual(data.slice(0, 1));
  });

  it('corrupt or missing rows are named, never read as valid', async () => {
    const store = make();
    await createRun(store, { id: 'r', model: demo, config: DEFAULT_TRAIN_CONFIG, rows: rows([6, 6]) });
    const good = (await store.get('runs/r/rows.bin'))!;
    const flipped = good.slice();
    flipped[20]! ^= 1;
    await store.put('runs/r/rows.bin', flipped);
    await expect(readRun(store, 'r')).rejects.toThrow(/runs\/r\/rows.bin is corrupt \(sha256 mismatch\)/);
    await store.put('runs/r/rows.bin', good.subarray(0, 12));
    await expect(readRun(store, 'r')).rejects.toThrow(/has 12 bytes, run.json says \d+ \(partial write\?\)/);
    await store.delete('runs/r/rows.bin');
    await expect(readRun(store, 'r')).rejects.toThrow(/rows.bin is missing/);
    await store.put('runs/r/run.json', new TextEncoder().encode('{"format":'));
    await expect(readRun(store, 'r')).rejects.toThrow(/runs\/r\/run.json is damaged/);
  });
});

it('run ids that could escape the runs folder are refused', async () => {
  const store = new MemoryBlobStore();
  for (const id of ['../x', 'a/b', '', '.hidden', 'x'.repeat(65)]) {
    await expect(createRun(store, { id, model: demo, config: DEFAULT_TRAIN_CONFIG, rows: rows([3]) })).rejects.toThrow(/bad run id/);
  }
});

describe('checkpoint policy', () => {
  function fakeTrainer(totalSteps: number) {
    const t = { step: 0, totalSteps, saves: [] as number[], async saveState() {
      t.saves.push(t.step);
      return state(t.step);
    } };
    return t;
  }

  it('every N steps, never twice for one step, not on the last (the end save is explicit)', async () => {
    const t = fakeTrainer(7);
    const saved: number[] = [];
    const ck = new RunCheckpointer(new MemoryBlobStore(), 'r', t, { everySteps: 3, everyMinutes: 0 }, null, (c) => saved.push(c.step));
    for (t.step = 1; t.step <= 7; t.step++) await ck.afterStep();
    t.step = 7;
    await ck.save();
    await ck.save();
    expect(saved).toEqual([3, 6, 7]);
    expect(t.saves).toEqual([3, 6, 7]);
  });

  it('by wall-clock time, and a resumed run does not re-save its own checkpoint', async () => {
    let now = 0;
    const t = fakeTrainer(100);
    t.step = 10;
    const ck = new RunCheckpointer(new MemoryBlobStore(), 'r', t, { everySteps: 0, everyMinutes: 2 }, 10, () => {}, () => now);
    expect(await ck.save()).toBeNull();
    for (const [step, at] of [[11, 60_000], [12, 119_000], [13, 120_000], [14, 150_000], [15, 241_000]] as const) {
      t.step = step;
      now = at;
      await ck.afterStep();
    }
    expect(t.saves).toEqual([13, 15]);
  });

  it('a new run paused before its first step still gets a checkpoint (step 0)', async () => {
    const t = fakeTrainer(5);
    const ck = new RunCheckpointer(new MemoryBlobStore(), 'r', t, { everySteps: 50, everyMinutes: 10 }, null);
    expect((await ck.save())!.step).toBe(0);
    expect(() => new RunCheckpointer(new MemoryBlobStore(), 'r', t, { everySteps: -1, everyMinutes: 0 }, null)).toThrow(/everySteps is -1/);
  });
});
