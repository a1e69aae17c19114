/**
 * Hub models kept on this machine: download (resumable, verified), open offline, list, delete.
 *
 * Layout in the store (names with '/' are folders in OPFS):
 *   hub/<owner>/<name>/refs/<revision>                 the commit a branch/tag resolved to (after a complete download)
 *   hub/<owner>/<name>/<commit>/plan.json              what is being downloaded (files, sizes, hashes)
 *   hub/<owner>/<name>/<commit>/files/<path>/part-<k>  the file's bytes, in parts of `partBytes` (64 MiB)
 *   hub/<owner>/<name>/<commit>/manifest.json          written last, once every file is complete and verified
 *   hub/<owner>/<name>/<commit>/used.json              when the model was last opened
 *
 * Only the manifest makes an entry valid: a download that stops (network, quota, reload, cancel) leaves
 * parts and a plan but no manifest, so it is listed as partial and never opened; the next download of the
 * same commit resumes from the stored bytes (HTTP Range), re-hashing them first so the sha256 covers the
 * whole file. On open, every part's size is checked against the manifest (and, on request, the sha256).
 * Parts bound what one interrupted write can lose (createWritable commits on close) and never exceed a
 * size that is cheap to rewrite.
 */
import { formatBytes } from '../engine/gpu/errors.ts';
import { ModelConfigError, SUPPORTED_ARCHITECTURES, modelSpecFromConfig } from '../engine/model/config.ts';
import { Sha256 } from '../engine/share/sha256.ts';
import { HubClient, HubError, checkRepoId, type HubFileEntry, type HubRepoInfo } from './client.ts';
import { isQuotaError, type FileWriter, type ResumableStore } from './store.ts';

export type HubProgress =
  | { status: 'resolving'; repo: string; revision: string }
  | { status: 'cached'; repo: string; commit: string; bytes: number }
  | { status: 'checking'; repo: string; file: string }
  | { status: 'downloading'; repo: string; file: string; fileLoaded: number; fileTotal: number; loaded: number; total: number }
  | { status: 'retrying'; repo: string; file: string; attempt: number; reason: string }
  | { status: 'verifying'; repo: string; file: string }
  | { status: 'done'; repo: string; commit: string; bytes: number };

export interface CachedModel {
  repo: string;
  commit: string;
  /** Branches/tags that resolved to this commit. */
  revisions: string[];
  /** Bytes stored now. */
  bytes: number;
  /** Bytes of the whole model (null when a download stopped before its plan was written). */
  totalBytes: number | null;
  complete: boolean;
  lastUsed: string | null;
  files: number;
}

export interface FetchOptions {
  revision?: string;
  signal?: AbortSignal;
  onProgress?: (p: HubProgress) => void;
}

export interface HubCacheOptions {
  /** Bytes per stored part (default 64 MiB). */
  partBytes?: number;
  /** Automatic retries after a network drop within one download (default 4). */
  retries?: number;
  /** Delay before retry n is n × this (default 2000 ms). */
  retryDelayMs?: number;
  /** Least time between two 'downloading' events of one file (default 200 ms; the last is always sent). */
  progressIntervalMs?: number;
}

interface PlannedFile extends HubFileEntry {}

interface Plan {
  format: 'webtune-hub-plan';
  version: 1;
  repo: string;
  revision: string;
  commit: string;
  partBytes: number;
  files: PlannedFile[];
  startedAt: string;
}

interface Manifest {
  format: 'webtune-hub-cache';
  version: 1;
  repo: string;
  revision: string;
  commit: string;
  partBytes: number;
  files: Array<{ path: string; size: number; sha256: string }>;
  completedAt: string;
}

/** Files a checkpoint needs besides its weights. */
export const CHECKPOINT_FILES: readonly string[] = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'chat_template.jinja',
  'chat_template.json',
];
const INDEX = 'model.safetensors.index.json';
const ADAPTER_CONFIG = 'adapter_config.json';
const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
const enc = new TextEncoder();
const dec = new TextDecoder();
const COMMIT = /^[0-9a-f]{40}$/;

export class HubCache {
  private readonly partBytes: number;
  private readonly retries: number;
  private readonly retryDelayMs: number;
  private readonly progressIntervalMs: number;
  /** Entries being downloaded now ("repo@commit"): not deletable. */
  private readonly active = new Set<string>();

  constructor(
    readonly store: ResumableStore,
    readonly client: HubClient,
    opts: HubCacheOptions = {},
  ) {
    this.partBytes = opts.partBytes ?? 64 * 2 ** 20;
    this.retries = opts.retries ?? 4;
    this.retryDelayMs = opts.retryDelayMs ?? 2000;
    this.progressIntervalMs = opts.progressIntervalMs ?? 200;
  }

  private dir(repo: string, commit: string) {
    return `hub/${repo}/${commit}`;
  }
  private refName(repo: string, revision: string) {
    return `hub/${repo}/refs/${encodeURIComponent(revision)}`;
  }
  private partName(repo: string, commit: string, path: string, k: number) {
    return `${this.dir(repo, commit)}/files/${path}/part-${k}`;
  }

  /**
   * The model's files (name → Blob), from the cache when the revision's commit is complete there,
   * otherwise downloaded (resuming what an earlier attempt stored). Offline, the last commit the
   * revision resolved to is opened.
   */
  async fetchModel(repoId: string, opts: FetchOptions = {}): Promise<Map<string, Blob>> {
    return this.fetchRepo(repoId, opts, 'model');
  }

  /**
   * A PEFT LoRA adapter repo's adapter_config.json + adapter_model.safetensors (and its README.md model
   * card when there is one), with the same resumable, verified, cached download as a model.
   */
  async fetchAdapter(repoId: string, opts: FetchOptions = {}): Promise<Map<string, Blob>> {
    return this.fetchRepo(repoId, opts, 'adapter');
  }

  private async fetchRepo(repoId: string, opts: FetchOptions, kind: 'model' | 'adapter'): Promise<Map<string, Blob>> {
    const repo = checkRepoId(repoId);
    const revision = opts.revision?.trim() || 'main';
    const emit = opts.onProgress ?? (() => {});
    emit({ status: 'resolving', repo, revision });
    let info: HubRepoInfo;
    try {
      info = await this.client.repoInfo(repo, revision, opts.signal);
    } catch (e) {
      if (e instanceof HubError && e.code === 'network') {
        const commit = COMMIT.test(revision) ? revision : dec.decode((await this.store.get(this.refName(repo, revision))) ?? new Uint8Array());
        if (commit && (await this.readManifest(repo, commit))) {
          const files = await this.open(repo, commit);
          emit({ status: 'cached', repo, commit, bytes: sumSizes(files) });
          return files;
        }
        throw new HubError('offline', `${e.message}; and ${repo}@${revision} is not in this browser's cache yet`);
      }
      throw e;
    }
    if (await this.readManifest(repo, info.commit)) {
      const files = await this.open(repo, info.commit);
      await this.store.put(this.refName(repo, revision), enc.encode(info.commit));
      emit({ status: 'cached', repo, commit: info.commit, bytes: sumSizes(files) });
      return files;
    }
    const key = `${repo}@${info.commit}`;
    if (this.active.has(key)) throw new HubError('http', `${repo} is already being downloaded`);
    this.active.add(key);
    try {
      return await this.download(info, opts.signal, emit, kind);
    } finally {
      this.active.delete(key);
    }
  }

  private async download(info: HubRepoInfo, signal: AbortSignal | undefined, emit: (p: HubProgress) => void, kind: 'model' | 'adapter'): Promise<Map<string, Blob>> {
    const { repo, commit } = info;
    const byPath = new Map(info.files.map((f) => [f.path, f]));
    if (kind === 'adapter') {
      const cfg = byPath.get(ADAPTER_CONFIG);
      const weights = byPath.get(ADAPTER_WEIGHTS);
      if (!cfg || !weights) {
        const bin = byPath.has('adapter_model.bin');
        throw new HubError('unsupported', `${repo} is not a PEFT adapter WebTune can import: it needs ${ADAPTER_CONFIG} and ${ADAPTER_WEIGHTS}${bin ? ' (it has adapter_model.bin, a PyTorch pickle WebTune does not read)' : ''}`);
      }
      const files = [cfg, ...(byPath.has('README.md') ? [byPath.get('README.md')!] : []), weights];
      return this.downloadPlanned(info, files, signal, emit);
    }
    const config = byPath.get('config.json');
    if (!config) throw new HubError('unsupported', `${repo} has no config.json: it is not a transformers checkpoint WebTune can load`);
    const hasWeights = info.files.some((f) => f.path === 'model.safetensors' || f.path === INDEX);
    if (!hasWeights) {
      const bin = info.files.some((f) => /\.(bin|pt|pth)$/.test(f.path));
      throw new HubError('no-weights', `${repo} has no safetensors weights (model.safetensors or ${INDEX})${bin ? '; it has only PyTorch .bin files, which WebTune does not read' : ''}`);
    }
    // 1. config.json: is this a model WebTune trains? Decided before any weights are fetched.
    const small = (p: string) => byPath.get(p);
    const progress = this.progressCounter(repo, emit);
    emit({ status: 'checking', repo, file: 'config.json' });
    const partBytes = (await this.readPlan(repo, commit))?.partBytes ?? this.partBytes;
    const pre = [config, ...(small(INDEX) ? [small(INDEX)!] : [])];
    const preTotal = pre.reduce((a, f) => a + f.size, 0);
    for (const f of pre) await this.gatedHint(info, this.downloadFile(repo, commit, f, partBytes, signal, progress.of(preTotal), emit));
    const configText = await this.readText(repo, commit, config, partBytes);
    try {
      modelSpecFromConfig(JSON.parse(configText), `${repo}/config.json`);
    } catch (e) {
      const c = safeJson(configText);
      const what = [typeof c?.model_type === 'string' ? c.model_type : null, Array.isArray(c?.architectures) ? c.architectures.join(', ') : null].filter(Boolean).join(' / ') || 'unknown architecture';
      const reason = e instanceof ModelConfigError || e instanceof SyntaxError ? e.message : String(e);
      throw new HubError('unsupported', `${repo} (${what}) is not a model WebTune can train: it supports ${Object.keys(SUPPORTED_ARCHITECTURES).join(', ')}. ${reason}`);
    }

    // 2. The weights the checkpoint names, and the tokenizer/generation files it has.
    let weights: string[];
    if (small(INDEX)) {
      const index = safeJson(await this.readText(repo, commit, small(INDEX)!, partBytes)) as { weight_map?: Record<string, string> } | null;
      if (!index?.weight_map || typeof index.weight_map !== 'object') throw new HubError('unsupported', `${repo}/${INDEX}: no weight_map`);
      weights = [...new Set(Object.values(index.weight_map))].sort();
      for (const w of weights) if (!byPath.has(w)) throw new HubError('unsupported', `${repo}/${INDEX} names ${w}, which the repo does not have`);
    } else weights = ['model.safetensors'];
    const files: PlannedFile[] = [...pre, ...CHECKPOINT_FILES.filter((p) => p !== 'config.json' && byPath.has(p)).map((p) => byPath.get(p)!), ...weights.map((w) => byPath.get(w)!)];
    return this.downloadPlanned(info, files, signal, emit, partBytes);
  }

  /** A gated repo answers 401 to a request without a token: say what to do about it. */
  private gatedHint<T>(info: HubRepoInfo, p: Promise<T>): Promise<T> {
    return p.catch((e: unknown) => {
      if (info.gated && e instanceof HubError && e.code === 'unauthorized') throw new HubError('gated', `${info.repo} is gated: open ${this.client.endpoint}/${info.repo}, sign in and accept its licence, then save a Hugging Face access token (read access) here.`);
      throw e;
    });
  }

  /** Bytes loaded so far over a download, reported throttled: a chunk is ~64 KiB, a model is GBs; the UI needs a few updates a second. */
  private progressCounter(repo: string, emit: (p: HubProgress) => void) {
    let lastEmit = 0;
    const counter = {
      loaded: 0,
      of: (total: number) => (file: string, fileLoaded: number, fileTotal: number, delta: number) => {
        counter.loaded += delta;
        const now = Date.now();
        if (fileLoaded !== fileTotal && now - lastEmit < this.progressIntervalMs) return;
        lastEmit = now;
        emit({ status: 'downloading', repo, file, fileLoaded, fileTotal, loaded: counter.loaded, total });
      },
    };
    return counter;
  }

  /** Steps 3 and 4 for a list of files: room check, downloads (resumable, verified), manifest, ref. */
  private async downloadPlanned(info: HubRepoInfo, files: PlannedFile[], signal: AbortSignal | undefined, emit: (p: HubProgress) => void, knownPartBytes?: number): Promise<Map<string, Blob>> {
    const { repo, commit } = info;
    const partBytes = knownPartBytes ?? (await this.readPlan(repo, commit))?.partBytes ?? this.partBytes;
    const progress = this.progressCounter(repo, emit);
    const plan: Plan = { format: 'webtune-hub-plan', version: 1, repo, revision: info.revision, commit, partBytes, files, startedAt: new Date().toISOString() };
    await this.store.put(`${this.dir(repo, commit)}/plan.json`, enc.encode(JSON.stringify(plan, null, 2)));

    // 3. Room for what is still missing?
    const have = new Map<string, number>();
    for (const f of files) have.set(f.path, await this.storedBytes(repo, commit, f, partBytes));
    const missing = files.map((f) => ({ f, need: f.size - (have.get(f.path) ?? 0) })).filter((x) => x.need > 0);
    const needed = missing.reduce((a, x) => a + x.need, 0);
    const available = await this.store.available();
    if (available !== null && needed > available) {
      const largest = missing.reduce((a, x) => (x.need > a.need ? x : a));
      throw new HubError(
        'quota',
        `not enough browser storage for ${repo}: ${formatBytes(needed)} still to download (the largest file, ${largest.f.path}, needs ${formatBytes(largest.need)}), ${formatBytes(available)} available. Delete cached models below or free disk space.`,
      );
    }

    // 4. Everything else, small files first; then the manifest (the commit point) and the ref.
    const total = files.reduce((a, f) => a + f.size, 0);
    progress.loaded = [...have.values()].reduce((a, b) => a + b, 0);
    const sums = new Map<string, string>();
    for (const f of files) sums.set(f.path, await this.gatedHint(info, this.downloadFile(repo, commit, f, partBytes, signal, progress.of(total), emit)));
    const manifest: Manifest = {
      format: 'webtune-hub-cache',
      version: 1,
      repo,
      revision: info.revision,
      commit,
      partBytes,
      files: files.map((f) => ({ path: f.path, size: f.size, sha256: sums.get(f.path)! })),
      completedAt: new Date().toISOString(),
    };
    await this.store.put(`${this.dir(repo, commit)}/manifest.json`, enc.encode(JSON.stringify(manifest, null, 2)));
    await this.store.put(this.refName(repo, info.revision), enc.encode(commit));
    await this.store.delete(`${this.dir(repo, commit)}/plan.json`);
    emit({ status: 'done', repo, commit, bytes: total });
    return this.open(repo, commit);
  }

  /** Bytes of a file already stored as whole-or-leading parts (what a resume starts from). */
  private async storedBytes(repo: string, commit: string, f: HubFileEntry, partBytes: number): Promise<number> {
    let have = 0;
    for (let k = 0; k * partBytes < f.size; k++) {
      const expected = Math.min(partBytes, f.size - k * partBytes);
      const s = (await this.store.size(this.partName(repo, commit, f.path, k))) ?? 0;
      if (s === expected) {
        have += expected;
        continue;
      }
      if (s < expected) have += s; // a part cut short: resume inside it
      break; // a part longer than it should be is rewritten from its start
    }
    return have;
  }

  /** Re-reads the first `bytes` of a stored file into the hash (a resume continues the same digest). */
  private async rehash(repo: string, commit: string, path: string, bytes: number, partBytes: number, hash: Sha256): Promise<void> {
    const STEP = 8 * 2 ** 20;
    for (let k = 0; k * partBytes < bytes; k++) {
      const b = await this.store.blob(this.partName(repo, commit, path, k));
      const upto = Math.min(partBytes, bytes - k * partBytes);
      if (!b || b.size < upto) throw new HubError('corrupt-cache', `${repo}/${path}: part ${k} changed while resuming`);
      for (let o = 0; o < upto; o += STEP) hash.update(new Uint8Array(await b.slice(o, Math.min(upto, o + STEP)).arrayBuffer()));
    }
  }

  /**
   * Downloads one file into its parts, resuming from the stored bytes, retrying network drops; returns
   * its sha256. A mismatch with the Hub's hash (or git blob id) deletes the stored bytes.
   */
  private async downloadFile(
    repo: string,
    commit: string,
    f: HubFileEntry,
    partBytes: number,
    signal: AbortSignal | undefined,
    onBytes: (file: string, fileLoaded: number, fileTotal: number, delta: number) => void,
    emit: (p: HubProgress) => void,
  ): Promise<string> {
    const part = (k: number) => this.partName(repo, commit, f.path, k);
    let attempt = 0;
    for (;;) {
      if (signal?.aborted) throw abortError();
      // Where to start: the stored bytes (after a drop, a reload or a crash), hashed again.
      let offset = await this.storedBytes(repo, commit, f, partBytes);
      for (const b of await this.store.list(`${this.dir(repo, commit)}/files/${f.path}/part-`)) {
        const k = Number(b.name.slice(b.name.lastIndexOf('-') + 1));
        // Parts past the resume point (left by an inconsistent earlier state) go; the part being resumed is truncated on open.
        if (k * partBytes > offset || k * partBytes >= f.size) await this.store.delete(b.name);
      }
      const hash = new Sha256();
      await this.rehash(repo, commit, f.path, offset, partBytes, hash);
      if (offset === f.size) return this.verify(repo, commit, f, partBytes, hash, emit);

      let res: Response;
      try {
        res = await this.client.file(repo, commit, f.path, offset, signal);
      } catch (e) {
        if (e instanceof HubError && e.code === 'network' && attempt < this.retries) {
          attempt++;
          emit({ status: 'retrying', repo, file: f.path, attempt, reason: e.message });
          await sleep(this.retryDelayMs * attempt, signal);
          continue;
        }
        throw e;
      }
      if (offset > 0 && res.status !== 206) {
        // The server ignored the range (200) or refused it (416): start this file again.
        await res.body?.cancel().catch(() => {});
        await this.deleteFileParts(repo, commit, f.path);
        onBytes(f.path, 0, f.size, -offset);
        continue;
      }
      if (res.status === 206) {
        const m = /bytes (\d+)-\d+\/(\d+|\*)/.exec(res.headers.get('content-range') ?? '');
        if (!m || Number(m[1]) !== offset) throw new HubError('http', `${repo}/${f.path}: asked for bytes from ${offset}, the server sent '${res.headers.get('content-range')}'`);
        if (m[2] !== '*' && Number(m[2]) !== f.size) throw new HubError('integrity', `${repo}/${f.path}: the Hub lists ${f.size} bytes, the server has ${m[2]}`);
      }
      if (!res.body) throw new HubError('http', `${repo}/${f.path}: empty response`);

      let writer: FileWriter | null = null;
      let writerPart = -1;
      const reader = res.body.getReader();
      let dropped: unknown = null;
      try {
        for (;;) {
          if (signal?.aborted) throw abortError();
          let chunk: ReadableStreamReadResult<Uint8Array>;
          try {
            chunk = await reader.read();
          } catch (e) {
            if (signal?.aborted || (e as { name?: string })?.name === 'AbortError') throw abortError();
            dropped = e;
            break;
          }
          if (chunk.done) break;
          const data = chunk.value;
          if (offset + data.length > f.size) throw new HubError('integrity', `${repo}/${f.path}: the server sent more than the ${f.size} bytes the Hub lists`);
          let o = 0;
          while (o < data.length) {
            const k = Math.floor((offset + o) / partBytes);
            const inPart = offset + o - k * partBytes;
            if (k !== writerPart) {
              await writer?.close();
              writer = null;
              writer = await this.store.openWriter(part(k), inPart);
              writerPart = k;
            }
            const n = Math.min(data.length - o, partBytes - inPart);
            const piece = data.subarray(o, o + n);
            try {
              await writer!.write(piece);
            } catch (e) {
              if (isQuotaError(e)) throw new HubError('quota', `browser storage is full while storing ${repo}/${f.path} (${formatBytes(f.size)}; ${formatBytes(f.size - offset - o)} still to store). Delete cached models or free disk space, then download again: it resumes.`);
              throw e;
            }
            hash.update(piece);
            o += n;
          }
          offset += data.length;
          onBytes(f.path, offset, f.size, data.length);
        }
      } catch (e) {
        await reader.cancel().catch(() => {});
        throw e;
      } finally {
        await writer?.close().catch(() => {});
      }
      if (offset === f.size) return this.verify(repo, commit, f, partBytes, hash, emit);
      // The body ended early or broke: a network drop. What arrived is stored; resume from there.
      if (attempt >= this.retries) {
        throw new HubError('network', `the connection dropped while downloading ${repo}/${f.path} (${formatBytes(offset)} of ${formatBytes(f.size)} kept); download again to resume${dropped ? ` (${dropped instanceof Error ? dropped.message : String(dropped)})` : ''}`);
      }
      attempt++;
      emit({ status: 'retrying', repo, file: f.path, attempt, reason: dropped ? String((dropped as Error).message ?? dropped) : 'the response ended early' });
      await sleep(this.retryDelayMs * attempt, signal);
    }
  }

  private async verify(repo: string, commit: string, f: HubFileEntry, partBytes: number, hash: Sha256, emit: (p: HubProgress) => void): Promise<string> {
    emit({ status: 'verifying', repo, file: f.path });
    const sum = hash.hex();
    let bad: string | null = null;
    if (f.sha256 && sum !== f.sha256) bad = `sha256 ${sum}, the Hub lists ${f.sha256}`;
    else if (!f.sha256 && f.gitOid && f.size <= 64 * 2 ** 20 && globalThis.crypto?.subtle) {
      const blob = await this.fileBlob(repo, commit, f.path, f.size, partBytes);
      const oid = await gitBlobOid(new Uint8Array(await blob.arrayBuffer()));
      if (oid !== f.gitOid) bad = `git blob id ${oid}, the Hub lists ${f.gitOid}`;
    }
    if (bad) {
      await this.deleteFileParts(repo, commit, f.path);
      throw new HubError('integrity', `${repo}/${f.path} failed verification (${bad}); the bytes were deleted: download again`);
    }
    return sum;
  }

  private async deleteFileParts(repo: string, commit: string, path: string): Promise<void> {
    for (const b of await this.store.list(`${this.dir(repo, commit)}/files/${path}/part-`)) await this.store.delete(b.name);
  }

  private async fileBlob(repo: string, commit: string, path: string, size: number, partBytes: number): Promise<Blob> {
    const parts: Blob[] = [];
    for (let k = 0; k * partBytes < size; k++) {
      const expected = Math.min(partBytes, size - k * partBytes);
      const b = await this.store.blob(this.partName(repo, commit, path, k));
      if (!b || b.size !== expected) throw new HubError('corrupt-cache', `${repo}/${path}: stored part ${k} has ${b ? b.size : 'no'} bytes, expected ${expected}; delete the model from the cache and download it again`);
      parts.push(b);
    }
    return new Blob(parts);
  }

  private async readText(repo: string, commit: string, f: HubFileEntry, partBytes: number): Promise<string> {
    return dec.decode(await (await this.fileBlob(repo, commit, f.path, f.size, partBytes)).arrayBuffer());
  }

  private async readPlan(repo: string, commit: string): Promise<Plan | null> {
    const raw = await this.store.get(`${this.dir(repo, commit)}/plan.json`);
    const p = raw ? (safeJson(dec.decode(raw)) as Plan | null) : null;
    return p?.format === 'webtune-hub-plan' && p.version === 1 ? p : null;
  }

  private async readManifest(repo: string, commit: string): Promise<Manifest | null> {
    const raw = await this.store.get(`${this.dir(repo, commit)}/manifest.json`);
    if (!raw) return null;
    const m = safeJson(dec.decode(raw)) as Manifest | null;
    if (!m || m.format !== 'webtune-hub-cache' || m.version !== 1 || !Array.isArray(m.files) || m.commit !== commit) return null;
    return m;
  }

  /**
   * A complete cached model's files. Checks every part's size against the manifest; with
   * `verify: 'sha256'` it also re-hashes every file (slow for GBs: minutes).
   */
  async open(repoId: string, commit: string, opts: { verify?: 'size' | 'sha256' } = {}): Promise<Map<string, Blob>> {
    const repo = checkRepoId(repoId);
    const m = await this.readManifest(repo, commit);
    if (!m) throw new HubError('corrupt-cache', `${repo}@${commit.slice(0, 10)} is not completely downloaded`);
    const files = new Map<string, Blob>();
    for (const f of m.files) {
      const blob = await this.fileBlob(repo, commit, f.path, f.size, m.partBytes);
      if (opts.verify === 'sha256') {
        const h = new Sha256();
        const STEP = 8 * 2 ** 20;
        for (let o = 0; o < blob.size; o += STEP) h.update(new Uint8Array(await blob.slice(o, o + STEP).arrayBuffer()));
        if (h.hex() !== f.sha256) throw new HubError('corrupt-cache', `${repo}/${f.path} in the cache is corrupt (sha256 mismatch); delete the model and download it again`);
      }
      files.set(f.path, blob);
    }
    await this.store.put(`${this.dir(repo, commit)}/used.json`, enc.encode(JSON.stringify({ lastUsed: new Date().toISOString() })));
    return files;
  }

  /** Every cached model, complete or partial, newest use first. */
  async list(): Promise<CachedModel[]> {
    const blobs = await this.store.list('hub/');
    const entries = new Map<string, { repo: string; commit: string; bytes: number; files: Set<string> }>();
    const refs: Array<{ repo: string; revision: string; name: string }> = [];
    for (const b of blobs) {
      const parts = b.name.split('/');
      if (parts.length < 5) continue;
      const repo = `${parts[1]}/${parts[2]}`;
      if (parts[3] === 'refs') {
        refs.push({ repo, revision: decodeURIComponent(parts.slice(4).join('/')), name: b.name });
        continue;
      }
      const commit = parts[3]!;
      const key = `${repo}@${commit}`;
      const e = entries.get(key) ?? { repo, commit, bytes: 0, files: new Set<string>() };
      entries.set(key, e);
      if (parts[4] === 'files') {
        e.bytes += b.size;
        e.files.add(parts.slice(5, -1).join('/'));
      }
    }
    const out: CachedModel[] = [];
    for (const e of entries.values()) {
      const m = await this.readManifest(e.repo, e.commit);
      const plan = m ? null : await this.readPlan(e.repo, e.commit);
      const totalBytes = m ? m.files.reduce((a, f) => a + f.size, 0) : plan ? plan.files.reduce((a, f) => a + f.size, 0) : null;
      const used = await this.store.get(`${this.dir(e.repo, e.commit)}/used.json`);
      const revisions: string[] = [];
      for (const r of refs) if (r.repo === e.repo && dec.decode((await this.store.get(r.name)) ?? new Uint8Array()) === e.commit) revisions.push(r.revision);
      out.push({
        repo: e.repo,
        commit: e.commit,
        revisions,
        bytes: e.bytes,
        totalBytes,
        // Complete only with a manifest whose every byte is there.
        complete: !!m && e.bytes === totalBytes,
        lastUsed: used ? ((safeJson(dec.decode(used)) as { lastUsed?: string } | null)?.lastUsed ?? null) : null,
        files: m ? m.files.length : plan ? plan.files.length : e.files.size,
      });
    }
    return out.sort((a, b) => (b.lastUsed ?? '').localeCompare(a.lastUsed ?? '') || a.repo.localeCompare(b.repo));
  }

  /** Deletes a cached model (complete or partial) and the refs that point at it. */
  async delete(repoId: string, commit: string): Promise<void> {
    const repo = checkRepoId(repoId);
    if (this.active.has(`${repo}@${commit}`)) throw new HubError('http', `${repo} is being downloaded: cancel the download first`);
    // The manifest first: from then on the entry can no longer be opened as valid, whatever happens next.
    await this.store.delete(`${this.dir(repo, commit)}/manifest.json`);
    for (const b of await this.store.list(`${this.dir(repo, commit)}/`)) await this.store.delete(b.name);
    for (const b of await this.store.list(`hub/${repo}/refs/`)) if (dec.decode((await this.store.get(b.name)) ?? new Uint8Array()) === commit) await this.store.delete(b.name);
  }
}

function sumSizes(files: Map<string, Blob>): number {
  let n = 0;
  for (const b of files.values()) n += b.size;
  return n;
}

function safeJson(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function abortError(): HubError {
  return new HubError('aborted', 'the download was cancelled; what arrived is kept and the next download resumes from there');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return signal?.aborted ? Promise.reject(abortError()) : Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(abortError());
    }, { once: true });
  });
}

/** git's blob id: sha1("blob <size>\0" + content). */
async function gitBlobOid(content: Uint8Array): Promise<string> {
  const head = enc.encode(`blob ${content.length}\0`);
  const all = new Uint8Array(head.length + content.length);
  all.set(head);
  all.set(content, head.length);
  const d = new Uint8Array(await crypto.subtle.digest('SHA-1', all));
  return [...d].map((x) => x.toString(16).padStart(2, '0')).join('');
}
