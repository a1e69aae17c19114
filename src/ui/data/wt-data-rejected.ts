import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { LengthReport } from '../../data/pack.ts';
import { describeSource, type RejectedRow } from '../../data/types.ts';
import { theme } from '../theme.ts';

const PAGE = 100;

/** The rejected-rows report (file, line/row, stage, reason) and the per-sample truncation report. */
@customElement('wt-data-rejected')
export class WtDataRejected extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      table { border-collapse: collapse; width: 100%; font-size: 0.85rem; }
      th, td { text-align: left; padding: 0.2rem 0.5rem; border-bottom: 1px solid var(--wt-border); vertical-align: top; }
      td.reason { white-space: pre-wrap; word-break: break-word; }
      .ok { color: var(--wt-ok); }
      h3 { font-size: 1rem; margin: 0.8rem 0 0.3rem; }
    `,
  ];
  @property({ attribute: false }) rejected: RejectedRow[] = [];
  @property({ attribute: false }) lengthReports: LengthReport[] = [];
  @state() private shown = PAGE;
  @state() private shownLength = PAGE;

  private download() {
    const blob = new Blob([this.rejected.map((r) => JSON.stringify(r)).join('\n') + '\n'], { type: 'application/jsonl' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'rejected-rows.jsonl';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  override render() {
    const r = this.rejected;
    return html`
      <h3>Rejected rows (${r.length})</h3>
      ${r.length === 0 ? html`<p class="ok">No rows rejected.</p>` : html`
        <table>
          <thead><tr><th>Where</th><th>Stage</th><th>Reason</th></tr></thead>
          <tbody>${r.slice(0, this.shown).map((x) => html`<tr><td>${describeSource(x)}</td><td>${x.stage}</td><td class="reason">${x.reason}</td></tr>`)}</tbody>
        </table>
        ${r.length > this.shown ? html`<button @click=${() => (this.shown += PAGE)}>show ${Math.min(PAGE, r.length - this.shown)} more</button>` : nothing}
        <button @click=${() => this.download()}>download as JSONL</button>`}
      ${this.lengthReports.length ? html`
        <h3>Length changes (${this.lengthReports.length})</h3>
        <table>
          <thead><tr><th>Where</th><th>Tokens</th><th>Action</th></tr></thead>
          <tbody>${this.lengthReports.slice(0, this.shownLength).map((x) => html`<tr><td>${describeSource(x.source)}</td><td>${x.from}</td>
            <td>${x.action === 'truncated' ? `truncated to ${x.to}` : `split into ${x.to} chunks`}</td></tr>`)}</tbody>
        </table>
        ${this.lengthReports.length > this.shownLength ? html`<button @click=${() => (this.shownLength += PAGE)}>show more</button>` : nothing}` : nothing}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-rejected': WtDataRejected;
  }
}
