import { LitElement, css, html, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { MemoryPlan } from '../../engine/api.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { theme } from '../theme.ts';

const ALL_PARTS = [
  { key: 'weights', label: 'base weights', color: '#6b7a99' },
  { key: 'lora', label: 'LoRA + grads', color: '#3158d4' },
  { key: 'optimizer', label: 'optimizer', color: '#8e5bd6' },
  { key: 'activations', label: 'activations', color: '#1f8a4c' },
  { key: 'ce', label: 'logits chunk / loss', color: '#d08a1c' },
  { key: 'evaluation', label: 'eval loss', color: '#b5591b' },
  { key: 'workspace', label: 'scratch', color: '#9aa1ad' },
] as const;

/**
 * The predicted GPU memory of a training run (src/engine/model/memory-plan.ts, computed in the worker)
 * as one stacked bar against the budget, with what to change when it does not fit.
 */
@customElement('wt-memory-plan')
export class WtMemoryPlan extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; min-height: 4.2rem; }
      .bar { position: relative; display: flex; height: 1.1rem; border: 1px solid var(--wt-border); border-radius: 4px; overflow: hidden; background: var(--wt-surface); }
      .bar span { height: 100%; }
      .budget { position: absolute; top: -2px; bottom: -2px; width: 2px; background: var(--wt-error); }
      .legend { display: flex; flex-wrap: wrap; gap: 0.2rem 1rem; font-size: 0.82rem; margin-top: 0.3rem; font-variant-numeric: tabular-nums; }
      .legend i { display: inline-block; width: 0.7rem; height: 0.7rem; border-radius: 2px; margin-right: 0.3rem; vertical-align: -1px; }
      .head { font-size: 0.9rem; margin-bottom: 0.3rem; }
      .over { color: var(--wt-error); }
      .ok { color: var(--wt-ok); }
      ul { margin: 0.3rem 0 0; padding-left: 1.2rem; font-size: 0.88rem; }
      .muted { color: var(--wt-muted); font-size: 0.88rem; }
    `,
  ];

  @property({ attribute: false }) plan: MemoryPlan | null = null;
  /** Why there is no plan (no model / no data / an invalid setting). */
  @property() note = '';

  override render() {
    const p = this.plan;
    if (!p) return html`<div class="muted" data-testid="memory-plan-note">${this.note || 'The memory plan appears once a model is loaded and a dataset prepared.'}</div>`;
    const scale = Math.max(p.budgetBytes, p.trainingPeakBytes, 1);
    // The eval loss's part only when the run measures one.
    const PARTS = ALL_PARTS.filter((x) => x.key !== 'evaluation' || p.evaluation.bytes > 0);
    return html`
      <div class="head" data-testid="memory-plan">
        Predicted GPU memory <strong>${formatBytes(p.totalBytes)}</strong> of a ${formatBytes(p.budgetBytes)} budget —
        ${p.fits ? html`<span class="ok">fits</span>` : html`<span class="over" data-testid="memory-plan-over">does not fit</span>`}
        ${p.peakPhase === 'loading' ? html`<span class="muted">(peak while loading)</span>` : nothing}
      </div>
      <div class="bar" role="img" aria-label=${`memory plan: ${PARTS.map((x) => `${x.label} ${formatBytes(p[x.key].bytes)}`).join(', ')}; budget ${formatBytes(p.budgetBytes)}`}>
        ${PARTS.map((x) => html`<span title=${`${x.label}: ${formatBytes(p[x.key].bytes)}`} style="width:${(100 * p[x.key].bytes) / scale}%;background:${x.color}"></span>`)}
        <div class="budget" style="left:calc(${(100 * p.budgetBytes) / scale}% - 2px)" title="budget"></div>
      </div>
      <div class="legend">${PARTS.map((x) => html`<span><i style="background:${x.color}"></i>${x.label} ${formatBytes(p[x.key].bytes)}</span>`)}</div>
      ${p.fits ? nothing : html`<ul data-testid="memory-plan-advice">${p.advice.map((a) => html`<li>${a}</li>`)}</ul>`}
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-memory-plan': WtMemoryPlan;
  }
}
