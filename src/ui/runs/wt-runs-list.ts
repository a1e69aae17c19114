import { LitElement, css, html, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import { isResumable, type RunRecord } from '../store/runs.ts';
import { theme } from '../theme.ts';

export type RunAction = 'open' | 'resume' | 'chat' | 'export' | 'delete';

const STATUS: Record<RunRecord['status'], string> = {
  training: 'training',
  paused: 'paused',
  interrupted: 'interrupted (tab closed)',
  stopped: 'stopped',
  finished: 'finished',
  failed: 'failed',
};

/** The runs history: each run with its status and actions. Fires `run-action` ({action, id}). */
@customElement('wt-runs-list')
export class WtRunsList extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      table { border-collapse: collapse; width: 100%; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
      th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--wt-border); vertical-align: middle; }
      tr[aria-current='true'] { background: var(--wt-surface); }
      button { font: inherit; font-size: 0.85rem; padding: 0.15rem 0.5rem; margin-right: 0.25rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: transparent; color: var(--wt-accent); cursor: pointer; }
      button.primary { background: var(--wt-accent); color: var(--wt-accent-text); }
      button[disabled] { opacity: 0.5; cursor: not-allowed; }
      .muted { color: var(--wt-muted); }
      .status-failed, .status-interrupted { color: var(--wt-warn); }
      .status-finished { color: var(--wt-ok); }
    `,
  ];

  @property({ attribute: false }) runs: RunRecord[] = [];
  /** A run is training: other runs cannot be resumed, opened for chat or deleted meanwhile. */
  @property({ type: Boolean }) busy = false;
  @property() selected = '';

  private act(action: RunAction, id: string): void {
    this.dispatchEvent(new CustomEvent('run-action', { detail: { action, id }, bubbles: true, composed: true }));
  }

  override render() {
    if (!this.runs.length) return html`<p class="muted">No runs yet: each training run is kept here with its loss curve and checkpoints.</p>`;
    return html`<table data-testid="runs-list">
      <thead><tr><th>Run</th><th>Model</th><th>Status</th><th>Step</th><th>Loss</th><th>Updated</th><th></th></tr></thead>
      <tbody>
        ${this.runs.map((r) => {
          const last = r.curve.loss.findLast((v) => Number.isFinite(v)); // skipped steps' losses are NaN/∞
          const hasAdapter = r.checkpoints.length > 0;
          return html`<tr data-testid="run-${r.id}" aria-current=${r.id === this.selected ? 'true' : 'false'}>
            <td>${r.id}</td>
            <td>${r.modelId}</td>
            <td class="status-${r.status}" data-testid="run-status">${STATUS[r.status]}${r.error && r.status === 'failed' ? html`<br /><span class="muted" title=${r.error}>${r.error.split('\n')[0]}</span>` : nothing}</td>
            <td>${r.step}/${r.totalSteps || '?'}</td>
            <td>${last === undefined ? '—' : last.toFixed(4)}</td>
            <td>${new Date(r.updatedAt).toLocaleString()}</td>
            <td>
              <button @click=${() => this.act('open', r.id)} data-testid="run-open">Open</button>
              ${isResumable(r) ? html`<button class="primary" data-testid="run-resume" ?disabled=${this.busy} @click=${() => this.act('resume', r.id)}>Resume</button>` : nothing}
              <button data-testid="run-chat" ?disabled=${this.busy || !hasAdapter} @click=${() => this.act('chat', r.id)}>Chat</button>
              <button data-testid="run-export" ?disabled=${this.busy || !hasAdapter} @click=${() => this.act('export', r.id)}>Export</button>
              <button data-testid="run-delete" ?disabled=${this.busy && r.status === 'training'} @click=${() => this.act('delete', r.id)}>Delete</button>
            </td>
          </tr>`;
        })}
      </tbody>
    </table>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-runs-list': WtRunsList;
  }
}
