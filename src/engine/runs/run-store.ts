/**
 * A training run's files in a BlobStore (OPFS in the app's engine worker; a folder or memory in Node):
 * everything a fresh page needs to pick the run up again, plus its checkpoints and final adapter.
 *
 *   runs/<id>/run.json                      RunManifest: config, the model it trains, the rows' sha256, stats
 *   runs/<id>/rows.bin                      the prepared rows (encodeRows), checked against run.json on read
 *   runs/<id>/eval-rows.bin                 the held-out rows (same format), when the run has any
 *   runs/<id>/checkpoint.json, ckpt-<n>/…   the current checkpoint (share/checkpoint.ts: atomic, verified)
 *   runs/<id>/adapter.zip                   the PEFT adapter, written when the run ends (finished or stopped)
 *
 * rows.bin is written before run.json, so a run.json always names rows that were completely stored.
 * Small metadata the UI shows (loss curve, answers, status) lives apart, in the page's IndexedDB
 * (src/ui/store/runs.ts); this module is what the engine needs, and runs without a GPU.
 */
import { CheckpointError, loadCheckpoint, saveCheckpoint, type BlobStore } from '../share/checkpoint.ts';
import { sha256Hex } from '../share/sha256.ts';
import type { TrainConfig, TrainerState, TrainRow } from '../train/trainer.ts';

/** Where the run's base model comes from, so a fresh page can load the same one before resuming. */
export type RunModelSource =
  /** The offline demo model: created again from its seed (bit-identical weights). */
  | { kind: 'demo'; id: string; seed: number }
  /** A checkpoint folder or Hub model the user loads (the engine cannot fetch it on its own). */
  | { kind: 'files'; id: string; quantized: boolean };

export interface RunDataStats {
  rows: number;
  /** Tokens in documents (not padding). */
  tokens: number;
  /** Tokens with a label (that carry loss). */
  supervisedTokens: number;
  /** The longest row: every micro-batch is padded to it. */
  maxLength: number;
}

export interface RunManifest {
  format: 'webtune-run';
  version: 1;
  id: string;
  createdAt: string;
  model: RunModelSource;
  /** The complete config (defaults filled in), so a resumed trainer matches the checkpoint exactly. */
  config: TrainConfig;
  data: RunDataStats;
  rowsSha256: string;
  rowsBytes: number;
  /** The held-out rows the eval loss is measured on (absent: none). */
  evalData?: RunDataStats;
  evalRowsSha256?: string;
  evalRowsBytes?: number;
}

/** A checkpoint as the UI lists it. */
export interface CheckpointInfo {
  step: number;
  savedAt: string;
  bytes: number;
}

const ROWS_MAGIC = 0x31525457; // 'WTR1' little-endian
const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const enc = new TextEncoder();
const dec = new TextDecoder();

export class RunStoreError extends Error {
  override name = 'RunStoreError';
}

export function checkRunId(id: string): string {
  if (!RUN_ID.test(id)) throw new RunStoreError(`bad run id '${id}': use 1-64 letters, digits, '-' or '_'`);
  return id;
}

export const runDir = (id: string) => `runs/${checkRunId(id)}`;

/** The rows as bytes: u32 magic, u32 count, then per row u32 length and its four int32 arrays. */
export function encodeRows(rows: readonly TrainRow[]): Uint8Array {
  let words = 2;
  for (const r of rows) words += 1 + 4 * r.inputIds.length;
  const out = new Int32Array(words);
  out[0] = ROWS_MAGIC;
  out[1] = rows.length;
  let at = 2;
  rows.forEach((r, i) => {
    const n = r.inputIds.length;
    if (r.labels.length !== n || r.positionIds.length !== n || r.documentIds.length !== n) {
      throw new RunStoreError(`row ${i}: inputIds has ${n} tokens but labels/positionIds/documentIds have ${r.labels.length}/${r.positionIds.length}/${r.documentIds.length}`);
    }
    out[at++] = n;
    for (const a of [r.inputIds, r.labels, r.positionIds, r.documentIds]) {
      out.set(a, at);
      at += n;
    }
  });
  return new Uint8Array(out.buffer);
}

export function decodeRows(bytes: Uint8Array, what = 'rows.bin'): TrainRow[] {
  if (bytes.byteLength % 4 !== 0 || bytes.byteLength < 8) throw new RunStoreError(`${what}: ${bytes.byteLength} bytes is not a rows file`);
  const w = new Int32Array(bytes.slice().buffer);
  if (w[0] !== ROWS_MAGIC) throw new RunStoreError(`${what}: not a WebTune rows file (bad magic)`);
  const count = w[1]!;
  const rows: TrainRow[] = [];
  let at = 2;
  for (let i = 0; i < count; i++) {
    const n = w[at++];
    if (n === undefined || n < 0 || at + 4 * n > w.length) throw new RunStoreError(`${what}: row ${i} runs past the end of the file (truncated?)`);
    const take = () => w.slice(at, (at += n));
    rows.push({ inputIds: take(), labels: take(), positionIds: take(), documentIds: take() });
  }
  if (at !== w.length) throw new RunStoreError(`${what}: ${(w.length - at) * 4} bytes after the last of ${count} rows`);
  return rows;
}

export function rowStats(rows: readonly TrainRow[]): RunDataStats {
  const s: RunDataStats = { rows: rows.length, tokens: 0, supervisedTokens: 0, maxLength: 0 };
  for (const r of rows) {
    s.maxLength = Math.max(s.maxLength, r.inputIds.length);
    for (let i = 0; i < r.inputIds.length; i++) {
      if (r.documentIds[i]! >= 0) s.tokens++;
      if (r.labels[i]! !== -100) s.supervisedTokens++;
    }
  }
  return s;
}

/** Stores a new run's identity and rows (before its first step). */
export async function createRun(store: BlobStore, init: { id: string; model: RunModelSource; config: TrainConfig; rows: readonly TrainRow[]; evalRows?: readonly TrainRow[] }): Promise<RunManifest> {
  const dir = runDir(init.id);
  if (await store.get(`${dir}/run.json`)) throw new RunStoreError(`run '${init.id}' already exists`);
  const bytes = encodeRows(init.rows);
  const evalBytes = init.evalRows?.length ? encodeRows(init.evalRows) : null;
  const manifest: RunManifest = {
    format: 'webtune-run',
    version: 1,
    id: init.id,
    createdAt: new Date().toISOString(),
    model: init.model,
    config: { ...init.config },
    data: rowStats(init.rows),
    rowsSha256: sha256Hex(bytes),
    rowsBytes: bytes.byteLength,
    ...(evalBytes ? { evalData: rowStats(init.evalRows!), evalRowsSha256: sha256Hex(evalBytes), evalRowsBytes: evalBytes.byteLength } : {}),
  };
  await store.put(`${dir}/rows.bin`, bytes);
  if (evalBytes) await store.put(`${dir}/eval-rows.bin`, evalBytes);
  await store.put(`${dir}/run.json`, enc.encode(JSON.stringify(manifest, null, 2)));
  return manifest;
}

export async function readRunManifest(store: BlobStore, id: string): Promise<RunManifest> {
  const path = `${runDir(id)}/run.json`;
  const raw = await store.get(path);
  if (!raw) throw new RunStoreError(`run '${id}' is not stored in this browser (${path} is missing; deleted, or the site's storage was cleared)`);
  let m: RunManifest;
  try {
    m = JSON.parse(dec.decode(raw)) as RunManifest;
  } catch (e) {
    throw new RunStoreError(`${path} is damaged (not JSON: ${(e as Error).message})`);
  }
  if (m.format !== 'webtune-run' || m.version !== 1 || m.id !== id) throw new RunStoreError(`${path} is not the manifest of WebTune run '${id}'`);
  for (const k of ['model', 'config', 'data', 'rowsSha256'] as const) if (m[k] === undefined) throw new RunStoreError(`${path}: field '${k}' is missing`);
  return m;
}

/** The run's manifest, its rows and its held-out rows (empty when it has none), verified (size and sha256). */
export async function readRun(store: BlobStore, id: string): Promise<{ manifest: RunManifest; rows: TrainRow[]; evalRows: TrainRow[] }> {
  const manifest = await readRunManifest(store, id);
  const rows = await readRowsFile(store, `${runDir(id)}/rows.bin`, manifest.rowsBytes, manifest.rowsSha256, "the run's training data is gone, so it cannot be resumed");
  const evalRows =
    manifest.evalRowsSha256 !== undefined && manifest.evalRowsBytes !== undefined
      ? await readRowsFile(store, `${runDir(id)}/eval-rows.bin`, manifest.evalRowsBytes, manifest.evalRowsSha256, 'the held-out rows are gone (start the run again to measure the eval loss)')
      : [];
  return { manifest, rows, evalRows };
}

async function readRowsFile(store: BlobStore, path: string, size: number, sha256: string, missing: string): Promise<TrainRow[]> {
  const bytes = await store.get(path);
  if (!bytes) throw new RunStoreError(`${path} is missing: ${missing}`);
  if (bytes.byteLength !== size) throw new RunStoreError(`${path} has ${bytes.byteLength} bytes, run.json says ${size} (partial write?)`);
  if (sha256Hex(bytes) !== sha256) throw new RunStoreError(`${path} is corrupt (sha256 mismatch)`);
  return decodeRows(bytes, path);
}

/** Ids of the stored runs (those with a run.json). */
export async function listRunIds(store: BlobStore): Promise<string[]> {
  const ids = new Set<string>();
  for (const b of await store.list('runs/')) {
    const m = /^runs\/([^/]+)\/run\.json$/.exec(b.name);
    if (m) ids.add(m[1]!);
  }
  return [...ids].sort();
}

/** Saves a checkpoint of the run (atomic: the previous one stays current until the new one is complete). */
export async function saveRunCheckpoint(store: BlobStore, id: string, state: TrainerState): Promise<CheckpointInfo> {
  const m = await saveCheckpoint(store, runDir(id), state);
  return { step: m.step, savedAt: m.savedAt, bytes: m.files.reduce((s, f) => s + f.size, 0) };
}

/** The run's current checkpoint, verified; null when it has none yet. */
export function loadRunCheckpoint(store: BlobStore, id: string): Promise<TrainerState | null> {
  return loadCheckpoint(store, runDir(id));
}

/** What the current checkpoint is (step, time, size) without reading its tensors; null when none. */
export async function runCheckpointInfo(store: BlobStore, id: string): Promise<CheckpointInfo | null> {
  const path = `${runDir(id)}/checkpoint.json`;
  const raw = await store.get(path);
  if (!raw) return null;
  try {
    const m = JSON.parse(dec.decode(raw)) as { step: number; savedAt: string; files: { size: number }[] };
    return { step: m.step, savedAt: m.savedAt, bytes: m.files.reduce((s, f) => s + f.size, 0) };
  } catch (e) {
    throw new CheckpointError(`${path} is damaged (not JSON: ${(e as Error).message})`);
  }
}

export async function saveRunAdapter(store: BlobStore, id: string, zip: Uint8Array): Promise<void> {
  await store.put(`${runDir(id)}/adapter.zip`, zip);
}

export function readRunAdapter(store: BlobStore, id: string): Promise<Uint8Array | null> {
  return store.get(`${runDir(id)}/adapter.zip`);
}

/** Removes every file of the run (run.json last, so an interrupted delete still lists the run). */
export async function deleteRun(store: BlobStore, id: string): Promise<void> {
  const dir = runDir(id);
  const files = await store.list(`${dir}/`);
  for (const f of files) if (f.name !== `${dir}/run.json`) await store.delete(f.name);
  await store.delete(`${dir}/run.json`);
}
