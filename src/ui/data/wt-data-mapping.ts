import { LitElement, css, html, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { PreviewSample } from '../../data/api.ts';
import { MAPPERS, type ColumnMapping, type MapperChoice, type MapperId } from '../../data/mappers.ts';
import { theme } from '../theme.ts';

/**
 * One file's mapping: the detected format, an override, and the column mapper (templates with {field} placeholders; click a
 * field to insert it) with a preview of the first mapped samples. Emits `mapping-change` ({file, choice}).
 */
export interface MappingChange {
  file: string;
  choice: MapperChoice;
}

@customElement('wt-data-mapping')
export class WtDataMapping extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .row { display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; margin-bottom: 0.5rem; }
      .reason { color: var(--wt-muted); }
      .fields button { font-family: var(--wt-font-mono); font-size: 0.8rem; }
      label.col { display: grid; grid-template-columns: 6rem 1fr; gap: 0.5rem; margin: 0.3rem 0; }
      textarea { font-family: var(--wt-font-mono); min-height: 2.2rem; }
      .preview { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.5rem; margin-top: 0.5rem; max-height: 16rem; overflow: auto; }
      .msg { white-space: pre-wrap; margin: 0.2rem 0; }
      .role { font-weight: 600; color: var(--wt-accent); margin-right: 0.4rem; }
      .sample + .sample { border-top: 1px solid var(--wt-border); margin-top: 0.4rem; padding-top: 0.4rem; }
    `,
  ];
  @property() file = '';
  @property({ attribute: false }) choice: MapperChoice | null = null;
  @property() reason = '';
  @property({ attribute: false }) fields: string[] = [];
  /** The first mapped samples of this file, and how many it has. */
  @property({ attribute: false }) preview: PreviewSample[] | null = null;
  @property({ type: Number }) samples = 0;
  private focused: keyof ColumnMapping = 'user';

  private change(choice: MapperChoice) {
    this.dispatchEvent(new CustomEvent<MappingChange>('mapping-change', { detail: { file: this.file, choice }, bubbles: true, composed: true }));
  }

  private columns(): ColumnMapping {
    return this.choice?.columns ?? { user: '', assistant: '' };
  }

  private setColumn(part: keyof ColumnMapping, value: string) {
    this.change({ id: 'columns', columns: { ...this.columns(), [part]: value } });
  }

  private renderColumns() {
    const c = this.columns();
    const part = (p: keyof ColumnMapping, label: string) => html`<label class="col">${label}
      <textarea .value=${c[p] ?? ''} @focus=${() => (this.focused = p)}
        @change=${(e: Event) => this.setColumn(p, (e.target as HTMLTextAreaElement).value)}></textarea></label>`;
    return html`
      <div class="row fields">Fields:
        ${this.fields.map((f) => html`<button title="insert {${f}}" @click=${() => this.setColumn(this.focused, `${c[this.focused] ?? ''}{${f}}`)}>${f}</button>`)}
      </div>
      ${part('system', 'System')}${part('user', 'User')}${part('assistant', 'Assistant')}`;
  }

  override render() {
    const id = this.choice?.id ?? '';
    return html`
      <div class="row">
        <strong>${this.file}</strong>
        <label>Format
          <select @change=${(e: Event) => {
            const v = (e.target as HTMLSelectElement).value as MapperId;
            this.change(v === 'columns' ? { id: v, columns: this.columns() } : { id: v });
          }}>
            ${id === '' ? html`<option value="" selected>— choose —</option>` : nothing}
            ${MAPPERS.map((m) => html`<option value=${m.id} ?selected=${m.id === id}>${m.label}</option>`)}
          </select>
        </label>
        <span class="reason">detected: ${this.reason}</span>
        ${id === 'oasst1' ? html`<label><input type="checkbox" .checked=${this.choice?.allPaths ?? false}
          @change=${(e: Event) => this.change({ id: 'oasst1', allPaths: (e.target as HTMLInputElement).checked })} /> every branch (default: best-ranked)</label>` : nothing}
      </div>
      ${id === 'columns' ? this.renderColumns() : nothing}
      ${this.preview ? html`<div class="preview">
        <div class="reason">${this.samples} samples${this.preview.length ? `; first ${this.preview.length}:` : ''}</div>
        ${this.preview.map((s) => html`<div class="sample">${s.kind === 'chat'
          ? s.messages.map((m) => html`<div class="msg"><span class="role">${m.role}</span>${m.content}</div>`)
          : html`<div class="msg">${s.text.length > 600 ? `${s.text.slice(0, 600)}…` : s.text}</div>`}</div>`)}
      </div>` : nothing}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-mapping': WtDataMapping;
  }
}
