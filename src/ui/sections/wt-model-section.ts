import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import type { CachedModel, CuratedPlan, HubProgress, ModelInfo } from '../../engine/api.ts';
import { CURATED_MODELS } from '../../engine/model/curated.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';
import { settingsStore, type TrainSettings } from '../store/settings.ts';
import { PRESETS, trainConfigOf } from '../store/presets.ts';

const gb = (n: number) => `${(n / 1e9).toFixed(1)} GB`;

/**
 * Model choice: a Hugging Face Hub model (curated cards or any repo id; downloaded once into this
 * browser's storage, resumable, then offline), the offline demo model, or a checkpoint folder from disk.
 * Fires `model-loaded` (detail: ModelInfo).
 */
@customElement('wt-model-section')
export class WtModelSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      h3 { margin: 1.2rem 0 0.4rem; font-size: 1.05rem; }
      .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: 0.8rem; margin: 0.8rem 0; }
      .card { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.8rem 1rem; background: var(--wt-surface); display: flex; flex-direction: column; gap: 0.4rem; }
      .card h4 { margin: 0; font-size: 1rem; }
      .card code { font-size: 0.85rem; word-break: break-all; }
      .grow { flex: 1; }
      .muted { color: var(--wt-muted); font-size: 0.9rem; }
      .row { display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; }
      input[type='text'], input[type='password'] { font: inherit; padding: 0.3rem 0.5rem; border: 1px solid var(--wt-border); border-radius: var(--wt-radius); background: var(--wt-bg); color: var(--wt-text); }
      input.repo { min-width: 20rem; flex: 1; }
      input.rev { width: 8rem; }
      input.len { width: 5.5rem; font: inherit; padding: 0.15rem 0.3rem; border: 1px solid var(--wt-border); border-radius: var(--wt-radius); background: var(--wt-bg); color: var(--wt-text); }
      button { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; }
      button.secondary { background: transparent; color: var(--wt-accent); }
      button[disabled] { opacity: 0.6; cursor: not-allowed; }
      button:focus-visible, input:focus-visible { outline: 2px solid var(--wt-accent); outline-offset: 2px; }
      .loaded { border-color: var(--wt-ok); }
      .error { color: var(--wt-error); white-space: pre-wrap; }
      .ok { color: var(--wt-ok); }
      .warn { color: var(--wt-warn); }
      .progress { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.6rem 0.8rem; margin: 0.6rem 0; }
      progress { width: 100%; height: 0.9rem; }
      table { border-collapse: collapse; width: 100%; font-size: 0.92rem; }
      th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--wt-border); }
      td.num { text-align: right; font-variant-numeric: tabular-nums; }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @state() private busy = '';
  @state() private error = '';
  @state() private quantize = true;
  @state() private repo = '';
  @state() private revision = 'main';
  @state() private progress: HubProgress | null = null;
  @state() private downloading = '';
  @state() private cached: CachedModel[] = [];
  @state() private hasToken = false;
  @state() private tokenDraft = '';
  @state() private tokenNote = '';
  /** Each card's predicted training memory for the Train settings at `planSeqLen` tokens (null: not planned yet). */
  @state() private plans: Map<string, CuratedPlan> | null = null;
  @state() private planSettings: TrainSettings | null = null;
  @state() private planSeqLen = 2048;
  private planSerial = 0;

  override connectedCallback(): void {
    super.connectedCallback();
    void this.refreshCache();
    void this.refreshPlans();
    // The Train settings may have changed while another section was open.
    window.addEventListener('hashchange', this.onHash);
    void getEngine()
      .hasHubToken()
      .then((t) => (this.hasToken = t))
      .catch(() => {});
  }

  override disconnectedCallback(): void {
    window.removeEventListener('hashchange', this.onHash);
    super.disconnectedCallback();
  }

  private onHash = () => {
    if (/^#\/?model$/.test(location.hash)) void this.refreshPlans();
  };

  /** Predicts each card's GPU memory with the stored Train settings (the engine plans from the bundled config.json). */
  private async refreshPlans(): Promise<void> {
    const serial = ++this.planSerial;
    try {
      const settings = (await settingsStore().load()).train;
      const plans = await getEngine().planCuratedTraining(trainConfigOf(settings), this.planSeqLen, this.quantize, settings.budgetGiB * 2 ** 30);
      if (serial !== this.planSerial) return; // a newer request (checkbox, length) is on its way
      this.planSettings = settings;
      this.plans = new Map(plans.map((p) => [p.id, p]));
    } catch {
      if (serial === this.planSerial) this.plans = null; // no GPU yet: the cards show no prediction
    }
  }

  private renderPlan(id: string) {
    const p = this.plans?.get(id);
    if (!p) return nothing;
    if ('error' in p) return html`<span class="muted" data-testid=${`plan-${id}`}>GPU memory: not predicted (${p.error})</span>`;
    const budget = this.planSettings ? this.planSettings.budgetGiB * 2 ** 30 : 0;
    return html`<span data-testid=${`plan-${id}`} class=${p.fits ? 'ok' : 'warn'} title="predicted peak GPU memory while training, from the model's config.json and the Train settings">
      ≈${formatBytes(p.totalBytes)} GPU to train${budget ? (p.fits ? ` · fits ${formatBytes(budget)}` : ` · over ${formatBytes(budget)}: shorten the max length or lower the batch`) : ''}</span>`;
  }

  private async refreshCache(): Promise<void> {
    try {
      this.cached = await getEngine().cachedModels();
    } catch {
      this.cached = []; // no OPFS here (private window of some browsers): nothing cached to show
    }
  }

  private async run(what: string, load: () => Promise<ModelInfo>): Promise<void> {
    this.busy = what;
    this.error = '';
    try {
      const info = await load();
      this.dispatchEvent(new CustomEvent('model-loaded', { detail: info, bubbles: true, composed: true }));
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    } finally {
      this.busy = '';
    }
  }

  private loadFolder(input: HTMLInputElement): void {
    const files = new Map<string, Blob>();
    let root = '';
    for (const f of Array.from(input.files ?? [])) {
      const rel = (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name;
      root ||= rel.split('/')[0] ?? '';
      files.set(rel.split('/').slice(1).join('/') || f.name, f);
    }
    if (files.size === 0) return;
    void this.run(`loading ${root}`, () => getEngine().loadModelFiles(files, { id: root || 'local model', quantize: this.quantize }));
  }

  /** Downloads (or opens from the cache) and loads a Hub model. */
  private async loadHub(repo: string, revision = 'main'): Promise<void> {
    const id = repo.trim();
    if (!id) {
      this.error = 'Enter a Hub model id, e.g. Qwen/Qwen2.5-1.5B-Instruct.';
      return;
    }
    // Ask the browser not to evict GBs of weights under storage pressure (allowed only on the page, not in the worker).
    await navigator.storage?.persist?.().catch(() => false);
    this.downloading = id;
    this.progress = null;
    await this.run(`getting ${id}`, () =>
      getEngine().loadHubModel(id, { revision, quantize: this.quantize }, Comlink.proxy((p: HubProgress) => (this.progress = p))),
    );
    this.downloading = '';
    this.progress = null;
    await this.refreshCache();
  }

  private async cancel(): Promise<void> {
    await getEngine().cancelHubDownload();
  }

  private async deleteCached(m: CachedModel): Promise<void> {
    if (!confirm(`Delete ${m.repo} (${formatBytes(m.bytes)}) from this browser's storage?`)) return;
    try {
      await getEngine().deleteCachedModel(m.repo, m.commit);
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    }
    await this.refreshCache();
  }

  private async saveToken(): Promise<void> {
    this.tokenNote = '';
    try {
      await getEngine().setHubToken(this.tokenDraft);
      this.tokenDraft = '';
      this.hasToken = await getEngine().hasHubToken();
      this.tokenNote = 'Saved in this browser.';
    } catch (e) {
      this.tokenNote = e instanceof Error ? e.message : String(e);
    }
  }

  private async forgetToken(): Promise<void> {
    await getEngine().setHubToken(null);
    this.hasToken = false;
    this.tokenNote = 'Forgotten.';
  }

  private renderProgress() {
    if (!this.downloading) return nothing;
    const p = this.progress;
    let text = `Contacting the Hub for ${this.downloading}…`;
    let value: number | undefined;
    if (p?.status === 'downloading') {
      value = p.total > 0 ? p.loaded / p.total : undefined;
      text = `${p.file}: ${formatBytes(p.fileLoaded)} of ${formatBytes(p.fileTotal)} — ${formatBytes(p.loaded)} of ${formatBytes(p.total)} in all`;
    } else if (p?.status === 'checking') text = `Checking ${p.file}: is this a model WebTune can train?`;
    else if (p?.status === 'verifying') text = `Verifying ${p.file} (sha256)…`;
    else if (p?.status === 'retrying') text = `Connection dropped on ${p.file}; resuming (attempt ${p.attempt})…`;
    else if (p?.status === 'cached' || p?.status === 'done') {
      value = 1;
      text = `${formatBytes(p.bytes)} ready in this browser; loading onto the GPU${this.quantize ? ' (4-bit)' : ''}…`;
    }
    return html`<div class="progress" role="status" aria-live="polite" data-testid="hub-progress">
      <progress max="1" .value=${value ?? 0} aria-label="download progress" ?indeterminate=${value === undefined}></progress>
      <div class="row"><span class="grow muted">${text}</span>
        ${p?.status === 'cached' || p?.status === 'done' ? nothing : html`<button class="secondary" data-testid="hub-cancel" @click=${() => void this.cancel()}>Cancel</button>`}</div>
    </div>`;
  }

  private renderCache() {
    if (this.cached.length === 0) return html`<p class="muted">No Hub models stored in this browser yet.</p>`;
    return html`<table data-testid="hub-cache">
      <thead><tr><th>Model</th><th>Revision</th><th class="num">Size</th><th>State</th><th>Last used</th><th></th></tr></thead>
      <tbody>
        ${this.cached.map(
          (m) => html`<tr>
            <td><code>${m.repo}</code></td>
            <td><code title=${m.commit}>${m.revisions.join(', ') || m.commit.slice(0, 10)}</code></td>
            <td class="num">${formatBytes(m.bytes)}${m.totalBytes !== null && !m.complete ? html` of ${formatBytes(m.totalBytes)}` : nothing}</td>
            <td>${m.complete ? html`<span class="ok">complete</span>` : html`<span class="warn">partial</span>`}</td>
            <td>${m.lastUsed ? new Date(m.lastUsed).toLocaleString() : '—'}</td>
            <td class="row">
              <button class="secondary" ?disabled=${!!this.busy} @click=${() => void this.loadHub(m.repo, m.complete ? m.commit : m.revisions[0] ?? m.commit)}>${m.complete ? 'Load' : 'Resume'}</button>
              <button class="secondary" ?disabled=${this.downloading === m.repo} aria-label=${`Delete ${m.repo}`} @click=${() => void this.deleteCached(m)}>Delete</button>
            </td>
          </tr>`,
        )}
      </tbody>
    </table>`;
  }

  override render() {
    const m = this.model;
    const busy = !!this.busy;
    return html`
      <label class="muted"><input type="checkbox" .checked=${this.quantize} @change=${(e: Event) => {
        this.quantize = (e.target as HTMLInputElement).checked;
        void this.refreshPlans();
      }} /> quantize the base to 4 bits on load (QLoRA: about a quarter of the GPU memory)</label>

      <h3>From the Hugging Face Hub</h3>
      <p class="muted">Downloaded once into this browser's storage (resumable after a dropped connection or a reload, every file verified), then available offline.</p>
      ${this.planSettings
        ? html`<p class="muted row" data-testid="plan-basis">GPU memory predicted for training with the Train settings (${PRESETS[this.planSettings.preset]?.label ?? this.planSettings.preset}: rank ${trainConfigOf(this.planSettings).loraRank}, batch ${trainConfigOf(this.planSettings).microBatch}, ${this.quantize ? '4-bit' : 'f32'} base) at
            <label>max length <input class="len" type="number" min="64" step="64" .value=${String(this.planSeqLen)} aria-label="max length for the memory prediction" data-testid="plan-seq-len" @change=${(e: Event) => {
              const v = Math.round(Number((e.target as HTMLInputElement).value));
              if (Number.isFinite(v) && v >= 1) {
                this.planSeqLen = v;
                void this.refreshPlans();
              }
            }} /></label> tokens.</p>`
        : nothing}
      <div class="cards">
        ${CURATED_MODELS.map(
          (c) => html`<div class="card ${m?.id === c.id ? 'loaded' : ''}">
            <h4>${c.name}</h4>
            <code>${c.id}</code>
            <span class="muted grow">≈${gb(c.downloadBytes)} download · ${c.licence}</span>
            ${this.renderPlan(c.id)}
            <button ?disabled=${busy} data-testid=${`hub-${c.id}`} @click=${() => void this.loadHub(c.id)}>${this.cached.some((x) => x.repo === c.id && x.complete) ? 'Load (cached)' : 'Download and load'}</button>
          </div>`,
        )}
      </div>
      <form class="row" @submit=${(e: Event) => { e.preventDefault(); void this.loadHub(this.repo, this.revision || 'main'); }}>
        <label class="row grow">Any model <input class="repo" type="text" placeholder="owner/name, e.g. Qwen/Qwen2.5-0.5B-Instruct" .value=${this.repo} @input=${(e: Event) => (this.repo = (e.target as HTMLInputElement).value)} aria-label="Hub model id" data-testid="hub-repo" /></label>
        <label class="row">revision <input class="rev" type="text" .value=${this.revision} @input=${(e: Event) => (this.revision = (e.target as HTMLInputElement).value)} aria-label="revision (branch, tag or commit)" /></label>
        <button type="submit" ?disabled=${busy || !this.repo.trim()}>Get</button>
      </form>
      ${this.renderProgress()}

      <details>
        <summary>Access token for gated or private models ${this.hasToken ? html`<span class="ok">(saved)</span>` : nothing}</summary>
        <p class="muted">Llama and some other models are gated: accept their licence on the model's Hub page first, then paste a token from
          <a href="https://huggingface.co/settings/tokens" target="_blank" rel="noopener">huggingface.co/settings/tokens</a> ("Read" access is enough).
          It is kept only in this browser (IndexedDB of this site) and sent only to huggingface.co, never to the download mirrors it redirects to.</p>
        <form class="row" @submit=${(e: Event) => { e.preventDefault(); void this.saveToken(); }}>
          <input type="password" autocomplete="off" placeholder="hf_…" .value=${this.tokenDraft} @input=${(e: Event) => (this.tokenDraft = (e.target as HTMLInputElement).value)} aria-label="Hugging Face access token" />
          <button type="submit" ?disabled=${!this.tokenDraft.trim()}>Save token</button>
          ${this.hasToken ? html`<button type="button" class="secondary" @click=${() => void this.forgetToken()}>Forget token</button>` : nothing}
          <span class="muted">${this.tokenNote}</span>
        </form>
      </details>

      <h3>Stored in this browser</h3>
      ${this.renderCache()}

      <h3>Other sources</h3>
      <div class="cards">
        <div class="card ${m?.id === 'webtune/demo-tiny-llama' ? 'loaded' : ''}">
          <h4>Offline demo model</h4>
          <p class="muted grow">A tiny Llama (70k parameters, byte-level tokenizer) made on this machine from a seed: no download. With the quick preset it learns the personal-assistant dataset in about a minute.</p>
          <button data-testid="load-demo" ?disabled=${busy} @click=${() => void this.run('creating the demo model', () => getEngine().loadDemoModel(1))}>Use the demo model</button>
        </div>
        <div class="card">
          <h4>A checkpoint folder</h4>
          <p class="muted grow">A Hugging Face model folder from disk (config.json, *.safetensors, tokenizer files).</p>
          <input type="file" webkitdirectory multiple ?disabled=${busy} aria-label="checkpoint folder" @change=${(e: Event) => this.loadFolder(e.target as HTMLInputElement)} />
        </div>
      </div>

      ${this.busy ? html`<p data-testid="model-busy">${this.busy}…</p>` : nothing}
      ${this.error ? html`<p class="error" role="alert" data-testid="model-error">${this.error}</p>` : nothing}
      ${m
        ? html`<p data-testid="model-info">Loaded <strong>${m.id}</strong>: ${m.architecture}, ${m.layers} layers, hidden ${m.hidden}, vocabulary ${m.vocab},
            ${(m.parameters / 1e6).toFixed(1)}M parameters, ${m.quantized ? '4-bit' : 'f32'} base, ${formatBytes(m.gpuBytes)} on the GPU.</p>`
        : nothing}
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-model-section': WtModelSection;
  }
}
