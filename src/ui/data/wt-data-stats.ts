import { LitElement, css, html, svg } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { DatasetStats } from '../../data/pipeline.ts';
import { theme } from '../theme.ts';

/** Dataset statistics and the sample-length histogram. */
@customElement('wt-data-stats')
export class WtDataStats extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0 0 0.8rem; }
      dt { color: var(--wt-muted); }
      dd { margin: 0; font-variant-numeric: tabular-nums; }
      svg { width: 100%; max-width: 40rem; height: 9rem; display: block; }
      rect { fill: var(--wt-accent); }
      text { fill: var(--wt-muted); font-size: 9px; }
      .warn { color: var(--wt-warn); }
    `,
  ];
  @property({ attribute: false }) stats: DatasetStats | null = null;

  private histogram(s: DatasetStats) {
    const { counts, edges } = s.lengthHistogram;
    const w = 400;
    const h = 110;
    const peak = Math.max(1, ...counts);
    const bw = w / Math.max(1, counts.length);
    return svg`<svg viewBox="0 0 ${w} ${h + 14}" role="img" aria-label="histogram of sample lengths in tokens">
      ${counts.map((c, i) => {
        const bh = (h * c) / peak;
        return svg`<rect x=${i * bw + 1} y=${h - bh} width=${Math.max(1, bw - 2)} height=${bh}><title>${edges[i]}–${(edges[i + 1] ?? 0) - 1} tokens: ${c}</title></rect>`;
      })}
      <text x="0" y=${h + 11}>0</text>
      <text x=${w} y=${h + 11} text-anchor="end">${edges[edges.length - 1]} tokens</text>
    </svg>`;
  }

  override render() {
    const s = this.stats;
    if (!s) return html``;
    const pct = s.tokens ? ((100 * s.supervisedTokens) / s.tokens).toFixed(1) : '0';
    return html`
      <dl>
        <dt>Samples</dt><dd>${s.samples} mapped; ${s.keptSamples} documents in rows (${s.trainSamples} train, ${s.evalSamples} eval)</dd>
        <dt>Rows</dt><dd>${s.rows} train, ${s.evalRows} eval</dd>
        <dt>Tokens</dt><dd>${s.tokens.toLocaleString()} (+${s.paddingTokens.toLocaleString()} padding)</dd>
        <dt>Supervised tokens</dt><dd>${s.supervisedTokens.toLocaleString()} (${pct}%)</dd>
        <dt>Sample length</dt><dd>min ${s.minLength}, mean ${s.meanLength.toFixed(1)}, max ${s.maxLength}</dd>
        <dt>Truncated</dt><dd class=${s.truncated ? 'warn' : ''}>${s.truncated}</dd>
        <dt>Split (text)</dt><dd>${s.split}</dd>
        <dt>Dropped</dt><dd class=${s.dropped ? 'warn' : ''}>${s.dropped}</dd>
        <dt>Rejected rows</dt><dd class=${s.rejected ? 'warn' : ''}>${s.rejected}</dd>
      </dl>
      ${this.histogram(s)}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-stats': WtDataStats;
  }
}
