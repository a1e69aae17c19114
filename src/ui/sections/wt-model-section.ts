import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { ModelInfo } from '../../engine/api.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';

/** The curated 1.8B-class models, for orientation until Hub downloads land. */
const CURATED = [
  { id: 'internlm/internlm2-chat-1_8b', name: 'InternLM2-Chat-1.8B', licence: 'Apache-2.0 (code), custom (weights)' },
  { id: 'Qwen/Qwen2.5-1.5B-Instruct', name: 'Qwen2.5-1.5B-Instruct', licence: 'Apache-2.0' },
  { id: 'Qwen/Qwen3-1.7B', name: 'Qwen3-1.7B', licence: 'Apache-2.0' },
  { id: 'meta-llama/Llama-3.2-1B-Instruct', name: 'Llama-3.2-1B-Instruct', licence: 'Llama 3.2 Community' },
  { id: 'HuggingFaceTB/SmolLM2-1.7B-Instruct', name: 'SmolLM2-1.7B-Instruct', licence: 'Apache-2.0' },
];

/** Model choice: the offline demo model, or a checkpoint folder from disk. Fires `model-loaded`. */
@customElement('wt-model-section')
export class WtModelSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: 0.8rem; margin: 0.8rem 0; }
      .card { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.8rem 1rem; background: var(--wt-surface); }
      .card h3 { margin: 0 0 0.3rem; font-size: 1rem; }
      .muted { color: var(--wt-muted); font-size: 0.9rem; }
      button { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; }
      button[disabled] { opacity: 0.6; cursor: progress; }
      .loaded { border-color: var(--wt-ok); }
      .error { color: var(--wt-error); white-space: pre-wrap; }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @state() private busy = '';
  @state() private error = '';
  @state() private quantize = true;

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

  override render() {
    const m = this.model;
    return html`
      <div class="cards">
        <div class="card ${m?.id === 'webtune/demo-tiny-llama' ? 'loaded' : ''}">
          <h3>Offline demo model</h3>
          <p class="muted">A tiny Llama (0.4M parameters, byte-level tokenizer) made on this machine from a seed: no download. It learns the personal-assistant dataset in minutes.</p>
          <button data-testid="load-demo" ?disabled=${!!this.busy} @click=${() => void this.run('creating the demo model', () => getEngine().loadDemoModel(1))}>Use the demo model</button>
        </div>
        <div class="card">
          <h3>A checkpoint folder</h3>
          <p class="muted">A Hugging Face model folder from disk (config.json, *.safetensors, tokenizer files).</p>
          <label class="muted"><input type="checkbox" .checked=${this.quantize} @change=${(e: Event) => (this.quantize = (e.target as HTMLInputElement).checked)} /> quantize to 4 bits (QLoRA)</label><br />
          <input type="file" webkitdirectory multiple ?disabled=${!!this.busy} @change=${(e: Event) => this.loadFolder(e.target as HTMLInputElement)} />
        </div>
      </div>
      ${this.busy ? html`<p data-testid="model-busy">${this.busy}…</p>` : nothing}
      ${this.error ? html`<p class="error">${this.error}</p>` : nothing}
      ${m
        ? html`<p data-testid="model-info">Loaded <strong>${m.id}</strong>: ${m.architecture}, ${m.layers} layers, hidden ${m.hidden}, vocabulary ${m.vocab},
            ${(m.parameters / 1e6).toFixed(1)}M parameters, ${m.quantized ? '4-bit' : 'f32'} base, ${formatBytes(m.gpuBytes)} on the GPU.</p>`
        : nothing}
      <h3>Supported 1.8B-class models</h3>
      <p class="muted">Download from the Hub is not built yet; download these with your browser or <code>huggingface-cli</code> and pick the folder above.</p>
      <ul class="muted">${CURATED.map((c) => html`<li>${c.name} — <code>${c.id}</code> (${c.licence})</li>`)}</ul>
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-model-section': WtModelSection;
  }
}
