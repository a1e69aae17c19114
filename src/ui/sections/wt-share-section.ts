import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { ModelInfo } from '../../engine/api.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';

/** Export the trained adapter as a PEFT-compatible zip. */
@customElement('wt-share-section')
export class WtShareSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      button { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; }
      button[disabled] { opacity: 0.5; }
      .error { color: var(--wt-error); }
      .muted { color: var(--wt-muted); }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @property({ type: Boolean }) tuned = false;
  @state() private error = '';
  @state() private saved = '';

  private async exportZip(): Promise<void> {
    this.error = '';
    try {
      const zip = await getEngine().exportAdapter();
      const name = `${(this.model?.id ?? 'model').replace(/[^\w.-]+/g, '_')}-lora-adapter.zip`;
      const url = URL.createObjectURL(new Blob([zip as BlobPart], { type: 'application/zip' }));
      const a = document.createElement('a');
      a.href = url;
      a.download = name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      this.saved = `${name} (${(zip.byteLength / 1024).toFixed(0)} KiB): adapter_config.json + adapter_model.safetensors as PEFT writes them, a model card, the chat template and stop tokens.`;
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    }
  }

  override render() {
    return html`
      <p>The zip loads with <code>PeftModel.from_pretrained(base, folder)</code> in transformers/PEFT as it is.</p>
      <button data-testid="export-adapter" ?disabled=${!this.tuned} @click=${() => void this.exportZip()}>Export adapter (.zip)</button>
      ${!this.tuned ? html`<p class="muted">Train an adapter first.</p>` : nothing}
      ${this.saved ? html`<p data-testid="export-done">Saved ${this.saved}</p>` : nothing}
      ${this.error ? html`<p class="error">${this.error}</p>` : nothing}
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-share-section': WtShareSection;
  }
}
