import { LitElement, css, html } from 'lit';
import { customElement, state } from 'lit/decorators.js';
import { theme } from '../theme.ts';

/** Drop zone (and file picker) for dataset files. Emits `files-selected` with detail File[]. */
@customElement('wt-data-drop')
export class WtDataDrop extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      label {
        display: block; border: 2px dashed var(--wt-border); border-radius: var(--wt-radius); padding: 1.5rem;
        text-align: center; cursor: pointer; background: var(--wt-surface); color: var(--wt-muted);
      }
      label.over { border-color: var(--wt-accent); color: var(--wt-text); }
      input { display: none; }
      strong { color: var(--wt-text); }
    `,
  ];
  @state() private over = false;

  private emit(files: FileList | null | undefined) {
    if (!files || files.length === 0) return;
    this.dispatchEvent(new CustomEvent<File[]>('files-selected', { detail: Array.from(files), bubbles: true, composed: true }));
  }

  override render() {
    return html`<label
      class=${this.over ? 'over' : ''}
      @dragover=${(e: DragEvent) => { e.preventDefault(); this.over = true; }}
      @dragleave=${() => { this.over = false; }}
      @drop=${(e: DragEvent) => { e.preventDefault(); this.over = false; this.emit(e.dataTransfer?.files); }}
    >
      <strong>Drop dataset files here</strong> or click to choose<br />
      JSONL, JSON, CSV, TSV, Excel .xlsx, or .txt / .md for continued pretraining. Your files are read, never changed.
      <input type="file" multiple accept=".jsonl,.ndjson,.json,.csv,.tsv,.xlsx,.txt,.md"
        @change=${(e: Event) => { const i = e.target as HTMLInputElement; this.emit(i.files); i.value = ''; }} />
    </label>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-drop': WtDataDrop;
  }
}
