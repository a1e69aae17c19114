import { LitElement, css, html, nothing, unsafeCSS } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import uPlot from 'uplot';
import uplotCss from 'uplot/dist/uPlot.min.css?inline';
import type { EvalAnswers, ModelInfo, TrainConfig, TrainProgress, TrainRow } from '../../engine/api.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';

/** Presets in the spirit of XTuner's configs. */
const PRESETS: Record<string, { label: string; config: Partial<TrainConfig> }> = {
  quick: { label: 'Quick test (small, fast)', config: { loraRank: 8, loraAlpha: 16, loraDropout: 0, lr: 1e-2, epochs: 3, microBatch: 4, gradAccum: 1, warmupRatio: 0 } },
  qlora: { label: 'QLoRA all-linear r=64 (XTuner 1.8B)', config: { loraRank: 64, loraAlpha: 16, loraDropout: 0.1, lr: 2e-4, epochs: 3, microBatch: 1, gradAccum: 16, warmupRatio: 0.03 } },
  low: { label: 'Low memory (r=16, batch 1)', config: { loraRank: 16, loraAlpha: 32, loraDropout: 0.05, lr: 2e-4, epochs: 3, microBatch: 1, gradAccum: 16, warmupRatio: 0.03, optimizerOffload: 'cpu' } },
};

const FIELDS: { key: keyof TrainConfig; label: string; help: string; step?: string }[] = [
  { key: 'loraRank', label: 'LoRA rank', help: 'size of the adapter matrices; larger learns more, costs more' },
  { key: 'loraAlpha', label: 'LoRA alpha', help: 'the adapter output is scaled by alpha / rank' },
  { key: 'loraDropout', label: 'LoRA dropout', help: 'fraction of adapter inputs dropped while training', step: '0.01' },
  { key: 'lr', label: 'Learning rate', help: 'peak learning rate after warmup', step: 'any' },
  { key: 'epochs', label: 'Epochs', help: 'passes over the dataset' },
  { key: 'microBatch', label: 'Batch', help: 'rows per micro-batch' },
  { key: 'gradAccum', label: 'Accumulation', help: 'micro-batches per optimizer step' },
  { key: 'warmupRatio', label: 'Warmup', help: 'fraction of steps with a rising learning rate', step: '0.01' },
];

/** Training: presets and hyper-parameters, start/stop, live loss curve, tokens/s, ETA and GPU memory. */
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
      .stats { display: flex; gap: 1.5rem; flex-wrap: wrap; font-variant-numeric: tabular-nums; margin: 0.6rem 0; min-height: 1.5rem; }
      progress { width: 100%; }
      .chart { min-height: 240px; }
      .error { color: var(--wt-error); white-space: pre-wrap; }
      .answers { display: grid; gap: 0.5rem; max-height: 20rem; overflow: auto; }
      .qa { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0.2rem 0 0.4rem 0.8rem; }
      textarea { font: inherit; }
      .muted { color: var(--wt-muted); }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @property({ attribute: false }) rows: TrainRow[] | null = null;
  @state() private config: Partial<TrainConfig> = { ...PRESETS.quick!.config };
  @state() private running = false;
  @state() private last: TrainProgress | null = null;
  @state() private error = '';
  @state() private done = '';
  @state() private evalPrompts = 'Who are you?';
  @state() private evalEvery = 4;
  @state() private answers: EvalAnswers[] = [];
  private losses: [number[], number[]] = [[], []];
  private plot: uPlot | null = null;

  private field(key: keyof TrainConfig, value: string): void {
    this.config = { ...this.config, [key]: Number(value) };
  }

  private chart(): void {
    const host = this.renderRoot.querySelector<HTMLElement>('.chart');
    if (!host) return;
    if (!this.plot) {
      this.plot = new uPlot({ width: Math.max(320, host.clientWidth || 640), height: 220, scales: { x: { time: false } }, series: [{ label: 'step' }, { label: 'loss', stroke: '#3158d4', width: 2 }], axes: [{}, {}] }, this.losses, host);
    } else this.plot.setData(this.losses);
  }

  private async start(): Promise<void> {
    if (!this.rows) return;
    this.running = true;
    this.error = '';
    this.done = '';
    this.losses = [[], []];
    this.answers = [];
    this.plot?.destroy();
    this.plot = null;
    try {
      const result = await getEngine().train(
        this.rows,
        this.config,
        Comlink.proxy((p: TrainProgress) => {
          this.last = p;
          this.losses[0].push(p.step);
          this.losses[1].push(p.loss);
          this.chart();
        }),
        { prompts: this.evalPrompts.split('\n').map((l) => l.trim()).filter(Boolean), every: this.evalEvery },
        Comlink.proxy((a: EvalAnswers) => (this.answers = [...this.answers, a])),
      );
      this.done = `${result.stopped ? 'Stopped' : 'Finished'} after ${result.steps} steps; final loss ${result.finalLoss.toFixed(4)}. Try it in Chat, or export it in Share.`;
      this.dispatchEvent(new CustomEvent('adapter-trained', { detail: result, bubbles: true, composed: true }));
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    } finally {
      this.running = false;
    }
  }

  override render() {
    const p = this.last;
    const ready = !!this.model && !!this.rows?.length;
    return html`
      ${!this.model ? html`<p class="muted">Load a model in the Model section first.</p>` : nothing}
      ${this.model && !this.rows?.length ? html`<p class="muted">Prepare a dataset in the Data section first.</p>` : nothing}
      ${this.rows?.length ? html`<p data-testid="train-rows">${this.rows.length} rows of training data.</p>` : nothing}
      <label>Preset
        <select @change=${(e: Event) => (this.config = { ...PRESETS[(e.target as HTMLSelectElement).value]!.config })} ?disabled=${this.running}>
          ${Object.entries(PRESETS).map(([id, pr]) => html`<option value=${id}>${pr.label}</option>`)}
        </select>
      </label>
      <div class="grid">
        ${FIELDS.map(
          (f) => html`<label>${f.label}<input type="number" step=${f.step ?? '1'} .value=${String(this.config[f.key] ?? '')} ?disabled=${this.running}
              @change=${(e: Event) => this.field(f.key, (e.target as HTMLInputElement).value)} /><small>${f.help}</small></label>`,
        )}
      </div>
      <div class="grid">
        <label>Evaluation prompts<textarea rows="2" .value=${this.evalPrompts} ?disabled=${this.running} @change=${(e: Event) => (this.evalPrompts = (e.target as HTMLTextAreaElement).value)}></textarea>
          <small>one per line; answered by the model in training (XTuner's evaluation_inputs)</small></label>
        <label>Every N steps<input type="number" min="1" .value=${String(this.evalEvery)} ?disabled=${this.running} @change=${(e: Event) => (this.evalEvery = Number((e.target as HTMLInputElement).value))} /><small>and at the last step</small></label>
      </div>
      <button data-testid="train-start" ?disabled=${!ready || this.running} @click=${() => void this.start()}>Start training</button>
      <button class="secondary" data-testid="train-stop" ?disabled=${!this.running} @click=${() => void getEngine().stopTraining()}>Stop</button>
      ${p ? html`<progress max=${p.totalSteps} .value=${p.step}></progress>` : nothing}
      <div class="stats" data-testid="train-stats">
        ${p
          ? html`<span>step ${p.step}/${p.totalSteps}</span><span>loss <strong data-testid="train-loss">${p.loss.toFixed(4)}</strong></span><span>lr ${p.lr.toExponential(2)}</span>
              <span>${p.tokensPerSecond.toFixed(0)} tokens/s</span><span>ETA ${Math.round(p.etaSeconds)} s</span><span>GPU ${formatBytes(p.liveBytes)}</span>`
          : nothing}
      </div>
      <div class="chart"></div>
      ${this.answers.length
        ? html`<h3>Evaluation answers</h3><div class="answers" data-testid="eval-answers">${this.answers.map(
            (a) => html`<div><strong>step ${a.step}</strong>${a.answers.map((x) => html`<div class="qa"><span class="muted">› ${x.prompt}</span><br />${x.answer}</div>`)}</div>`,
          )}</div>`
        : nothing}
      ${this.done ? html`<p data-testid="train-done">${this.done}</p>` : nothing}
      ${this.error ? html`<p class="error">${this.error}</p>` : nothing}
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-train-section': WtTrainSection;
  }
}
