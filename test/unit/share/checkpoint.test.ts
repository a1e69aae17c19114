import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointError, MemoryBlobStore, loadCheckpoint, saveCheckpoint, type BlobStore } from '../../../src/engine/share/checkpoint.ts';
import { NodeDirBlobStore } from '../../../src/engine/share/node.ts';
import { DEFAULT_TRAIN_CONFIG, type TrainerState } from '../../../src/engine/train/trainer.ts';
import { freshSeed, randn, rng } from '../../helpers/numeric.ts';

const tmp = mkdtempSync(join(tmpdir(), 'webtune-ckpt-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function state(step: number, seed: number): TrainerState {
  const r = rng(seed + step);
  return { version: 1, step, totalSteps: 10, warmupSteps: 1, epoch: 0, position: step * 16, seed: 42, config: { ...DEFAULT_TRAIN_CONFIG }, params: randn(1000, r), m: randn(1000, r), v: randn(1000, r) };
}

/** A store whose puts fail after `okPuts` successful ones, the way a full OPFS quota does. */
class FailingStore extends MemoryBlobStore {
  constructor(public okPuts: number) {
    super();
  }
  override async put(name: string, data: Uint8Array) {
    if (this.okPuts-- <= 0) throw new DOMException('quota', 'QuotaExceededError');
    return super.put(name, data);
  }
}

describe('checkpoints', () => {
  for (const [label, make] of [['memory', () => new MemoryBlobStore()], ['node folder', () => new NodeDirBlobStore(join(tmp, String(Math.random())))]] as Array<[string, () => BlobStore]>) {
    it(`${label}: save → load is exact; a second save replaces the first and removes its blobs`, async () => {
      const seed = freshSeed();
      const store = make();
      expect(await loadCheckpoint(store, 'run1')).toBeNull();
      const a = state(3, seed);
      await saveCheckpoint(store, 'run1', a);
      expect(await loadCheckpoint(store, 'run1')).toEqual(a);
      const b = state(6, seed);
      await saveCheckpoint(store, 'run1', b);
      expect(await loadCheckpoint(store, 'run1')).toEqual(b);
      const names = (await store.list('run1/')).map((x) => x.name).sort();
      expect(names).toEqual(['run1/checkpoint.json', 'run1/ckpt-2/m.f32', 'run1/ckpt-2/params.f32', 'run1/ckpt-2/state.json', 'run1/ckpt-2/v.f32']);
    });

    it(`${label}: a corrupt or truncated blob is reported by name`, async () => {
      const store = make();
      await saveCheckpoint(store, 'r', state(2, 1));
      const p = (await store.get('r/ckpt-1/m.f32'))!;
      p[17]! ^= 1;
      await store.put('r/ckpt-1/m.f32', p);
      await expect(loadCheckpoint(store, 'r')).rejects.toThrow(/step 2: r\/ckpt-1\/m\.f32 is corrupt \(sha256 mismatch\)/);
      await store.put('r/ckpt-1/m.f32', p.subarray(0, 100));
      await expect(loadCheckpoint(store, 'r')).rejects.toThrow(/m\.f32 has 100 bytes, the manifest says 4000 \(partial write\?\)/);
      await store.put('r/checkpoint.json', new TextEncoder().encode('{"format": "webtune-chec'));
      await expect(loadCheckpoint(store, 'r')).rejects.toThrow(CheckpointError);
    });
  }

  it('quota exceeded mid-save (after 0..4 blobs): a clear error, the last good checkpoint kept and loadable, no stray blobs', async () => {
    for (let ok = 0; ok <= 4; ok++) {
      const store = new FailingStore(100);
      const good = state(4, 9);
      await saveCheckpoint(store, 'run', good);
      store.okPuts = ok;
      const err = await saveCheckpoint(store, 'run', state(8, 9)).then(() => null, (e: unknown) => e as Error);
      // Names the blob that did not fit, its size and the checkpoint's, and that the previous one stands.
      const file = ['run/ckpt-2/state.json', 'run/ckpt-2/params.f32', 'run/ckpt-2/m.f32', 'run/ckpt-2/v.f32', 'run/checkpoint.json'][ok]!;
      expect(err?.message).toMatch(new RegExp(`^could not save the checkpoint at step 8: the browser storage quota is exhausted writing ${file.replace(/\./g, '\\.')} \\(${ok === 1 || ok === 2 || ok === 3 ? '3\\.9 KiB' : '\\d+ B'}; the checkpoint needs 1[12]\\.\\d KiB in all\\): .*delete old runs; the last good checkpoint \\(step 4\\) is kept$`));
      expect(await loadCheckpoint(store, 'run')).toEqual(good);
      expect((await store.list('run/ckpt-2')).length).toBe(0);
    }
  });
});
