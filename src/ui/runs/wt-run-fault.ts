import { LitElement, css, html, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { DeviceLossReport } from '../../engine/api.ts';
import { theme } from '../theme.ts';

/**
 * Why a run stopped by itself, for the banner: the GPU was lost (and set up again), it ran out of GPU
 * memory (the message carries the memory plan and what to change), or the trainer paused after
 * non-finite steps (the bad row or the learning-rate advice). `resumeRunId`: the run to offer Resume for.
 */
export interface RunFault {
  kind: 'device-lost' | 'out-of-memory' | 'paused';
  message: string;
  resumeRunId: string | null;
  /** Still waiting for the worker to set the GPU up again (device-lost only). */
  recovering?: boolean;
}

const TITLES: Record<RunFault['kind'], string> = {
  'device-lost': 'The GPU was lost',
  'out-of-memory': 'Out of GPU memory',
  paused: 'Training paused itself',
};

/** The fault of a failed training call, by the error's name (comlink keeps name and message), or null. */
export function faultOfError(e: unknown, runId: string | null, hasCheckpoint: boolean): RunFault | null {
  const name = e instanceof Error ? e.name : '';
  const message = e instanceof Error ? e.message : String(e);
  if (name === 'DeviceLostError') return { kind: 'device-lost', message: `${message}\nSetting up the GPU again…`, resumeRunId: null, recovering: true };
  if (name === 'GpuOutOfMemoryError') return { kind: 'out-of-memory', message, resumeRunId: hasCheckpoint ? runId : null };
  return null;
}

/** The device-lost fault once the worker reports what it restored (EngineApi.deviceLoss()). */
export function faultOfDeviceLoss(report: DeviceLossReport, stoppedAt: number | null): RunFault {
  const where = stoppedAt !== null && report.wasTraining ? ` Your run stopped at step ${stoppedAt}.` : '';
  return { kind: 'device-lost', message: `${report.message}${where}`, resumeRunId: report.runId && report.checkpoint ? report.runId : null };
}

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
