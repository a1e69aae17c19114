import * as Comlink from 'comlink';
import { LitElement, css, html, nothing, type PropertyValues } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { DatasetMapping, ImportSummary, MappingPreview, PlainSample, PreparedResult, PrepareProgress, RenderedSample, TokenizerInfo } from '../../data/api.ts';
import { fallbackTokenizerSource } from '../../data/fallback-tokenizer.ts';
import type { IdentityOptions } from '../../data/identity.ts';
import type { ParseProgress } from '../../data/import.ts';
import { DEFAULT_PREPARE_OPTIONS, type PrepareOptions } from '../../data/pipeline.ts';
import type { TokenRow } from '../../data/rows.ts';
import type { TokenizerSource } from '../../data/tokenizer.ts';
import { theme } from '../theme.ts';
import { startDataWorker, type DataClient } from './data-client.ts';
import './wt-data-drop.ts';
import './wt-data-identity.ts';
import type { MappingChange } from './wt-data-mapping.ts';
import './wt-data-mapping.ts';
import './wt-data-options.ts';
import './wt-data-rejected.ts';
import './wt-data-sample-viewer.ts';
import './wt-data-stats.ts';

/** Detail of the `dataset-ready` event. */
/** What a training recipe exports: the mapped samples and how the rows were built from them. */
export interface RecipeData {
  samples: PlainSample[];
  maxLength: number;
  pack: boolean;
}

export interface DatasetReadyDetail extends PreparedResult {
  train: TokenRow[];
  eval: TokenRow[];
  recipe: RecipeData;
}

/**
 * The Data section: import files, check the detected mapping, flip through rendered samples with the
 * loss-carrying tokens highlighted, read the stats and the rejected-rows report, then prepare the rows.
 * All parsing and tokenization run in the data worker.
 *
 * `tokenizerSource`: the model's tokenizer ({tokenizerJson, tokenizerConfig, chatTemplate?}); until the
 * shell sets it a tiny built-in byte-level tokenizer with ChatML is used so the section can be demoed.
 * Fires `dataset-ready` (detail: DatasetReadyDetail) after "Prepare".
 */
@customElement('wt-data-section')
export class WtDataSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      section { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.8rem 1rem; margin: 0 0 1rem; background: var(--wt-bg); }
      h3 { margin: 0 0 0.6rem; font-size: 1.05rem; }
      .muted { color: var(--wt-muted); }
      .error { color: var(--wt-error); white-space: pre-wrap; }
      .row { display: flex; gap: 0.6rem; align-items: center; flex-wrap: wrap; }
      progress { width: 14rem; }
      details summary { cursor: pointer; }
    `,
  ];

  @property({ attribute: false }) tokenizerSource: TokenizerSource | null = null;

  @state() private info: TokenizerInfo | null = null;
  @state() private usingFallback = false;
  @state() private summary: ImportSummary | null = null;
  @state() private mapping: DatasetMapping = {};
  @state() private preview: MappingPreview | null = null;
  @state() private sample: RenderedSample | null = null;
  @state() private sampleIndex = 0;
  @state() private options: PrepareOptions = { ...DEFAULT_PREPARE_OPTIONS };
  @state() private template: string | null = null;
  @state() private result: PreparedResult | null = null;
  @state() private busy = '';
  @state() private progress: { value: number; max: number } | null = null;
  @state() private error = '';

  private client: DataClient | null = null;
  /** The source last sent to the worker (undefined: none yet). */
  private loadedSource: TokenizerSource | null | undefined = undefined;

  override connectedCallback(): void {
    super.connectedCallback();
    this.client ??= startDataWorker();
    this.loadedSource = undefined;
    void this.loadTokenizer();
  }

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    this.client?.dispose();
    this.client = null;
  }

  protected override willUpdate(changed: PropertyValues<this>): void {
    // Whenever the shell hands over another tokenizer (before or after the first render), load it.
    if (changed.has('tokenizerSource') && this.client && this.tokenizerSource !== this.loadedSource) void this.loadTokenizer();
  }

  private get api() {
    if (!this.client) throw new Error('data worker not started');
    return this.client.api;
  }

  private async task<T>(label: string, f: () => Promise<T>): Promise<T | undefined> {
    this.busy = label;
    this.error = '';
    try {
      return await f();
    } catch (err) {
      this.error = err instanceof Error ? err.message : String(err);
      return undefined;
    } finally {
      this.busy = '';
      this.progress = null;
    }
  }

  private async loadTokenizer() {
    this.loadedSource = this.tokenizerSource;
    const src = this.tokenizerSource ?? fallbackTokenizerSource();
    this.usingFallback = this.tokenizerSource === null;
    const info = await this.task('loading tokenizer', () => this.api.loadTokenizer(src));
    if (info) {
      this.info = info;
      this.template = null;
      await this.refresh();
    }
  }

  /** A model's tokenizer files picked by the user (tokenizer.json or tokenizer.model, config, template). */
  private async pickTokenizerFiles(list: FileList | null) {
    if (!list || list.length === 0) return;
    const files: Record<string, string | Uint8Array> = {};
    for (const f of Array.from(list)) {
      files[f.name] = f.name.endsWith('.model') ? new Uint8Array(await f.arrayBuffer()) : await f.text();
    }
    const info = await this.task('loading tokenizer', () => this.api.loadTokenizerFiles(files));
    if (info) {
      this.info = info;
      this.usingFallback = false;
      this.template = null;
      this.result = null;
      await this.refresh();
    }
  }

  private async importFiles(files: File[]) {
    for (const f of files) {
      const s = await this.task(`reading ${f.name}`, () =>
        this.api.importFile(f, f.name, undefined, Comlink.proxy((p: ParseProgress) => {
          this.progress = { value: p.bytes, max: Math.max(1, p.totalBytes) };
        })),
      );
      if (!s) return;
      this.adopt(s);
    }
    this.sampleIndex = 0;
    this.result = null;
    await this.refresh();
  }

  private async addIdentity(o: IdentityOptions) {
    const s = await this.task('generating identity dataset', () => this.api.addIdentityDataset(o));
    if (!s) return;
    this.adopt(s);
    this.result = null;
    await this.refresh();
  }

  /** Takes a new import summary; new files start with their detected format. */
  private adopt(s: ImportSummary) {
    this.summary = s;
    const m = { ...this.mapping };
    for (const f of s.files) if (!(f.name in m) && f.detected) m[f.name] = f.detected;
    this.mapping = m;
  }

  private async clear() {
    await this.api.clear();
    this.summary = null;
    this.mapping = {};
    this.preview = null;
    this.sample = null;
    this.result = null;
  }

  /** Re-maps and re-renders the current sample after any change. */
  private async refresh() {
    if (!this.summary || !this.info) {
      this.preview = null;
      this.sample = null;
      return;
    }
    // A column mapping still being filled in maps nothing yet.
    const choice: DatasetMapping = {};
    for (const [f, c] of Object.entries(this.mapping)) if (c.id !== 'columns' || (c.columns?.user && c.columns.assistant)) choice[f] = c;
    this.preview = (await this.task('mapping', () => this.api.previewMapping(choice))) ?? null;
    if (this.preview && this.preview.samples > 0) {
      this.sample = (await this.task('rendering', () => this.api.renderSample(choice, this.sampleIndex, { trainOnPrompt: this.options.trainOnPrompt ?? false }))) ?? null;
      if (this.sample) this.sampleIndex = this.sample.index;
    } else this.sample = null;
  }

  private async navigate(d: number) {
    this.sampleIndex += d;
    await this.refresh();
  }

  private async setTemplate(t: string | null) {
    const info = await this.task('applying template', () => this.api.setChatTemplate(t));
    if (info) {
      this.info = info;
      this.template = t;
      this.result = null;
      await this.refresh();
    }
  }

  private async setOptions(o: PrepareOptions) {
    const rerender = (o.trainOnPrompt ?? false) !== (this.options.trainOnPrompt ?? false);
    this.options = o;
    this.result = null;
    if (rerender) await this.refresh();
  }

  private async prepare() {
    const choice = this.mapping;
    const r = await this.task('preparing', () =>
      this.api.prepare(choice, this.options, Comlink.proxy((p: PrepareProgress) => {
        if (p.status === 'tokenizing') this.progress = { value: p.done, max: Math.max(1, p.total) };
      })),
    );
    if (!r) return;
    this.result = r;
    const samples = await this.api.mappedSamples(choice);
    const recipe = { samples, maxLength: this.options.maxLength ?? Math.max(1, ...r.train.map((row) => row.inputIds.length)), pack: this.options.pack };
    this.dispatchEvent(new CustomEvent<DatasetReadyDetail>('dataset-ready', { detail: { ...r, recipe }, bubbles: true, composed: true }));
  }

  override render() {
    const rejected = this.result?.rejected ?? this.preview?.rejected ?? this.summary?.rejected ?? [];
    return html`
      <section>
        <h3>1. Import</h3>
        <p class="muted">Tokenizer: ${this.info ? html`${this.info.vocabSize.toLocaleString()} tokens, eos ${this.info.eos ?? '—'}` : 'loading…'}
          ${this.usingFallback ? html` — built-in demo tokenizer (byte-level, ChatML); load a model for real token counts.` : nothing}
          <label class="muted">· use tokenizer files… <input type="file" multiple data-testid="tokenizer-files"
            accept=".json,.jinja,.model" @change=${(e: Event) => void this.pickTokenizerFiles((e.target as HTMLInputElement).files)} /></label></p>
        <wt-data-drop @files-selected=${(e: CustomEvent<File[]>) => void this.importFiles(e.detail)}></wt-data-drop>
        ${this.summary ? html`<p class="row">${this.summary.files.map((f) => html`<span>${f.name}: ${f.records} records${f.rejected ? `, ${f.rejected} unreadable` : ''}</span>`)}
          <button @click=${() => void this.clear()}>clear</button></p>` : nothing}
        <details><summary>Generate a personal-assistant identity dataset</summary>
          <wt-data-identity @identity-generate=${(e: CustomEvent<IdentityOptions>) => void this.addIdentity(e.detail)}></wt-data-identity>
        </details>
        ${this.busy ? html`<p class="row"><span>${this.busy}…</span>${this.progress ? html`<progress .value=${this.progress.value} max=${this.progress.max}></progress>` : nothing}</p>` : nothing}
        ${this.error ? html`<p class="error" role="alert">${this.error}</p>` : nothing}
      </section>
      ${this.summary ? html`
        <section>
          <h3>2. Mapping</h3>
          ${this.summary.files.map((f) => html`<wt-data-mapping .file=${f.name} .choice=${this.mapping[f.name] ?? null} .reason=${f.reason} .fields=${f.fields}
            .preview=${this.preview?.head[f.name] ?? null} .samples=${this.preview?.perFile[f.name] ?? 0}
            @mapping-change=${(e: CustomEvent<MappingChange>) => {
              this.mapping = { ...this.mapping, [e.detail.file]: e.detail.choice };
              this.sampleIndex = 0;
              this.result = null;
              void this.refresh();
            }}></wt-data-mapping>`)}
        </section>
        <section>
          <h3>3. Template, tokens and loss</h3>
          <wt-data-options .options=${this.options} .modelTemplate=${this.info?.modelChatTemplate ?? null} .template=${this.template}
            @options-change=${(e: CustomEvent<PrepareOptions>) => void this.setOptions(e.detail)}
            @template-change=${(e: CustomEvent<string | null>) => void this.setTemplate(e.detail)}></wt-data-options>
          <wt-data-sample-viewer .sample=${this.sample} @navigate=${(e: CustomEvent<number>) => void this.navigate(e.detail)}></wt-data-sample-viewer>
        </section>
        <section>
          <h3>4. Prepare</h3>
          <button ?disabled=${this.busy !== '' || !this.preview?.samples} @click=${() => void this.prepare()}>Prepare dataset</button>
          <wt-data-stats .stats=${this.result?.stats ?? null}></wt-data-stats>
          <wt-data-rejected .rejected=${rejected} .lengthReports=${this.result?.lengthReports ?? []}></wt-data-rejected>
        </section>` : nothing}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-section': WtDataSection;
  }
  interface HTMLElementEventMap {
    'dataset-ready': CustomEvent<DatasetReadyDetail>;
  }
}
