/// <reference lib="webworker" />
/**
 * The engine worker: the sole owner of the GPUDevice. The UI talks to it through comlink with the
 * EngineApi interface; nothing GPU-side ever crosses to the main thread.
 */
import * as Comlink from 'comlink';
import type { EngineApi, GpuStatus, MatmulRequest, MatmulResult } from '../src/engine/api.ts';
import { GpuContext } from '../src/engine/gpu/context.ts';
import { GpuUnavailableError } from '../src/engine/gpu/errors.ts';
import { matmul } from '../src/engine/kernels/matmul.ts';
import { EngineSession, type DeviceLossReport } from '../src/engine/session.ts';
import { opfsSinks, recordingSinks, writeFileTo } from '../src/engine/share/sinks.ts';
import { exportNoteText, INCOMPLETE_EXPORT_NOTE } from '../src/engine/share/export-note.ts';
import { OpfsBlobStore, type BlobStore } from '../src/engine/share/checkpoint.ts';
import { HubService } from '../src/hub/service.ts';
import { checkRepoId } from '../src/hub/client.ts';
import { OpfsResumableStore } from '../src/hub/store-opfs.ts';
import { idbTokenStore } from '../src/hub/token.ts';

/** Hub downloads and the model cache (OPFS, under webtune/hub/), the access token in IndexedDB. */
const hub = new HubService(() => OpfsResumableStore.open(), idbTokenStore);

let session: EngineSession | null = null;
let deviceLoss: DeviceLossReport | null = null;
/** The page's watchers of device losses (EngineApi.watchDeviceLoss); one that fails to answer is dropped. */
const lossWatchers = new Set<(report: DeviceLossReport) => void>();
async function engine(): Promise<EngineSession> {
  const ctx = await context();
  if (session && session.ctx !== ctx && session.ctx.isLost) {
    // The old device is gone: a session on the new one, with the same model loaded again.
    const recovered = await EngineSession.afterDeviceLoss(session, ctx);
    session = recovered.session;
    deviceLoss = recovered.report;
    for (const watch of lossWatchers) void Promise.resolve(watch(recovered.report)).catch(() => lossWatchers.delete(watch));
  } else if (!session || session.ctx !== ctx) session = new EngineSession(ctx, await runsStore());
  return session;
}

/** Runs (rows, checkpoints, adapters) live in OPFS; without it every run operation says why it cannot be kept. */
let store: Promise<BlobStore> | null = null;
function runsStore(): Promise<BlobStore> {
  store ??= OpfsBlobStore.open().then(
    async (s) => {
      await OpfsBlobStore.requestPersistence().catch(() => false);
      return s;
    },
    (e: unknown): BlobStore => {
      const fail = async (): Promise<never> => {
        throw new Error(`this browser's storage (OPFS) is not available here, so training runs cannot be kept: ${e instanceof Error ? e.message : String(e)}`);
      };
      return { put: fail, get: fail, list: fail, delete: fail };
    },
  );
  return store;
}

let ctxPromise: Promise<GpuContext> | null = null;

function context(): Promise<GpuContext> {
  ctxPromise ??= GpuContext.create((self.navigator as Navigator & { gpu?: GPU }).gpu).then((ctx) => {
    // A lost device (driver reset, GPU taken) makes the next call acquire a fresh one.
    ctx.onLost(() => {
      ctxPromise = null;
      // Recover at once (new device, model reloaded) rather than on the user's next click.
      if (session?.ctx === ctx) void engine().catch(() => undefined);
    });
    return ctx;
  });
  ctxPromise.catch(() => (ctxPromise = null));
  return ctxPromise;
}

const api: EngineApi = {
  async gpuStatus(): Promise<GpuStatus> {
    const gpu = (self.navigator as Navigator & { gpu?: GPU }).gpu;
    if (!gpu) {
      return {
        ok: false,
        reason: 'no-webgpu',
        message: 'This browser does not expose WebGPU here (navigator.gpu is missing).',
      };
    }
    try {
      const ctx = await context();
      return { ok: true, gpu: ctx.summary() };
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      return { ok: false, reason: e instanceof GpuUnavailableError ? 'no-adapter' : 'device-failed', message };
    }
  },

  async matmul(req: MatmulRequest): Promise<MatmulResult> {
    const ctx = await context();
    const { M, N, K } = req;
    const A = ctx.upload('self-test A', req.transA ? [K, M] : [M, K], req.a);
    const B = ctx.upload('self-test B', req.transB ? [N, K] : [K, N], req.b);
    const C = ctx.tensor('self-test C', [M, N]);
    try {
      const t0 = performance.now();
      await matmul(ctx, A, B, C, { M, N, K }, { transA: req.transA, transB: req.transB });
      const ms = performance.now() - t0;
      const c = await ctx.read(C);
      return Comlink.transfer({ c, ms }, [c.buffer]);
    } finally {
      for (const t of [A, B, C]) ctx.release(t);
    }
  },

  async memory() {
    const ctx = await context();
    return { liveBytes: ctx.pool.liveBytes, peakBytes: ctx.pool.peakBytes };
  },

  async loadDemoModel(seed) {
    return (await engine()).loadDemoModel(seed);
  },
  async loadHubModel(repo, opts, onProgress) {
    const files = await hub.fetchModel(repo, opts.revision, (p) => void onProgress(p));
    return (await engine()).loadModelFiles(files, { id: checkRepoId(repo), quantize: opts.quantize });
  },
  async importHubAdapter(repo, opts, onProgress) {
    const files = await hub.fetchAdapter(repo, opts.revision, (p) => void onProgress(p));
    return (await engine()).importAdapter(files, `${checkRepoId(repo)}${opts.revision ? `@${opts.revision}` : ''}`);
  },
  async cancelHubDownload() {
    hub.cancel();
  },
  async cachedModels() {
    return hub.list();
  },
  async deleteCachedModel(repo, commit) {
    return hub.delete(repo, commit);
  },
  async setHubToken(token) {
    return hub.setToken(token);
  },
  async hasHubToken() {
    return hub.hasToken();
  },
  async exportRecipe(samples, opts) {
    const zip = (await engine()).exportRecipe(samples, opts);
    return Comlink.transfer(zip, [zip.buffer as ArrayBuffer]);
  },
  async loadModelFiles(files, opts) {
    return (await engine()).loadModelFiles(files, opts);
  },
  async tokenizerSource() {
    return session?.tokenizerSource() ?? null;
  },
  async train(rows, config, onProgress, evaluation, onAnswers) {
    return (await engine()).train(rows, config, (p) => void onProgress(p), evaluation && onAnswers ? { ...evaluation, onAnswers: (a) => void onAnswers(a) } : undefined);
  },
  async watchDeviceLoss(listener) {
    lossWatchers.add(listener);
  },
  async simulateDeviceLoss() {
    const ctx = await context();
    ctx.device.destroy();
  },
  async deviceLoss() {
    const report = deviceLoss;
    deviceLoss = null;
    return report;
  },
  async stopTraining() {
    session?.stop();
  },
  async trainRun(rows, config, opts, onEvent) {
    return (await engine()).trainRun(rows, config, opts, (e) => void onEvent(e));
  },
  async resumeRun(opts, onEvent) {
    return (await engine()).resumeRun(opts, (e) => void onEvent(e));
  },
  async pauseTraining() {
    session?.pause();
  },
  async openRun(runId) {
    return (await engine()).openRun(runId);
  },
  async exportRunAdapter(runId) {
    const zip = await (await engine()).exportRunAdapter(runId);
    return Comlink.transfer(zip, [zip.buffer as ArrayBuffer]);
  },
  async runCheckpoint(runId) {
    return (await engine()).runCheckpoint(runId);
  },
  async storedRuns() {
    return (await engine()).storedRuns();
  },
  async deleteRun(runId) {
    return (await engine()).deleteRun(runId);
  },
  async planTraining(config, seqLen, budgetBytes, evalSeqLen) {
    return (await engine()).planTraining(config, seqLen, budgetBytes, evalSeqLen);
  },
  async planCuratedTraining(config, seqLen, quantized, budgetBytes) {
    return (await engine()).planCuratedTraining(config, seqLen, quantized, budgetBytes);
  },
  async chat(which, user, settings, onText) {
    return (await engine()).chat(which, user, settings, (d) => void onText(d));
  },
  async chatTurn(which, user, settings, onText) {
    return (await engine()).chatTurn(which, user, settings, (d) => void onText(d));
  },
  async stopGeneration(which) {
    session?.stopGeneration(which);
  },
  async chatDefaultSystem() {
    return session?.chatDefaultSystem() ?? null;
  },
  async resetChat(which, system) {
    session?.resetChat(which, system);
  },
  async exportAdapter() {
    const zip = await (await engine()).exportAdapter();
    return Comlink.transfer(zip, [zip.buffer as ArrayBuffer]);
  },
  async exportAdapterAs(format) {
    const file = await (await engine()).exportAdapterAs(format);
    return Comlink.transfer(file, [file.bytes.buffer as ArrayBuffer]);
  },
  async exportMerged(dtype, dir, onProgress) {
    // Into a folder: every file is written to a swap file and appears whole on close; if the export fails or
    // is cancelled, the files it completed are removed again, so the folder never holds half a checkpoint.
    // A tab closed mid-export cannot clean up: a note written first, kept up to date with the files written,
    // and removed last says what the folder is, and lets the next page load remove exactly those files.
    const written: string[] = [];
    const folder = dir ? opfsSinks(dir) : null;
    const note = (writing: string | null) => writeFileTo(folder!, INCOMPLETE_EXPORT_NOTE, new TextEncoder().encode(exportNoteText(written, writing)));
    const sinks = folder ? recordingSinks(folder, written, note) : null;
    if (folder) await note(null);
    try {
      const { result, zip } = await (await engine()).exportMerged(dtype, sinks, onProgress && ((p) => void onProgress(p)));
      if (dir) await dir.removeEntry(INCOMPLETE_EXPORT_NOTE).catch(() => undefined);
      const out = { files: result.files, totalBytes: result.totalBytes, zip };
      return zip ? Comlink.transfer(out, [zip.bytes.buffer as ArrayBuffer]) : out;
    } catch (e) {
      if (dir) for (const name of [...written, INCOMPLETE_EXPORT_NOTE]) await dir.removeEntry(name).catch(() => undefined);
      throw e;
    }
  },
  async cancelExport() {
    session?.cancelExport();
  },
  async importAdapter(input, source) {
    return (await engine()).importAdapter(input, source);
  },
};

Comlink.expose(api);
