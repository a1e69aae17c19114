import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { PrepareOptions } from '../../data/pipeline.ts';
import { BUILTIN_TEMPLATES } from '../../data/templates.ts';
import { theme } from '../theme.ts';

/**
 * Preparation settings and the chat template choice (the model's own, a built-in, or a custom one in
 * an editor). Emits `options-change` (PrepareOptions) and `template-change` (string, or null for the
 * model's own).
 */
@customElement('wt-data-options')
export class WtDataOptions extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .grid { display: flex; flex-wrap: wrap; gap: 0.5rem 1.2rem; align-items: center; margin-bottom: 0.5rem; }
      input[type='number'] { width: 6rem; }
      textarea { width: 100%; min-height: 8rem; font-family: var(--wt-font-mono); font-size: 0.8rem; box-sizing: border-box; }
      .muted { color: var(--wt-muted); }
    `,
  ];
  @property({ attribute: false }) options!: PrepareOptions;
  /** The model's own template, null if it has none. */
  @property({ attribute: false }) modelTemplate: string | null = null;
  @property({ attribute: false }) template: string | null = null;
  @state() private mode = 'model';
  @state() private draft = '';

  private set<K extends keyof PrepareOptions>(k: K, v: PrepareOptions[K]) {
    this.dispatchEvent(new CustomEvent<PrepareOptions>('options-change', { detail: { ...this.options, [k]: v }, bubbles: true, composed: true }));
  }

  private emitTemplate(t: string | null) {
    this.dispatchEvent(new CustomEvent<string | null>('template-change', { detail: t, bubbles: true, composed: true }));
  }

  private chooseTemplate(mode: string) {
    this.mode = mode;
    if (mode === 'model') this.emitTemplate(null);
    else if (mode === 'custom') this.draft = this.template ?? this.modelTemplate ?? '';
    else this.emitTemplate(BUILTIN_TEMPLATES.find((t) => t.id === mode)?.template ?? null);
  }

  override render() {
    const o = this.options;
    const num = (e: Event) => Number((e.target as HTMLInputElement).value);
    return html`
      <div class="grid">
        <label>Max length <input type="number" min="0" step="64" .value=${String(o.maxLength ?? 0)}
          @change=${(e: Event) => this.set('maxLength', num(e) > 0 ? num(e) : null)} /></label>
        <label><input type="checkbox" .checked=${o.pack} @change=${(e: Event) => this.set('pack', (e.target as HTMLInputElement).checked)} /> pack samples to max length</label>
        <label><input type="checkbox" .checked=${o.trainOnPrompt ?? false} @change=${(e: Event) => this.set('trainOnPrompt', (e.target as HTMLInputElement).checked)} /> train on prompt too</label>
        <label>Seed <input type="number" .value=${String(o.seed ?? '')}
          @change=${(e: Event) => this.set('seed', (e.target as HTMLInputElement).value === '' ? null : num(e))} /></label>
        <label>Eval split <input type="number" min="0" step="0.01" data-testid="eval-split" .value=${String(o.evalSplit)} @change=${(e: Event) => this.set('evalSplit', Math.max(0, num(e)))} /></label>
      </div>
      <div class="grid">
        <label>Chat template
          <select @change=${(e: Event) => this.chooseTemplate((e.target as HTMLSelectElement).value)}>
            <option value="model" ?selected=${this.mode === 'model'}>${this.modelTemplate ? "the model's own" : "the model's own (none!)"}</option>
            ${BUILTIN_TEMPLATES.map((t) => html`<option value=${t.id} ?selected=${this.mode === t.id}>${t.label}</option>`)}
            <option value="custom" ?selected=${this.mode === 'custom'}>custom…</option>
          </select>
        </label>
        ${this.modelTemplate ? nothing : html`<span class="muted">This tokenizer has no chat_template: pick one.</span>`}
      </div>
      ${this.mode === 'custom' ? html`
        <textarea .value=${this.draft} @input=${(e: Event) => (this.draft = (e.target as HTMLTextAreaElement).value)}
          spellcheck="false" aria-label="custom Jinja chat template"></textarea>
        <button @click=${() => this.emitTemplate(this.draft)}>Apply template</button>` : nothing}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-options': WtDataOptions;
  }
}
