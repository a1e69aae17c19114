import { LitElement, css, html, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { RunFault } from './run-fault.ts';
import { theme } from '../theme.ts';

const TITLES: Record<RunFault['kind'], string> = {
  'device-lost': 'The GPU was lost',
  'out-of-memory': 'Out of GPU memory',
  paused: 'Training paused itself',
};

/** The banner: what happened, in the engine's words, with Resume when a checkpoint allows it. Events: fault-resume, fault-dismiss. */
@customElement('wt-run-fault')
export class WtRunFault extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .fault { border: 1px solid var(--wt-warn); border-left-width: 4px; border-radius: var(--wt-radius); padding: 0.5rem 0.9rem; margin: 0.6rem 0; }
      .fault.out-of-memory { border-color: var(--wt-error); }
      strong { display: block; margin-bottom: 0.2rem; }
      p { margin: 0.2rem 0 0.4rem; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.92rem; }
      button { font: inherit; padding: 0.3rem 0.8rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; margin-right: 0.5rem; }
      button.secondary { background: transparent; color: var(--wt-accent); }
    `,
  ];

  @property({ attribute: false }) fault: RunFault | null = null;
  /** Disables Resume while another run trains. */
  @property({ type: Boolean }) busy = false;

  private emit(name: string, detail?: unknown): void {
    this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
  }

  override render() {
    const f = this.fault;
    if (!f) return nothing;
    return html`<div class="fault ${f.kind}" role="alert" data-testid="run-fault" data-kind=${f.kind}>
      <strong>${TITLES[f.kind]}</strong>
      <p data-testid="run-fault-message">${f.message}</p>
      ${f.resumeRunId
        ? html`<button data-testid="fault-resume" ?disabled=${this.busy} @click=${() => this.emit('fault-resume', { runId: f.resumeRunId })}>Resume</button>`
        : nothing}
      <button class="secondary" @click=${() => this.emit('fault-dismiss')}>Dismiss</button>
    </div>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-run-fault': WtRunFault;
  }
}
