import { LitElement, css, html, nothing } from 'lit';
import { customElement, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import type { DeviceLossReport, GpuStatus } from '../engine/api.ts';
import './runs/wt-run-fault.ts';
import { applyTheme, theme } from './theme.ts';
import './shell/wt-gpu-badge.ts';
import './shell/wt-no-webgpu.ts';
import './sections/wt-section-intro.ts';
import './data/wt-data-section.ts';
import './sections/wt-model-section.ts';
import './sections/wt-train-section.ts';
import './sections/wt-chat-section.ts';
import './sections/wt-share-section.ts';
import type { ModelInfo, TokenizerSource, TrainRow } from '../engine/api.ts';
import type { DatasetReadyDetail, RecipeData } from './data/wt-data-section.ts';
import { getEngine } from './engine-client.ts';
import { THEME_CHOICES, settingsStore, type ThemeChoice } from './store/settings.ts';

export const SECTIONS = [
  { id: 'model', title: 'Model', needsGpu: true, intro: 'Pick a 1.8B-class chat model from the Hugging Face Hub, a local folder, or the offline demo model. Weights are quantized to 4 bits as they load.' },
  { id: 'data', title: 'Data', needsGpu: false, intro: 'Bring JSON, JSONL, CSV or Excel; map it into conversations and see every sample rendered with the chat template, loss-carrying tokens highlighted.' },
  { id: 'train', title: 'Train', needsGpu: true, intro: 'LoRA / QLoRA with presets; live loss curve, tokens/s, ETA, GPU memory and evaluation answers; pause and resume.' },
  { id: 'chat', title: 'Chat', needsGpu: true, intro: 'Talk to the base model or the tuned one, side by side, with every sampling control.' },
  { id: 'share', title: 'Share', needsGpu: false, intro: 'Export the adapter for PEFT, llama.cpp or Ollama, merge it into the base, or import one shared with you.' },
] as const;

export type SectionId = (typeof SECTIONS)[number]['id'];

function sectionFromHash(): SectionId {
  const id = location.hash.replace(/^#\/?/, '');
  return (SECTIONS.find((s) => s.id === id)?.id ?? 'model') as SectionId;
}

/** The application shell: header with the GPU badge, section tabs (hash routes), the active section. */
@customElement('wt-app')
export class WtApp extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: flex; flex-direction: column; min-height: 100vh; background: var(--wt-bg); }
      header { display: flex; align-items: center; gap: 1.5rem; padding: 0.6rem 1.2rem; border-bottom: 1px solid var(--wt-border); flex-wrap: wrap; }
      h1 { font-size: 1.15rem; margin: 0; }
      h1 span { color: var(--wt-muted); font-weight: 400; font-size: 0.85rem; margin-left: 0.4rem; }
      nav { display: flex; gap: 0.25rem; flex: 1; }
      nav a { padding: 0.4rem 0.8rem; border-radius: var(--wt-radius); color: var(--wt-text); text-decoration: none; }
      nav a[aria-current='page'] { background: var(--wt-accent); color: var(--wt-accent-text); }
      nav a:focus-visible { outline: 2px solid var(--wt-accent); outline-offset: 2px; }
      section[hidden] { display: none; }
      .theme { display: flex; align-items: center; gap: 0.35rem; font-size: 0.85rem; color: var(--wt-muted); }
      .theme select { font: inherit; color: var(--wt-text); background: var(--wt-surface); border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.15rem 0.3rem; }
      main { flex: 1; padding: 1.2rem; max-width: 80rem; width: 100%; box-sizing: border-box; margin: 0 auto; }
    `,
  ];

  @state() private section: SectionId = sectionFromHash();
  @state() private gpu: GpuStatus | null = null;
  @state() private model: ModelInfo | null = null;
  @state() private tokenizer: TokenizerSource | null = null;
  @state() private rows: TrainRow[] | null = null;
  @state() private evalRows: TrainRow[] | null = null;
  @state() private recipe: RecipeData | null = null;
  @state() private tuned = false;
  /** Runs that can be resumed (the Train section reports them): the Train tab shows a mark. */
  @state() private resumableRuns = 0;
  /** The last GPU device loss the worker recovered from (shown until dismissed). */
  @state() private deviceLost: DeviceLossReport | null = null;
  @state() private themeChoice: ThemeChoice = 'system';
  private watchingLoss = false;

  /** The offline demo model is the default: ready as soon as the GPU is, unless a model was chosen. */
  private onGpu(status: GpuStatus): void {
    this.gpu = status;
    if (status.ok && !this.watchingLoss) {
      this.watchingLoss = true;
      void getEngine().watchDeviceLoss(Comlink.proxy((r: DeviceLossReport) => this.onDeviceLoss(r))).catch(() => (this.watchingLoss = false));
    }
    if (status.ok && !this.model) {
      getEngine()
        .loadDemoModel(1)
        .then((info) => (this.model ? undefined : this.onModel(info)))
        .catch(() => undefined); // the Model section offers it again, with the error shown there
    }
  }

  private async onModel(info: ModelInfo): Promise<void> {
    this.model = info;
    this.tuned = false;
    this.rows = null;
    this.evalRows = null;
    this.recipe = null;
    this.tokenizer = await getEngine().tokenizerSource();
  }

  /** The worker set up a new GPU device: the model is loaded again, a trained adapter that was not stored is gone. */
  private onDeviceLoss(r: DeviceLossReport): void {
    this.deviceLost = r;
    this.tuned = false;
    if (r.model && r.model.id === this.model?.id) this.model = r.model;
    else if (!r.model) this.model = null;
  }

  private onHash = () => {
    this.section = sectionFromHash();
    void settingsStore().save({ section: this.section }).catch(() => undefined);
  };

  override connectedCallback(): void {
    super.connectedCallback();
    window.addEventListener('hashchange', this.onHash);
    void settingsStore()
      .load()
      .then((s) => {
        this.themeChoice = s.theme;
        applyTheme(s.theme);
        // Without a #/section in the address, open the section the user was in last time.
        if (!location.hash && s.section && SECTIONS.some((x) => x.id === s.section)) location.hash = `#/${s.section}`;
      })
      .catch(() => undefined);
  }

  private onTheme(choice: ThemeChoice): void {
    this.themeChoice = choice;
    applyTheme(choice);
    void settingsStore().save({ theme: choice }).catch(() => undefined);
  }

  override disconnectedCallback(): void {
    window.removeEventListener('hashchange', this.onHash);
    super.disconnectedCallback();
  }

  private renderSection(id: SectionId) {
    switch (id) {
      case 'model':
        return html`<wt-model-section .model=${this.model} @model-loaded=${(e: CustomEvent<ModelInfo>) => void this.onModel(e.detail)}></wt-model-section>`;
      case 'data':
        return html`<wt-data-section .tokenizerSource=${this.tokenizer} @dataset-ready=${(e: CustomEvent<DatasetReadyDetail>) => {
          this.rows = e.detail.train;
          this.evalRows = e.detail.eval;
          this.recipe = e.detail.recipe;
        }}></wt-data-section>`;
      case 'train':
        return html`<wt-train-section .model=${this.model} .rows=${this.rows} .evalRows=${this.evalRows} @adapter-trained=${() => (this.tuned = true)} @runs-changed=${(e: CustomEvent<{ resumable: number }>) => (this.resumableRuns = e.detail.resumable)}></wt-train-section>`;
      case 'chat':
        return html`<wt-chat-section .model=${this.model} ?tuned=${this.tuned}></wt-chat-section>`;
      case 'share':
        return html`<wt-share-section .model=${this.model} ?tuned=${this.tuned} .recipe=${this.recipe} @adapter-imported=${() => (this.tuned = true)}></wt-share-section>`;
      default:
        return nothing;
    }
  }

  override render() {
    const active = SECTIONS.find((s) => s.id === this.section)!;
    const blocked = active.needsGpu && this.gpu && !this.gpu.ok;
    return html`
      <header>
        <h1>WebTune<span>fine-tune on your own GPU</span></h1>
        <nav aria-label="Sections">
          ${SECTIONS.map((s) => html`<a href="#/${s.id}" data-testid="tab-${s.id}" aria-current=${s.id === this.section ? 'page' : 'false'}>${s.title}${s.id === 'train' && this.resumableRuns ? html` <span title="an unfinished training run can be resumed" aria-label="(a run can be resumed)">●</span>` : nothing}</a>`)}
        </nav>
        <label class="theme">Theme
          <select data-testid="theme-choice" .value=${this.themeChoice} @change=${(e: Event) => this.onTheme((e.target as HTMLSelectElement).value as ThemeChoice)}>
            ${THEME_CHOICES.map((c) => html`<option value=${c} ?selected=${c === this.themeChoice}>${c === 'system' ? 'System' : c === 'light' ? 'Light' : 'Dark'}</option>`)}
          </select>
        </label>
        <wt-gpu-badge @gpu-status=${(e: CustomEvent<GpuStatus>) => this.onGpu(e.detail)}></wt-gpu-badge>
      </header>
      <main data-testid="section-${active.id}">
        ${this.deviceLost && !(this.deviceLost.wasTraining && active.id === 'train') /* the Train section tells a run's loss, with Resume */
          ? html`<wt-run-fault data-testid="device-lost-banner" .fault=${{ kind: 'device-lost', message: this.deviceLost.runId ? `${this.deviceLost.restored}${this.deviceLost.checkpoint ? ' The Train section continues the run from its last checkpoint.' : ''}` : this.deviceLost.message, resumeRunId: null }} @fault-dismiss=${() => (this.deviceLost = null)}></wt-run-fault>`
          : nothing}
        ${blocked && this.gpu && !this.gpu.ok ? html`<wt-no-webgpu .message=${this.gpu.message}></wt-no-webgpu>` : nothing}
        ${SECTIONS.map(
          (sec) => html`<section ?hidden=${sec.id !== active.id || !!blocked} aria-label=${sec.title}>
            <wt-section-intro .heading=${sec.title} .text=${sec.intro}></wt-section-intro>${this.renderSection(sec.id)}
          </section>`,
        )}
      </main>
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-app': WtApp;
  }
}
