import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import type { GenerationSettings, ModelInfo } from '../../engine/api.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';

type Side = 'base' | 'tuned';
interface Turn {
  role: 'user' | 'assistant';
  text: string;
}

/** Chat with the base and the tuned model side by side, streamed, with the sampling controls. */
@customElement('wt-chat-section')
export class WtChatSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .cols { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1rem; }
      .col { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.6rem 0.8rem; min-height: 10rem; min-width: 0; overflow-wrap: anywhere; background: var(--wt-surface); }
      .turn { white-space: pre-wrap; margin: 0.4rem 0; }
      .user { color: var(--wt-muted); }
      .controls { display: flex; flex-wrap: wrap; gap: 0.6rem 1rem; margin: 0.6rem 0; font-size: 0.9rem; }
      .controls input { width: 5rem; font: inherit; }
      textarea { width: 100%; box-sizing: border-box; font: inherit; min-height: 3.5rem; }
      button { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; }
      button[disabled] { opacity: 0.5; }
      .error { color: var(--wt-error); }
      .muted { color: var(--wt-muted); }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @property({ type: Boolean }) tuned = false;
  @state() private turns: Record<Side, Turn[]> = { base: [], tuned: [] };
  @state() private busy = false;
  @state() private error = '';
  @state() private settings: Partial<GenerationSettings> = { temperature: 0.1, topP: 0.75, topK: 40, repetitionPenalty: 1, seed: 0, maxNewTokens: 128 };

  private async send(text: string): Promise<void> {
    if (!text.trim() || this.busy) return;
    this.busy = true;
    this.error = '';
    const sides: Side[] = this.tuned ? ['base', 'tuned'] : ['base'];
    try {
      for (const side of sides) {
        const turns = [...this.turns[side], { role: 'user' as const, text }, { role: 'assistant' as const, text: '' }];
        this.turns = { ...this.turns, [side]: turns };
        await getEngine().chat(side, text, this.settings, Comlink.proxy((delta: string) => {
          turns[turns.length - 1]!.text += delta;
          this.turns = { ...this.turns, [side]: [...turns] };
        }));
      }
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    } finally {
      this.busy = false;
    }
  }

  private setting(key: keyof GenerationSettings, v: string): void {
    this.settings = { ...this.settings, [key]: Number(v) };
  }

  private column(side: Side) {
    return html`<div class="col" data-testid="chat-${side}">
      <strong>${side === 'base' ? 'Base model' : 'Tuned (with your adapter)'}</strong>
      ${this.turns[side].map((t) => html`<div class="turn ${t.role}">${t.role === 'user' ? '› ' : ''}${t.text}</div>`)}
    </div>`;
  }

  override render() {
    if (!this.model) return html`<p class="muted">Load a model in the Model section first.</p>`;
    const num = (key: keyof GenerationSettings, label: string, step = 'any') =>
      html`<label>${label} <input type="number" step=${step} .value=${String(this.settings[key] ?? '')} @change=${(e: Event) => this.setting(key, (e.target as HTMLInputElement).value)} /></label>`;
    return html`
      <div class="controls">
        ${num('temperature', 'temperature')} ${num('topP', 'top-p')} ${num('topK', 'top-k', '1')} ${num('repetitionPenalty', 'repetition penalty')}
        ${num('seed', 'seed', '1')} ${num('maxNewTokens', 'max new tokens', '1')}
        <button class="secondary" @click=${() => { void getEngine().resetChat('base'); void getEngine().resetChat('tuned'); this.turns = { base: [], tuned: [] }; }}>New conversation</button>
      </div>
      <div class="cols">${this.column('base')}${this.tuned ? this.column('tuned') : html`<div class="col muted">Train an adapter to compare the tuned model here.</div>`}</div>
      <form @submit=${(e: Event) => { e.preventDefault(); const ta = this.renderRoot.querySelector('textarea')!; void this.send(ta.value); ta.value = ''; }}>
        <textarea data-testid="chat-input" placeholder="Ask something… (Enter sends, Shift+Enter for a new line)"
          @keydown=${(e: KeyboardEvent) => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); (e.target as HTMLTextAreaElement).form?.requestSubmit(); } }}></textarea>
        <button data-testid="chat-send" ?disabled=${this.busy}>Send</button>
      </form>
      ${this.error ? html`<p class="error">${this.error}</p>` : nothing}
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-chat-section': WtChatSection;
  }
}
