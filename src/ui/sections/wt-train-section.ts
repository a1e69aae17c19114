import { LitElement, css, html, nothing, unsafeCSS } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import uPlot from 'uplot';
import uplotCss from 'uplot/dist/uPlot.min.css?inline';
import type { MemoryPlan, ModelInfo, RunEvent, TrainConfig, TrainProgress, TrainResult, TrainRow } from '../../engine/api.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { longestRow } from '../../data/rows.ts';
import { getEngine } from '../engine-client.ts';
import { theme, themeColor, watchTheme } from '../theme.ts';
import { settingsStore, DEFAULT_TRAIN_SETTINGS, MIN_BUDGET_GIB, type TrainSettings } from '../store/settings.ts';
import { PRESETS } from '../store/presets.ts';
import { RunHistory, applyRunEvent, isResumable, newRunId, newRunRecord, type RunRecord } from '../store/runs.ts';
import '../runs/wt-memory-plan.ts';
import '../runs/wt-runs-list.ts';
import '../runs/wt-run-fault.ts';
import { faultOfDeviceLoss, faultOfError, type RunFault } from '../runs/run-fault.ts';
import type { RunAction } from '../runs/wt-runs-list.ts';

/** The numeric hyper-parameters of the form; `fallback` is the engine's default, shown when the field is empty. */
const FIELDS: { key: keyof TrainConfig; label: string; help: string; step?: string; fallback?: string }[] = [
  { key: 'loraRank', label: 'LoRA rank', help: 'size of the adapter matrices; larger learns more, costs more' },
  { key: 'loraAlpha', label: 'LoRA alpha', help: 'the adapter output is scaled by alpha / rank' },
  { key: 'loraDropout', label: 'LoRA dropout', help: 'fraction of adapter inputs dropped while training', step: '0.01' },
  { key: 'lr', label: 'Learning rate', help: 'peak learning rate after warmup', step: 'any' },
  { key: 'epochs', label: 'Epochs', help: 'passes over the dataset' },
  { key: 'microBatch', label: 'Batch', help: 'rows per micro-batch' },
  { key: 'gradAccum', label: 'Accumulation', help: 'micro-batches per optimizer step' },
  { key: 'warmupRatio', label: 'Warmup', help: 'fraction of steps with a rising learning rate', step: '0.01' },
  { key: 'maxSteps', label: 'Max steps', help: 'stop after this many optimizer steps (empty: all epochs)', fallback: 'all' },
  { key: 'weightDecay', label: 'Weight decay', help: "AdamW's decoupled weight decay", step: 'any', fallback: '0' },
  { key: 'maxGradNorm', label: 'Max grad norm', help: 'clip the global gradient norm to this (0: no clipping)', step: 'any', fallback: '1' },
  { key: 'beta1', label: 'Adam β1', help: 'decay of the first moment', step: 'any', fallback: '0.9' },
  { key: 'beta2', label: 'Adam β2', help: 'decay of the second moment', step: 'any', fallback: '0.999' },
  { key: 'eps', label: 'Adam ε', help: 'added to the second moment’s root', step: 'any', fallback: '1e-8' },
  { key: 'seed', label: 'Seed', help: 'LoRA initialisation, dropout masks and data order', fallback: '42' },
];

/** Automatic continues of one run after GPU losses before the user is asked instead. */
const MAX_AUTO_RESUMES = 3;

/** What the Start/Pause/Resume/Stop buttons can do right now. */
type Phase = 'idle' | 'training' | 'pausing' | 'stopping';

/**
 * Training: presets and hyper-parameters (remembered across reloads), the memory plan against the budget,
 * start / pause / resume / stop, live loss curve, tokens/s, ETA, GPU memory, evaluation answers, the
 * run's checkpoints, and the runs history (re-open, resume, chat, export, delete). Each run is stored:
 * its tensors and rows by the engine worker in OPFS, its record here in IndexedDB.
 */
@customElement('wt-train-section')
export class WtTrainSection extends LitElement {
  static override styles = [
    theme,
    unsafeCSS(uplotCss),
    css`
      :host { display: block; }
      .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); gap: 0.6rem 1rem; margin: 0.8rem 0; }
      label { display: flex; flex-direction: column; font-size: 0.9rem; }
      label small { color: var(--wt-muted); }
      input, select { font: inherit; padding: 0.2rem 0.4rem; }
      button { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; margin-right: 0.5rem; }
      button.secondary { background: transparent; color: var(--wt-accent); }
      button[disabled] { opacity: 0.5; cursor: not-allowed; }
      .controls { display: flex; align-items: center; flex-wrap: wrap; gap: 0.4rem 0; min-height: 2.4rem; }
      .phase { color: var(--wt-muted); font-size: 0.9rem; }
      .stats { display: flex; gap: 1.5rem; flex-wrap: wrap; font-variant-numeric: tabular-nums; margin: 0.6rem 0; min-height: 1.5rem; }
      progress { width: 100%; height: 0.9rem; }
      .chart { height: 240px; }
      .error { color: var(--wt-error); white-space: pre-wrap; }
      .targets { display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; border: 1px solid var(--wt-border); border-radius: var(--wt-radius); margin: 0.6rem 0; }
      .targets legend small { color: var(--wt-muted); margin-left: 0.4rem; }
      .recovery { display: flex; gap: 0.8rem; align-items: flex-start; border: 1px solid var(--wt-warn); border-radius: var(--wt-radius); padding: 0.6rem 0.8rem; margin: 0.6rem 0; }
      .recovery span { flex: 1; }
      .answers { display: grid; gap: 0.5rem; max-height: 20rem; overflow: auto; }
      .qa { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0.2rem 0 0.4rem 0.8rem; }
      textarea { font: inherit; }
      .muted { color: var(--wt-muted); }
      .box { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.6rem 0.9rem; margin: 0.8rem 0; }
      .banner { border: 1px solid var(--wt-warn); border-radius: var(--wt-radius); padding: 0.5rem 0.9rem; margin: 0.6rem 0; }
      h3 { margin: 0.2rem 0 0.5rem; font-size: 1rem; }
      ul.ckpts { margin: 0; padding-left: 1.2rem; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @property({ attribute: false }) rows: TrainRow[] | null = null;
  /** The data split's held-out rows: the run measures its eval loss on them. */
  @property({ attribute: false }) evalRows: TrainRow[] | null = null;
  @state() private settings: TrainSettings = { ...DEFAULT_TRAIN_SETTINGS, config: { ...PRESETS.quick!.config } };
  @state() private phase: Phase = 'idle';
  /** The run shown: the one training, or one re-opened from the history. */
  @state() private run: RunRecord | null = null;
  @state() private runs: RunRecord[] = [];
  /** The record of the run training now (it may not be the one shown: any run can be re-opened meanwhile). */
  private active: RunRecord | null = null;
  @state() private last: TrainProgress | null = null;
  @state() private error = '';
  @state() private done = '';
  @state() private plan: MemoryPlan | null = null;
  @state() private planNote = '';
  /** Why the last run stopped by itself (GPU lost, out of memory, non-finite steps), shown as a banner. */
  @state() private fault: RunFault | null = null;
  /** What an automatic recovery did (GPU lost, run continued from its checkpoint), shown until dismissed. */
  @state() private recovery = '';
  /** Automatic continues per run in this page: after MAX_AUTO_RESUMES the user decides (a GPU that keeps failing). */
  private readonly autoResumes = new Map<string, number>();
  private readonly history = new RunHistory();
  private plot: uPlot | null = null;
  private planTimer: ReturnType<typeof setTimeout> | undefined;
  private saving: Promise<void> = Promise.resolve();

  private unwatchTheme: (() => void) | null = null;

  override connectedCallback(): void {
    super.connectedCallback();
    void this.restore();
    // The chart draws on a canvas with the theme's colours of the moment: redraw it when they change.
    this.unwatchTheme = watchTheme(() => {
      this.plot?.destroy();
      this.plot = null;
      this.chart();
    });
  }

  override disconnectedCallback(): void {
    this.unwatchTheme?.();
    this.unwatchTheme = null;
    super.disconnectedCallback();
  }

  /** The last form settings, and the runs history (a run still marked training was cut off by a closed tab). */
  private async restore(): Promise<void> {
    try {
      const s = await settingsStore().load();
      const preset = PRESETS[s.train.preset] ? s.train.preset : 'quick';
      this.settings = { ...s.train, preset, config: { ...PRESETS[preset]!.config, ...s.train.config } };
      this.runs = await this.history.markInterrupted();
      const unfinished = this.runs.find(isResumable);
      if (unfinished && !this.run) this.show(unfinished);
    } catch (e) {
      this.error = `could not read the saved settings or runs: ${e instanceof Error ? e.message : String(e)}`;
    }
  }

  private saveSettings(patch: Partial<TrainSettings>): void {
    this.settings = { ...this.settings, ...patch };
    void settingsStore().save({ train: patch }).catch(() => undefined);
    this.schedulePlan();
  }

  /** The attention-outputs choice: 'auto' leaves it to the memory plan (kept where it fits the budget). */
  private setKeepAttention(value: string): void {
    const { keepAttention: _old, ...config } = this.settings.config;
    this.saveSettings({ config: value === 'auto' ? config : { ...config, keepAttention: value === 'keep' } });
  }

  private setLossChunk(value: string): void {
    const v = Number(value);
    const { lossChunkTokens: _old, ...config } = this.settings.config;
    this.saveSettings({ config: value.trim() && Number.isInteger(v) && v >= 1 ? { ...config, lossChunkTokens: v } : config });
  }

  /** The loaded model's LoRA targets the form keeps (a stored choice of another family's names counts as all). */
  private targets(): string[] {
    const all = this.model?.loraTargets ?? [];
    const chosen = (this.settings.config.targets ?? []).filter((t) => all.includes(t));
    return chosen.length ? chosen : all;
  }

  private setTarget(name: string, on: boolean): void {
    const all = this.model?.loraTargets ?? [];
    const next = all.filter((t) => (t === name ? on : this.targets().includes(t)));
    if (next.length === 0) return; // at least one projection carries the adapter
    const { targets: _old, ...config } = this.settings.config;
    this.saveSettings({ config: next.length === all.length ? config : { ...config, targets: next as TrainConfig['targets'] } });
  }

  /** The config a new run trains with: the form's, with targets valid for the loaded model. */
  private runConfig(): Partial<TrainConfig> {
    const { targets: _t, ...config } = this.settings.config;
    const all = this.model?.loraTargets ?? [];
    const chosen = this.targets();
    return chosen.length && chosen.length < all.length ? { ...config, targets: chosen as TrainConfig['targets'] } : config;
  }

  /** A number, or (empty) the engine's default for the key; an empty max steps is 0 = no limit (so a preset's cap stays off after a reload). */
  private field(key: keyof TrainConfig, value: string): void {
    const { [key]: _old, ...rest } = this.settings.config;
    const v = Number(value);
    if (!value.trim() && key === 'maxSteps') this.saveSettings({ config: { ...rest, maxSteps: 0 } });
    else this.saveSettings({ config: value.trim() && Number.isFinite(v) ? { ...rest, [key]: v } : rest });
  }

  // ---- memory plan

  override updated(changed: Map<string, unknown>): void {
    if (changed.has('model') || changed.has('rows') || changed.has('evalRows')) this.schedulePlan();
    if (changed.has('runs') || changed.has('phase')) {
      const resumable = this.phase === 'idle' ? this.runs.filter(isResumable).length : 0;
      this.dispatchEvent(new CustomEvent('runs-changed', { detail: { resumable }, bubbles: true, composed: true }));
    }
  }

  private schedulePlan(): void {
    clearTimeout(this.planTimer);
    this.planTimer = setTimeout(() => void this.computePlan(), 150);
  }

  private async computePlan(): Promise<void> {
    if (!this.model || !this.rows?.length) {
      this.plan = null;
      this.planNote = '';
      return;
    }
    const seqLen = longestRow(this.rows);
    try {
      const evalSeqLen = longestRow(this.evalRows ?? []);
      this.plan = await getEngine().planTraining(this.runConfig(), seqLen, this.settings.budgetGiB * 2 ** 30, evalSeqLen);
      this.planNote = '';
    } catch (e) {
      this.plan = null;
      this.planNote = `No memory plan: ${e instanceof Error ? e.message : String(e)}`;
    }
  }

  // ---- the chart

  private chart(): void {
    const host = this.renderRoot.querySelector<HTMLElement>('.chart');
    if (!host) return;
    const c = this.run?.curve ?? { step: [], loss: [], lr: [] };
    // A skipped step's loss is NaN or ±∞: a gap in the curve, not a broken scale.
    // The learning rate on its own scale (right axis); records from before it was kept have none.
    const lr = c.step.map((_, i) => c.lr?.[i] ?? null);
    // The eval loss at the steps it was measured (a step of the train curve each), null elsewhere: drawn as
    // points joined across the gaps.
    const ev = this.run?.evalCurve ?? { step: [], loss: [] };
    const evalAt = new Map(ev.step.map((s, i) => [s, ev.loss[i]!]));
    const evalLoss = c.step.map((s) => {
      const v = evalAt.get(s);
      return v !== undefined && Number.isFinite(v) ? v : null;
    });
    const data: uPlot.AlignedData = [c.step, c.loss.map((v) => (Number.isFinite(v) ? v : null)), lr, evalLoss];
    host.dataset.steps = c.step.join(',');
    host.dataset.evalSteps = ev.step.join(',');
    if (!this.plot) {
      const text = themeColor(host, '--wt-muted') || '#5b6270';
      const grid = themeColor(host, '--wt-border') || '#d9dce1';
      const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
      const series: uPlot.Series[] = [
        { label: 'step' },
        { label: 'loss', scale: 'loss', stroke: themeColor(host, '--wt-accent') || '#3158d4', width: 2 },
        { label: 'learning rate', scale: 'lr', stroke: text, width: 1, dash: [4, 4], value: (_u, v) => (v == null ? '--' : v.toExponential(2)) },
        { label: 'eval loss', scale: 'loss', stroke: themeColor(host, '--wt-warn') || '#b5591b', width: 2, spanGaps: true, points: { show: true, size: 6 } },
      ];
      // Steps are whole numbers: ticks only at integer increments.
      const steps = { ...axis, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] };
      const lrAxis: uPlot.Axis = { ...axis, scale: 'lr', side: 1, grid: { show: false }, values: (_u, ticks) => ticks.map((t) => t.toExponential(1)) };
      this.plot = new uPlot({ width: Math.max(320, host.clientWidth || 640), height: 220, scales: { x: { time: false }, loss: {}, lr: {} }, series, axes: [steps, { ...axis, scale: 'loss' }, lrAxis] }, data, host);
    } else this.plot.setData(data);
  }

  private show(r: RunRecord | null): void {
    this.run = r;
    this.last = null;
    this.done = '';
    void this.updateComplete.then(() => this.chart());
  }

  // ---- run lifecycle

  /** Records an event of the run in training: the shown record, the list, IndexedDB (in order). */
  private onEvent(e: RunEvent): void {
    if (!this.active) return;
    const shown = this.run?.id === this.active.id;
    this.active = applyRunEvent(this.active, e);
    this.persist(this.active);
    if (!shown) return;
    this.run = this.active;
    if (e.type === 'progress') this.last = e.progress;
    this.chart();
  }

  /** Ends the active run's record with a status, showing it if it is the run on screen. */
  private settle(patch: Partial<RunRecord>): void {
    if (!this.active) return;
    this.active = { ...this.active, ...patch, updatedAt: new Date().toISOString() };
    this.persist(this.active);
    if (this.run?.id === this.active.id) this.run = this.active;
    this.active = null;
  }

  private persist(r: RunRecord): void {
    this.runs = [r, ...this.runs.filter((x) => x.id !== r.id)].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    this.saving = this.saving.then(() => this.history.put(r)).catch((e: unknown) => {
      this.error = `could not save the run's record: ${e instanceof Error ? e.message : String(e)}`;
    });
  }

  private evaluation() {
    return { prompts: this.settings.evalPrompts.split('\n').map((l) => l.trim()).filter(Boolean), every: this.settings.evalEvery };
  }

  private async start(): Promise<void> {
    this.recovery = '';
    if (!this.rows || !this.model) return;
    const run = newRunRecord({
      id: newRunId(),
      modelId: this.model.id,
      config: this.runConfig(),
      evaluation: this.evaluation(),
      checkpointPolicy: { everySteps: this.settings.checkpointEverySteps, everyMinutes: this.settings.checkpointEveryMinutes },
    });
    this.plot?.destroy();
    this.plot = null;
    this.show(run);
    this.persist(run);
    await this.drive(run, (onEvent) => getEngine().trainRun(this.rows!, run.config, { runId: run.id, evaluation: run.evaluation, evalRows: this.evalRows ?? [], checkpoint: run.checkpointPolicy, memoryBudgetBytes: this.budgetBytes() }, onEvent));
  }

  /** The budget of the form: the plan is checked against it, and a run is held to it. */
  private budgetBytes(): number {
    return Math.round(this.settings.budgetGiB * 2 ** 30);
  }

  private async resume(id: string): Promise<void> {
    const run = this.runs.find((r) => r.id === id) ?? (await this.history.get(id));
    if (!run) return;
    this.plot?.destroy();
    this.plot = null;
    this.show(run);
    await this.drive(run, (onEvent) => getEngine().resumeRun({ runId: run.id, evaluation: run.evaluation, checkpoint: run.checkpointPolicy, memoryBudgetBytes: this.budgetBytes() }, onEvent));
  }

  private async drive(run: RunRecord, call: (onEvent: (e: RunEvent) => void) => Promise<TrainResult>): Promise<void> {
    this.phase = 'training';
    this.error = '';
    this.done = '';
    this.fault = null;
    this.active = run;
    // Hours of checkpoints in OPFS: ask the browser not to evict them under storage pressure (page-only API, not in the worker).
    await navigator.storage?.persist?.().catch(() => false);
    try {
      const result = await call(Comlink.proxy((e: RunEvent) => this.onEvent(e)));
      this.settle({ status: result.paused ? 'paused' : result.stopped ? 'stopped' : 'finished', finalLoss: Number.isFinite(result.finalLoss) ? result.finalLoss : null, ...(result.pauseReason ? { error: result.pauseReason } : {}) });
      if (result.pauseReason) this.fault = { kind: 'paused', message: result.pauseReason, resumeRunId: run.id };
      this.done = result.paused
        ? `Paused at step ${result.steps}: checkpoint saved. Resume any time, also after closing the tab.`
        : `${result.stopped ? 'Stopped' : 'Finished'} after ${result.steps} steps; final loss ${result.finalLoss.toFixed(4)}. Try it in Chat, or export it in Share.`;
      this.dispatchEvent(new CustomEvent('adapter-trained', { detail: result, bubbles: true, composed: true }));
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      const fault = faultOfError(e, run.id, (this.active ?? run).checkpoints.length > 0);
      if (fault) this.fault = fault;
      else this.error = message;
      // A lost GPU interrupts the run (resumable from its checkpoint); other errors fail it (its checkpoint stays).
      const stoppedAt = (this.active ?? run).step;
      this.settle({ status: fault?.kind === 'device-lost' ? 'interrupted' : 'failed', error: message });
      if (fault?.kind === 'device-lost') void this.awaitRecovery(stoppedAt);
    } finally {
      this.phase = 'idle';
    }
  }

  /**
   * After a lost GPU the worker sets up a new device and reloads the model on its own; its report (once)
   * says what came back. Polled for up to a minute: it lands shortly after the training call failed.
   */
  private async awaitRecovery(stoppedAt: number): Promise<void> {
    for (let i = 0; i < 120; i++) {
      const report = await getEngine().deviceLoss().catch(() => null);
      if (report) {
        const runId = report.runId;
        const used = runId ? (this.autoResumes.get(runId) ?? 0) : MAX_AUTO_RESUMES;
        if (report.wasTraining && runId && report.checkpoint && used < MAX_AUTO_RESUMES && this.fault?.kind === 'device-lost') {
          // The worker has a new device and the model again: continue the run from its checkpoint, as
          // after a reload, and say what happened (the steps after the checkpoint are trained again).
          this.autoResumes.set(runId, used + 1);
          this.recovery = `${report.restored} Training continued automatically from the checkpoint at step ${report.checkpoint.step} (the run had reached step ${stoppedAt}).`;
          this.fault = null;
          await this.resume(runId);
          return;
        }
        this.fault = faultOfDeviceLoss(report, stoppedAt);
        return;
      }
      if (this.fault?.kind !== 'device-lost') return; // dismissed, or a new run started
      await new Promise((r) => setTimeout(r, 500));
    }
    if (this.fault?.kind === 'device-lost') this.fault = { ...this.fault, recovering: false, message: `${this.fault.message.replace(/\nSetting up the GPU again…$/, '')}\nThe GPU did not come back within a minute: reload the page; the run can be resumed from its last checkpoint.` };
  }

  private async action(action: RunAction, id: string): Promise<void> {
    const r = this.runs.find((x) => x.id === id);
    if (!r) return;
    this.error = '';
    try {
      switch (action) {
        case 'open':
          this.plot?.destroy();
          this.plot = null;
          this.show(r);
          break;
        case 'resume':
          await this.resume(id);
          break;
        case 'chat': {
          const at = await getEngine().openRun(id);
          this.dispatchEvent(new CustomEvent('adapter-trained', { detail: { steps: at.step, runId: id }, bubbles: true, composed: true }));
          location.hash = '#/chat';
          break;
        }
        case 'export': {
          const zip = await getEngine().exportRunAdapter(id);
          const a = document.createElement('a');
          a.href = URL.createObjectURL(new Blob([zip as Uint8Array<ArrayBuffer>], { type: 'application/zip' }));
          a.download = `${id}-lora-adapter.zip`;
          a.click();
          setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
          break;
        }
        case 'delete':
          if (!confirm(`Delete run ${id} with its checkpoints and adapter? This cannot be undone.`)) return;
          await getEngine().deleteRun(id);
          await this.history.delete(id);
          this.runs = this.runs.filter((x) => x.id !== id);
          if (this.run?.id === id) this.show(null);
          break;
      }
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    }
  }

  private pause(): void {
    this.phase = 'pausing';
    void getEngine().pauseTraining();
  }

  private stop(): void {
    this.phase = 'stopping';
    void getEngine().stopTraining();
  }

  // ---- view

  private renderControls() {
    const ready = !!this.model && !!this.rows?.length;
    const busy = this.phase !== 'idle';
    const resumable = this.run && !busy && isResumable(this.run) ? this.run : null;
    const phaseText = { idle: '', training: 'training…', pausing: 'pausing after this step (saving a checkpoint)…', stopping: 'stopping after this step…' }[this.phase];
    return html`<div class="controls">
      <button data-testid="train-start" ?disabled=${!ready || busy} @click=${() => void this.start()}>Start training</button>
      <button class="secondary" data-testid="train-pause" ?disabled=${this.phase !== 'training'} @click=${() => this.pause()}>Pause</button>
      <button class="secondary" data-testid="train-resume" ?disabled=${!resumable} @click=${() => resumable && void this.resume(resumable.id)}>Resume</button>
      <button class="secondary" data-testid="train-stop" ?disabled=${this.phase !== 'training' && this.phase !== 'pausing'} @click=${() => this.stop()}>Stop</button>
      <span class="phase" data-testid="train-phase">${phaseText}</span>
    </div>`;
  }

  override render() {
    const p = this.last;
    const run = this.run;
    const busy = this.phase !== 'idle';
    const s = this.settings;
    const resumable = !busy ? this.runs.filter(isResumable) : [];
    const lastLoss = run?.curve.loss.findLast((v) => Number.isFinite(v));
    const lastEval = run?.evalCurve?.loss.findLast((v) => Number.isFinite(v));
    const skipped = p?.skippedSteps ?? run?.curve.loss.filter((v) => !Number.isFinite(v)).length ?? 0;
    return html`
      ${this.recovery
        ? html`<div class="recovery" role="status" data-testid="recovery-note"><span>${this.recovery}</span><button class="secondary" aria-label="Dismiss" @click=${() => (this.recovery = '')}>Dismiss</button></div>`
        : nothing}
      <wt-run-fault .fault=${this.fault} ?busy=${busy} @fault-dismiss=${() => (this.fault = null)} @fault-resume=${(e: CustomEvent<{ runId: string }>) => void this.resume(e.detail.runId)}></wt-run-fault>
      ${resumable.length && !(run && run.id === resumable[0]!.id && this.done) && this.fault?.resumeRunId !== resumable[0]!.id
        ? html`<div class="banner" data-testid="resume-banner">Run ${resumable[0]!.id} stopped at step ${resumable[0]!.step}/${resumable[0]!.totalSteps} (${resumable[0]!.status}).
            <button data-testid="banner-resume" @click=${() => void this.resume(resumable[0]!.id)}>Resume</button></div>`
        : nothing}
      ${!this.model ? html`<p class="muted">Load a model in the Model section first.</p>` : nothing}
      ${this.model && !this.rows?.length ? html`<p class="muted">Prepare a dataset in the Data section first (or resume a stored run below).</p>` : nothing}
      ${this.rows?.length
        ? html`<p data-testid="train-rows">${this.rows.length} rows of training data${this.evalRows?.length
            ? html`; ${this.evalRows.length} held out for the eval loss, measured at every evaluation`
            : html` (no eval split: set one in the Data section to see an eval loss)`}.</p>`
        : nothing}
      <label>Preset
        <select .value=${s.preset} ?disabled=${busy} @change=${(e: Event) => {
          const preset = (e.target as HTMLSelectElement).value;
          this.saveSettings({ preset, config: { ...PRESETS[preset]!.config } });
        }}>
          ${Object.entries(PRESETS).map(([id, pr]) => html`<option value=${id} ?selected=${id === s.preset}>${pr.label}</option>`)}
        </select>
      </label>
      <div class="grid">
        ${FIELDS.map(
          (f) => html`<label>${f.label}<input type="number" step=${f.step ?? '1'} .value=${String(f.key === 'maxSteps' && !s.config.maxSteps ? '' : (s.config[f.key] ?? ''))} placeholder=${f.fallback ?? ''} ?disabled=${busy}
              data-testid="field-${f.key}" @change=${(e: Event) => this.field(f.key, (e.target as HTMLInputElement).value)} /><small>${f.help}</small></label>`,
        )}
      </div>
      ${this.model?.loraTargets.length
        ? html`<fieldset class="targets" data-testid="lora-targets" ?disabled=${busy}><legend>LoRA targets <small>the projections that get an adapter (all linear layers: XTuner's and QLoRA's choice)</small></legend>
            ${this.model.loraTargets.map((t) => html`<label><input type="checkbox" .checked=${this.targets().includes(t)} @change=${(e: Event) => this.setTarget(t, (e.target as HTMLInputElement).checked)} /> <code>${t}</code></label>`)}
          </fieldset>`
        : nothing}
      <div class="grid">
        <label>Evaluation prompts<textarea rows="2" data-testid="eval-prompts" .value=${s.evalPrompts} ?disabled=${busy} @change=${(e: Event) => this.saveSettings({ evalPrompts: (e.target as HTMLTextAreaElement).value })}></textarea>
          <small>one per line; answered by the model in training (XTuner's evaluation_inputs)</small></label>
        <label>Every N steps<input type="number" min="1" data-testid="eval-every" .value=${String(s.evalEvery)} ?disabled=${busy} @change=${(e: Event) => this.saveSettings({ evalEvery: Math.max(1, Number((e.target as HTMLInputElement).value)) })} /><small>the prompts answered and the eval loss measured on the held-out rows; also at the last step</small></label>
        <label>Checkpoint every N steps<input type="number" min="0" data-testid="ckpt-steps" .value=${String(s.checkpointEverySteps)} ?disabled=${busy} @change=${(e: Event) => this.saveSettings({ checkpointEverySteps: Math.max(0, Number((e.target as HTMLInputElement).value)) })} /><small>to the browser's storage; also on pause, stop and at the end (0: only then)</small></label>
        <label>…or every N minutes<input type="number" min="0" step="any" .value=${String(s.checkpointEveryMinutes)} ?disabled=${busy} @change=${(e: Event) => this.saveSettings({ checkpointEveryMinutes: Math.max(0, Number((e.target as HTMLInputElement).value)) })} /><small>whichever comes first</small></label>
        <label>GPU memory budget (GiB)<input type="number" min="0.001" step="any" data-testid="budget" .value=${String(s.budgetGiB)} @change=${(e: Event) => {
          const v = Number((e.target as HTMLInputElement).value);
          if (Number.isFinite(v) && v > 0) this.saveSettings({ budgetGiB: Math.max(MIN_BUDGET_GIB, v) });
        }} /><small>the memory plan is checked against it; training never holds more</small></label>
        <label>Matmul precision
          <select data-testid="matmul-precision" ?disabled=${busy} @change=${(e: Event) => this.saveSettings({ config: { ...s.config, matmulPrecision: (e.target as HTMLSelectElement).value as 'f32' | 'int8' } })}>
            <option value="int8" ?selected=${s.config.matmulPrecision !== 'f32'}>int8 tensor cores where available</option>
            <option value="f32" ?selected=${s.config.matmulPrecision === 'f32'}>f32 (exact)</option>
          </select>
          <small>int8 runs the 4-bit base's matmuls on tensor cores where the GPU has them (see the WebGPU badge), f32 elsewhere: 1.7–2× faster steps on an H100/H200, logits within 1% of f32</small></label>
        <label>Schedule
          <select data-testid="schedule" ?disabled=${busy} @change=${(e: Event) => this.saveSettings({ config: { ...s.config, schedule: (e.target as HTMLSelectElement).value as 'cosine' | 'constant' | 'linear' } })}>
            ${(['cosine', 'linear', 'constant'] as const).map((v) => html`<option value=${v} ?selected=${(s.config.schedule ?? 'cosine') === v}>${v}</option>`)}
          </select>
          <small>the learning rate after warmup: cosine decay (XTuner's default), linear decay, or constant</small></label>
        <label>Attention outputs
          <select data-testid="keep-attention" ?disabled=${busy} @change=${(e: Event) => this.setKeepAttention((e.target as HTMLSelectElement).value)}>
            <option value="auto" ?selected=${s.config.keepAttention === undefined}>kept if they fit</option>
            <option value="keep" ?selected=${s.config.keepAttention === true}>always kept</option>
            <option value="recompute" ?selected=${s.config.keepAttention === false}>recomputed (least memory)</option>
          </select>
          <small>kept for the backward (if they fit the memory budget), attention and the adapters' input products are not recomputed: 2–5% faster steps (H200) for tokens × (heads × (head size + 1) + adapted modules × rank) × 4 bytes per layer</small></label>
        <label>Loss chunk (tokens)<input type="number" min="1" step="1" placeholder="automatic" data-testid="loss-chunk" .value=${s.config.lossChunkTokens ? String(s.config.lossChunkTokens) : ''} ?disabled=${busy}
            @change=${(e: Event) => this.setLossChunk((e.target as HTMLInputElement).value)} /><small>tokens per cross-entropy chunk; empty: automatic (about 1000); fewer save GPU memory (vocabulary × 4 bytes each) and cost speed</small></label>
      </div>
      <div class="box"><wt-memory-plan .plan=${this.plan} .note=${this.planNote}></wt-memory-plan></div>
      ${this.renderControls()}
      <progress max=${run?.totalSteps || 1} .value=${run?.step ?? 0}></progress>
      <div class="stats" data-testid="train-stats">
        ${run ? html`<span data-testid="train-step">step ${run.step}/${run.totalSteps || '?'}</span>` : nothing}
        ${run && lastLoss !== undefined ? html`<span>loss <strong data-testid="train-loss">${lastLoss.toFixed(4)}</strong></span>` : nothing}
        ${lastEval !== undefined ? html`<span>eval loss <strong data-testid="train-eval-loss">${lastEval.toFixed(4)}</strong></span>` : nothing}
        ${skipped > 0 ? html`<span data-testid="train-skipped" title="steps whose loss or gradient was NaN/∞: their updates were skipped">skipped ${skipped}</span>` : nothing}
        ${p
          ? html`<span>lr ${p.lr.toExponential(2)}</span><span>${p.tokensPerSecond.toFixed(0)} tokens/s</span><span>ETA ${Math.round(p.etaSeconds)} s</span><span>GPU ${formatBytes(p.liveBytes)}</span>`
          : nothing}
      </div>
      <div class="chart" data-testid="train-chart"></div>
      ${run?.checkpoints.length
        ? html`<div class="box"><h3>Checkpoints</h3><ul class="ckpts" data-testid="checkpoints">${run.checkpoints.map(
            (c, i) => html`<li>step ${c.step} · ${new Date(c.savedAt).toLocaleTimeString()} · ${formatBytes(c.bytes)} ${i === run.checkpoints.length - 1 ? html`<strong>(current)</strong>` : html`<span class="muted">(replaced)</span>`}</li>`,
          )}</ul></div>`
        : nothing}
      ${run?.answers.length
        ? html`<h3>Evaluation answers</h3><div class="answers" data-testid="eval-answers">${run.answers.map(
            (a) => html`<div><strong>step ${a.step}</strong>${a.answers.map((x) => html`<div class="qa"><span class="muted">› ${x.prompt}</span><br />${x.answer}</div>`)}</div>`,
          )}</div>`
        : nothing}
      ${this.done ? html`<p data-testid="train-done">${this.done}</p>` : nothing}
      ${this.error ? html`<p class="error" data-testid="train-error">${this.error}</p>` : nothing}
      ${run?.error && run.status !== 'failed' && !this.fault ? html`<p class="error">${run.error}</p>` : nothing}
      <div class="box"><h3>Runs</h3><wt-runs-list .runs=${this.runs} ?busy=${busy} .selected=${run?.id ?? ''} @run-action=${(e: CustomEvent<{ action: RunAction; id: string }>) => void this.action(e.detail.action, e.detail.id)}></wt-runs-list></div>
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-train-section': WtTrainSection;
  }
}
