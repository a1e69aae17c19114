import { LitElement, css, html, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { RenderedSample } from '../../data/api.ts';
import { describeSource } from '../../data/types.ts';
import { theme } from '../theme.ts';

/**
 * One rendered sample, token by token; tokens that carry loss (label != -100) are highlighted.
 * Emits `navigate` with detail -1 / +1. Dataset text is rendered as text, never as HTML.
 */
@customElement('wt-data-sample-viewer')
export class WtDataSampleViewer extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      .bar { display: flex; gap: 0.5rem; align-items: center; margin-bottom: 0.5rem; flex-wrap: wrap; }
      .muted { color: var(--wt-muted); }
      .text { font-family: var(--wt-font-mono); font-size: 0.85rem; white-space: pre-wrap; word-break: break-word;
        border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.6rem; max-height: 28rem; overflow: auto; line-height: 1.5; }
      .t { border-right: 1px solid color-mix(in srgb, var(--wt-border) 70%, transparent); }
      .sup { background: color-mix(in srgb, var(--wt-ok) 28%, transparent); }
      .legend .sup { padding: 0 0.3rem; }
      .error { color: var(--wt-error); }
    `,
  ];
  @property({ attribute: false }) sample: RenderedSample | null = null;

  private nav(d: number) {
    this.dispatchEvent(new CustomEvent<number>('navigate', { detail: d, bubbles: true, composed: true }));
  }

  override render() {
    const s = this.sample;
    if (!s) return html`<p class="muted">No sample yet.</p>`;
    const supervised = s.labels.filter((l) => l !== -100).length;
    return html`
      <div class="bar">
        <button @click=${() => this.nav(-1)} aria-label="previous sample">◀</button>
        <span>sample ${s.index + 1} / ${s.total}</span>
        <button @click=${() => this.nav(1)} aria-label="next sample">▶</button>
        <span class="muted">${describeSource(s.source)}</span>
        ${s.error ? nothing : html`<span class="muted">${s.ids.length} tokens, ${supervised} with loss</span>
          <span class="legend"><span class="sup">highlighted</span> = loss-carrying token</span>`}
      </div>
      ${s.error
        ? html`<p class="error">Rejected: ${s.error}</p>`
        : html`<div class="text">${s.pieces.map((p, i) => html`<span class="t ${s.labels[i] !== -100 ? 'sup' : ''}" title="id ${s.ids[i]}">${p}</span>`)}</div>`}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-sample-viewer': WtDataSampleViewer;
  }
}
