import { LitElement, css, html, nothing, type PropertyValues } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import type { ChatTurn, GenerationSettings, ModelInfo } from '../../engine/api.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';

type Side = 'base' | 'tuned';
type Mode = 'both' | Side;

interface Turn {
  role: 'user' | 'assistant';
  text: string;
  /** Assistant turns: streaming until the numbers arrive. */
  done?: ChatTurn;
  error?: string;
}

/** The numeric controls: field, label, integer?, one-line explanation. */
const NUMBERS: readonly (readonly [keyof GenerationSettings, string, boolean, string])[] = [
  ['temperature', 'temperature', false, '0 = greedy (always the most likely token); higher = more varied'],
  ['topP', 'top-p', false, 'sample only from the most likely tokens whose probabilities add up to this (1 = off)'],
  ['topK', 'top-k', true, 'sample only from the k most likely tokens (0 = off)'],
  ['repetitionPenalty', 'repetition penalty', false, 'above 1 discourages tokens already in the conversation (1 = off)'],
  ['seed', 'seed', true, 'the same seed and settings give the same answer'],
  ['maxNewTokens', 'max new tokens', true, 'longest answer, in tokens'],
];

/** XTuner's chat defaults (temperature 0.1, top-p 0.75, top-k 40, penalty 1.0); a short answer for a quick look. */
const DEFAULTS: Record<string, string> = { temperature: '0.1', topP: '0.75', topK: '40', repetitionPenalty: '1', seed: '0', maxNewTokens: '256' };

const FINISH: Record<ChatTurn['finishReason'], string> = { eos: 'end of turn', length: 'max new tokens', stop: 'stop string', abort: 'stopped', cache: 'context full' };

/**
 * Chat with the base model, the tuned one, or both side by side on the same prompt: streamed, with every
 * sampling control, an editable system prompt (rendered by the model's chat template in the engine, the
 * code path training uses), a stop button (and Esc) that ends the answer after the current token, and the
 * decoding speed of each answer. Model text is always rendered as text, never as HTML.
 */
@customElement('wt-chat-section')
export class WtChatSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); gap: 1rem; }
      .col { border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.6rem 0.8rem; min-height: 10rem; min-width: 0; overflow-wrap: anywhere; background: var(--wt-surface); }
      .turn { white-space: pre-wrap; margin: 0.4rem 0; }
      .user { color: var(--wt-muted); }
      .stats { font-size: 0.8rem; color: var(--wt-muted); margin-top: -0.2rem; }
      .controls { display: flex; flex-wrap: wrap; gap: 0.6rem 1rem; margin: 0.6rem 0; font-size: 0.9rem; align-items: end; }
      .controls label { display: flex; flex-direction: column; gap: 0.15rem; }
      .controls input { width: 5.5rem; font: inherit; }
      .controls textarea { width: 12rem; min-height: 2.2rem; }
      textarea { width: 100%; box-sizing: border-box; font: inherit; min-height: 3.5rem; }
      .system textarea { min-height: 2.5rem; }
      .row { display: flex; gap: 0.6rem; align-items: center; flex-wrap: wrap; margin: 0.4rem 0; }
      button { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; }
      button.secondary { background: transparent; color: inherit; border-color: var(--wt-border); }
      button.stop { background: var(--wt-error); border-color: var(--wt-error); }
      button[disabled] { opacity: 0.5; cursor: default; }
      .error { color: var(--wt-error); }
      .muted { color: var(--wt-muted); }
      details { margin: 0.4rem 0; }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @property({ type: Boolean }) tuned = false;
  @state() private turns: Record<Side, Turn[]> = { base: [], tuned: [] };
  @state() private busy = false;
  @state() private error = '';
  @state() private notice = '';
  @state() private fields: Record<string, string> = { ...DEFAULTS };
  @state() private stopText = '';
  @state() private system = '';
  @state() private defaultSystem: string | null = null;
  @state() private mode: Mode = 'both';
  private stopRequested = false;

  override connectedCallback(): void {
    super.connectedCallback();
    this.addEventListener('keydown', this.onKey);
  }

  override disconnectedCallback(): void {
    this.removeEventListener('keydown', this.onKey);
    super.disconnectedCallback();
  }

  private readonly onKey = (e: KeyboardEvent): void => {
    if (e.key === 'Escape' && this.busy) {
      e.preventDefault();
      void this.stop();
    }
  };

  protected override willUpdate(changed: PropertyValues<this>): void {
    if (changed.has('model')) {
      // A new model: a new conversation, under its template's default system prompt.
      this.turns = { base: [], tuned: [] };
      this.notice = '';
      if (this.model) void this.loadDefaultSystem();
    }
    if (changed.has('tuned') && !this.tuned) this.mode = 'both';
  }

  private async loadDefaultSystem(): Promise<void> {
    try {
      this.defaultSystem = await getEngine().chatDefaultSystem();
      this.system = this.defaultSystem ?? '';
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    }
  }

  private sides(): Side[] {
    if (!this.tuned) return ['base'];
    return this.mode === 'both' ? ['base', 'tuned'] : [this.mode];
  }

  /** The settings from the fields, or an error naming the field. */
  private readSettings(): Partial<GenerationSettings> {
    const out: Record<string, number | string[]> = {};
    for (const [key, label, integer] of NUMBERS) {
      const raw = (this.fields[key] ?? '').trim();
      const v = Number(raw);
      if (raw === '' || !Number.isFinite(v)) throw new Error(`${label}: '${raw}' is not a number`);
      if (integer && !Number.isInteger(v)) throw new Error(`${label}: ${raw} must be a whole number`);
      out[key] = v;
    }
    // One stop string per line; \n and \t stand for a newline and a tab inside one.
    out.stopStrings = this.stopText.split('\n').filter((s) => s !== '').map((s) => s.replace(/\\n/g, '\n').replace(/\\t/g, '\t'));
    return out as Partial<GenerationSettings>;
  }

  private async send(text: string): Promise<void> {
    if (!text.trim() || this.busy) return;
    let settings: Partial<GenerationSettings>;
    try {
      settings = this.readSettings();
    } catch (e) {
      this.error = (e as Error).message;
      return;
    }
    this.busy = true;
    this.error = '';
    this.notice = '';
    this.stopRequested = false;
    try {
      for (const side of this.sides()) {
        if (this.stopRequested) break;
        const turns = [...this.turns[side], { role: 'user' as const, text }, { role: 'assistant' as const, text: '' }];
        const reply = turns[turns.length - 1]!;
        const show = () => (this.turns = { ...this.turns, [side]: [...turns] });
        show();
        try {
          reply.done = await getEngine().chatTurn(side, text, settings, Comlink.proxy((delta: string) => {
            reply.text += delta;
            show();
          }));
          reply.text = reply.done.text;
        } catch (e) {
          // The engine drops the failed turn from its conversation: drop it here too, keep the message.
          turns.splice(turns.length - 2, 2);
          throw e;
        } finally {
          show();
        }
      }
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    } finally {
      this.busy = false;
    }
  }

  private async stop(): Promise<void> {
    this.stopRequested = true;
    await getEngine().stopGeneration();
  }

  private async newConversation(system?: string | null): Promise<void> {
    const engine = getEngine();
    if (this.busy) await this.stop();
    await engine.resetChat('base', system);
    await engine.resetChat('tuned');
    this.turns = { base: [], tuned: [] };
  }

  private async setSystem(value: string): Promise<void> {
    if (value === this.system) return;
    const had = this.turns.base.length + this.turns.tuned.length > 0;
    this.system = value;
    // The engine sends no system turn when the text is the template's default: what training rendered.
    await this.newConversation(value);
    this.notice = had ? 'System prompt changed: a new conversation started.' : '';
  }

  private column(side: Side) {
    return html`<div class="col" data-testid="chat-${side}">
      <strong>${side === 'base' ? 'Base model' : 'Tuned (with your adapter)'}</strong>
      ${this.turns[side].map((t) => html`<div class="turn ${t.role}">${t.role === 'user' ? '› ' : ''}${t.text}</div>${t.done ? this.stats(side, t.done) : nothing}`)}
    </div>`;
  }

  private stats(side: Side, d: ChatTurn) {
    return html`<div class="stats" data-testid="chat-stats-${side}">${d.tokens} tokens · ${d.tokensPerSecond.toFixed(1)} tokens/s · ${FINISH[d.finishReason]} · prompt ${d.promptTokens} tokens (${d.reusedTokens} reused) in ${d.prefillMs.toFixed(0)} ms</div>`;
  }

  override render() {
    if (!this.model) return html`<p class="muted">Load a model in the Model section first.</p>`;
    const sides = this.sides();
    return html`
      <div class="system">
        <label for="system">System prompt ${this.defaultSystem !== null ? html`<span class="muted">(the chat template's default: ${this.defaultSystem === '' ? 'empty' : 'shown'}; editing it starts a new conversation)</span>` : html`<span class="muted">(optional; editing it starts a new conversation)</span>`}</label>
        <textarea id="system" data-testid="chat-system" .value=${this.system} placeholder="e.g. You are a helpful assistant."
          @change=${(e: Event) => void this.setSystem((e.target as HTMLTextAreaElement).value)}></textarea>
        ${this.defaultSystem !== null && this.system !== this.defaultSystem ? html`<button class="secondary" @click=${() => void this.setSystem(this.defaultSystem ?? '')}>Use the template's default</button>` : nothing}
      </div>
      <div class="controls">
        ${NUMBERS.map(([key, label, integer, help]) => html`<label title=${help}>${label}
          <input type="number" data-testid="chat-${key}" step=${integer ? '1' : 'any'} .value=${this.fields[key] ?? ''}
            @change=${(e: Event) => (this.fields = { ...this.fields, [key]: (e.target as HTMLInputElement).value })} /></label>`)}
        <label title="one per line; the answer ends before the first one that appears (\\n = newline)">stop strings
          <textarea data-testid="chat-stop-strings" .value=${this.stopText} @change=${(e: Event) => (this.stopText = (e.target as HTMLTextAreaElement).value)}></textarea></label>
        <button class="secondary" title="XTuner's chat defaults" @click=${() => (this.fields = { ...DEFAULTS })}>Defaults</button>
      </div>
      <div class="row">
        ${this.tuned
          ? html`<label>Answer with
              <select data-testid="chat-mode" .value=${this.mode} @change=${(e: Event) => (this.mode = (e.target as HTMLSelectElement).value as Mode)}>
                <option value="both">base and tuned, side by side</option>
                <option value="base">the base model</option>
                <option value="tuned">the tuned model</option>
              </select></label>`
          : nothing}
        <button class="secondary" data-testid="chat-new" @click=${() => void this.newConversation().then(() => (this.notice = ''))}>New conversation</button>
      </div>
      <div class="cols">${sides.map((s) => this.column(s))}${this.tuned ? nothing : html`<div class="col muted">Train an adapter to compare the tuned model here.</div>`}</div>
      <form @submit=${(e: Event) => {
        e.preventDefault();
        const ta = this.renderRoot.querySelector<HTMLTextAreaElement>('textarea[data-testid="chat-input"]')!;
        const idle = !this.busy;
        void this.send(ta.value);
        // send() marks itself busy before its first await: cleared only when the message went out.
        if (idle && this.busy) ta.value = '';
      }}>
        <textarea data-testid="chat-input" placeholder="Ask something… (Enter sends, Shift+Enter for a new line, Esc stops the answer)"
          @keydown=${(e: KeyboardEvent) => {
            if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              if (!this.busy) (e.target as HTMLTextAreaElement).form?.requestSubmit();
            }
          }}></textarea>
        <div class="row">
          <button data-testid="chat-send" ?disabled=${this.busy}>Send</button>
          ${this.busy ? html`<button type="button" class="stop" data-testid="chat-stop" @click=${() => void this.stop()}>Stop (Esc)</button>` : nothing}
        </div>
      </form>
      ${this.notice ? html`<p class="muted" data-testid="chat-notice">${this.notice}</p>` : nothing}
      ${this.error ? html`<p class="error" data-testid="chat-error">${this.error}</p>` : nothing}
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-chat-section': WtChatSection;
  }
}
