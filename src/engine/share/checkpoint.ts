/**
 * Checkpoints that survive closing the tab. A `BlobStore` keeps named binary blobs (OPFS in the browser,
 * a folder in Node, memory in tests); a checkpoint is a few blobs plus a small manifest:
 *
 *   <run>/ckpt-<seq>/params.f32, m.f32, v.f32, state.json     written first, under new names
 *   <run>/checkpoint.json                                      then switched (one atomic put)
 *
 * The manifest lists every blob with its size and sha256, checked on read. A crash or a full disk while
 * the new blobs are written leaves the manifest pointing at the previous checkpoint; only after the
 * switch are the old blobs deleted. So the last good checkpoint is never lost.
 */
import type { TrainConfig, TrainerState } from '../train/trainer.ts';
import { sha256Hex } from './sha256.ts';

export interface BlobInfo {
  readonly name: string;
  readonly size: number;
}

export interface BlobStore {
  /** Stores a blob; replacing an existing one is atomic (readers see the old or the new bytes, never a mix). */
  put(name: string, data: Uint8Array): Promise<void>;
  /** The blob, or null when there is none. */
  get(name: string): Promise<Uint8Array | null>;
  /** Blobs whose names start with `prefix`. */
  list(prefix?: string): Promise<BlobInfo[]>;
  /** Removes a blob (no error when absent). */
  delete(name: string): Promise<void>;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export class MemoryBlobStore implements BlobStore {
  readonly blobs = new Map<string, Uint8Array>();
  async put(name: string, data: Uint8Array) {
    this.blobs.set(name, data.slice());
  }
  async get(name: string) {
    const b = this.blobs.get(name);
    return b ? b.slice() : null;
  }
  async list(prefix = '') {
    return [...this.blobs].filter(([n]) => n.startsWith(prefix)).map(([name, b]) => ({ name, size: b.length }));
  }
  async delete(name: string) {
    this.blobs.delete(name);
  }
}

/**
 * OPFS (navigator.storage.getDirectory()): names with '/' become sub-folders. createWritable() writes to a
 * swap file that replaces the blob only on close(), which makes put atomic. Call requestPersistence() once
 * so the browser does not evict the checkpoints under storage pressure.
 */
export class OpfsBlobStore implements BlobStore {
  constructor(private readonly root: FileSystemDirectoryHandle) {}

  static async open(): Promise<OpfsBlobStore> {
    return new OpfsBlobStore(await navigator.storage.getDirectory());
  }

  static async requestPersistence(): Promise<boolean> {
    return (await navigator.storage.persisted?.()) || ((await navigator.storage.persist?.()) ?? false);
  }

  private async dirOf(name: string, create: boolean): Promise<{ dir: FileSystemDirectoryHandle; file: string } | null> {
    const parts = name.split('/');
    const file = parts.pop()!;
    let dir = this.root;
    for (const p of parts) {
      try {
        dir = await dir.getDirectoryHandle(p, { create });
      } catch (e) {
        if (!create && (e as DOMException).name === 'NotFoundError') return null;
        throw e;
      }
    }
    return { dir, file };
  }

  async put(name: string, data: Uint8Array) {
    const { dir, file } = (await this.dirOf(name, true))!;
    const w = await (await dir.getFileHandle(file, { create: true })).createWritable({ keepExistingData: false });
    try {
      await w.write(data as Uint8Array<ArrayBuffer>);
    } catch (e) {
      await w.abort().catch(() => {});
      throw e;
    }
    await w.close();
  }

  async get(name: string) {
    const at = await this.dirOf(name, false);
    if (!at) return null;
    try {
      const f = await (await at.dir.getFileHandle(at.file)).getFile();
      return new Uint8Array(await f.arrayBuffer());
    } catch (e) {
      if ((e as DOMException).name === 'NotFoundError') return null;
      throw e;
    }
  }

  async list(prefix = '') {
    const out: BlobInfo[] = [];
    const walk = async (dir: FileSystemDirectoryHandle, path: string) => {
      for await (const [n, h] of (dir as unknown as { entries(): AsyncIterable<[string, FileSystemHandle]> }).entries()) {
        const full = path + n;
        if (h.kind === 'directory') await walk(h as FileSystemDirectoryHandle, `${full}/`);
        else if (full.startsWith(prefix)) out.push({ name: full, size: (await (h as FileSystemFileHandle).getFile()).size });
      }
    };
    await walk(this.root, '');
    return out;
  }

  async delete(name: string) {
    const at = await this.dirOf(name, false);
    if (!at) return;
    await at.dir.removeEntry(at.file).catch((e: DOMException) => {
      if (e.name !== 'NotFoundError') throw e;
    });
  }
}

export interface CheckpointManifest {
  format: 'webtune-checkpoint';
  version: 1;
  seq: number;
  step: number;
  savedAt: string;
  files: Array<{ name: string; size: number; sha256: string }>;
}

const MANIFEST = 'checkpoint.json';
const enc = new TextEncoder();
const bytesOf = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** What went wrong writing `file` (of a checkpoint of `total` bytes); a full quota says how much was needed and, where the browser tells, how much is free. */
async function describeFailure(e: unknown, file: string, fileBytes: number, total: number): Promise<string> {
  const name = (e as { name?: string })?.name;
  if (name !== 'QuotaExceededError') return e instanceof Error ? e.message : String(e);
  const estimate = await (globalThis.navigator as Navigator | undefined)?.storage?.estimate?.().catch(() => null);
  const free = estimate?.quota !== undefined && estimate.usage !== undefined ? `; ${formatSize(Math.max(0, estimate.quota - estimate.usage))} free of this site's ${formatSize(estimate.quota)}` : '';
  return `the browser storage quota is exhausted writing ${file} (${formatSize(fileBytes)}; the checkpoint needs ${formatSize(total)} in all${free}): free space in the Model section's cache list, or delete old runs`;
}

function formatSize(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

async function readManifest(store: BlobStore, run: string): Promise<CheckpointManifest | null> {
  const raw = await store.get(`${run}/${MANIFEST}`);
  if (!raw) return null;
  let m: CheckpointManifest;
  try {
    m = JSON.parse(new TextDecoder().decode(raw)) as CheckpointManifest;
  } catch (e) {
    throw new CheckpointError(`${run}/${MANIFEST} is damaged (not JSON: ${(e as Error).message})`);
  }
  if (m.format !== 'webtune-checkpoint' || m.version !== 1 || !Array.isArray(m.files)) throw new CheckpointError(`${run}/${MANIFEST} is not a WebTune checkpoint manifest`);
  return m;
}

/** Saves a trainer state atomically; on failure the previous checkpoint stays the current one. */
export async function saveCheckpoint(store: BlobStore, run: string, s: TrainerState): Promise<CheckpointManifest> {
  const prev = await readManifest(store, run).catch(() => null);
  const seq = (prev?.seq ?? 0) + 1;
  const dir = `${run}/ckpt-${seq}`;
  const { params, m, v, ...meta } = s;
  const blobs: Array<[string, Uint8Array]> = [
    [`${dir}/state.json`, enc.encode(JSON.stringify(meta))],
    [`${dir}/params.f32`, bytesOf(params)],
    [`${dir}/m.f32`, bytesOf(m)],
    [`${dir}/v.f32`, bytesOf(v)],
  ];
  const written: string[] = [];
  const manifest: CheckpointManifest = { format: 'webtune-checkpoint', version: 1, seq, step: s.step, savedAt: new Date().toISOString(), files: [] };
  let writing: [string, number] = ['', 0];
  try {
    for (const [name, data] of blobs) {
      written.push(name);
      writing = [name, data.length];
      await store.put(name, data);
      manifest.files.push({ name, size: data.length, sha256: sha256Hex(data) });
    }
    const switched = enc.encode(JSON.stringify(manifest, null, 2));
    writing = [`${run}/${MANIFEST}`, switched.length];
    await store.put(writing[0], switched);
  } catch (e) {
    for (const n of written) await store.delete(n).catch(() => {});
    const kept = prev ? `the last good checkpoint (step ${prev.step}) is kept` : 'there is no earlier checkpoint';
    const total = blobs.reduce((a, [, d]) => a + d.length, 0);
    throw new CheckpointError(`could not save the checkpoint at step ${s.step}: ${await describeFailure(e, writing[0], writing[1], total)}; ${kept}`);
  }
  // The switch is done: drop blobs of older checkpoints.
  for (const b of await store.list(`${run}/ckpt-`)) if (!b.name.startsWith(`${dir}/`)) await store.delete(b.name).catch(() => {});
  return manifest;
}

/** The run's current checkpoint, every blob checked (size, sha256); null when the run has none. */
export async function loadCheckpoint(store: BlobStore, run: string): Promise<TrainerState | null> {
  const man = await readManifest(store, run);
  if (!man) return null;
  const data = new Map<string, Uint8Array>();
  for (const f of man.files) {
    const b = await store.get(f.name);
    if (!b) throw new CheckpointError(`checkpoint of step ${man.step}: ${f.name} is missing`);
    if (b.length !== f.size) throw new CheckpointError(`checkpoint of step ${man.step}: ${f.name} has ${b.length} bytes, the manifest says ${f.size} (partial write?)`);
    if (sha256Hex(b) !== f.sha256) throw new CheckpointError(`checkpoint of step ${man.step}: ${f.name} is corrupt (sha256 mismatch)`);
    data.set(f.name.slice(f.name.lastIndexOf('/') + 1), b);
  }
  const f32 = (n: string) => {
    const b = data.get(n);
    if (!b) throw new CheckpointError(`checkpoint of step ${man.step}: no ${n}`);
    return new Float32Array(b.slice().buffer);
  };
  const meta = JSON.parse(new TextDecoder().decode(data.get('state.json') ?? enc.encode('null'))) as Omit<TrainerState, 'params' | 'm' | 'v'> | null;
  if (!meta || meta.version !== 1) throw new CheckpointError(`checkpoint of step ${man.step}: state.json is missing or of an unknown version`);
  return { ...meta, config: meta.config as TrainConfig, params: f32('params.f32'), m: f32('m.f32'), v: f32('v.f32') };
}

/** Removes a run's checkpoints. */
export async function deleteCheckpoints(store: BlobStore, run: string): Promise<void> {
  for (const b of await store.list(`${run}/`)) await store.delete(b.name);
}
