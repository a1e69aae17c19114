import { LitElement, css, html, nothing } from 'lit';
import { customElement, state } from 'lit/decorators.js';
import type { GpuStatus } from '../../engine/api.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { int8MatmulSupport } from '../../engine/gpu/features.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';

/**
 * The WebGPU status badge: adapter name and what we got (features, limits), a GPU self-test, or, when
 * WebGPU is missing, why and what to do. Dispatches `gpu-status` with the GpuStatus once known.
 */
@customElement('wt-gpu-badge')
export class WtGpuBadge extends LitElement {
  static override styles = [
    theme,
    css`
      :host { position: relative; display: inline-block; font-size: 0.85rem; }
      button.badge { display: inline-flex; gap: 0.4rem; align-items: center; border: 1px solid var(--wt-border); background: var(--wt-surface); color: var(--wt-text); border-radius: 999px; padding: 0.25rem 0.7rem; cursor: pointer; font: inherit; }
      .dot { width: 0.6rem; height: 0.6rem; border-radius: 50%; background: var(--wt-muted); }
      .dot.ok { background: var(--wt-ok); }
      .dot.error { background: var(--wt-error); }
      .panel { position: absolute; right: 0; top: calc(100% + 0.4rem); z-index: 10; width: min(26rem, 90vw); background: var(--wt-bg); border: 1px solid var(--wt-border); border-radius: var(--wt-radius); padding: 0.8rem 1rem; box-shadow: 0 8px 24px rgb(0 0 0 / 0.18); }
      dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 0.8rem; margin: 0.5rem 0; }
      dt { color: var(--wt-muted); }
      dd { margin: 0; font-family: var(--wt-font-mono); word-break: break-word; }
      .yes { color: var(--wt-ok); }
      .no { color: var(--wt-muted); }
      .selftest { margin-top: 0.6rem; }
    `,
  ];

  @state() private status: GpuStatus | null = null;
  @state() private open = false;
  @state() private selfTest = '';

  override connectedCallback(): void {
    super.connectedCallback();
    void this.probe();
  }

  private async probe(): Promise<void> {
    if (!window.isSecureContext) {
      this.status = { ok: false, reason: 'no-webgpu', message: 'This page is not a secure context: WebGPU needs https:// or http://localhost.' };
    } else if (!('gpu' in navigator)) {
      this.status = { ok: false, reason: 'no-webgpu', message: 'This browser does not offer WebGPU (navigator.gpu is missing).' };
    } else {
      this.status = await getEngine().gpuStatus();
    }
    this.dispatchEvent(new CustomEvent('gpu-status', { detail: this.status, bubbles: true, composed: true }));
  }

  private async runSelfTest(): Promise<void> {
    this.selfTest = 'running…';
    const [M, N, K] = [67, 45, 131];
    const a = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 0.37));
    const b = Float32Array.from({ length: K * N }, (_, i) => Math.cos(i * 0.11));
    const { c, ms } = await getEngine().matmul({ a, b, M, N, K });
    let num = 0;
    let den = 0;
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[m * K + k]! * b[k * N + n]!;
        num += (c[m * N + n]! - s) ** 2;
        den += s * s;
      }
    const err = Math.sqrt(num / den);
    this.selfTest = `${err < 1e-4 ? 'passed' : 'FAILED'}: matmul ${M}×${K}·${K}×${N}, relative error ${err.toExponential(2)}, ${ms.toFixed(1)} ms`;
  }

  private async simulateLoss(): Promise<void> {
    if (!confirm('Simulate a GPU loss? The GPU device is destroyed as a driver reset would; WebTune sets up a new one and reloads the model. A training run continues from its last checkpoint (steps after it are done again).')) return;
    await getEngine().simulateDeviceLoss();
  }

  private yesNo(v: boolean) {
    return v ? html`<span class="yes">yes</span>` : html`<span class="no">no</span>`;
  }

  override render() {
    const s = this.status;
    const label = !s ? 'Checking WebGPU…' : s.ok ? s.gpu.adapter.description || `${s.gpu.adapter.vendor} ${s.gpu.adapter.architecture}`.trim() || 'WebGPU ready' : 'WebGPU unavailable';
    return html`
      <button class="badge" data-testid="gpu-badge" aria-expanded=${this.open} @click=${() => (this.open = !this.open)}>
        <span class="dot ${s ? (s.ok ? 'ok' : 'error') : ''}"></span>
        <span data-testid="gpu-adapter">${label}</span>
      </button>
      ${this.open && s ? html`<div class="panel" role="dialog" aria-label="WebGPU details">${s.ok ? this.renderOk(s) : html`<p>${s.message}</p>`}</div>` : nothing}
    `;
  }

  private renderOk(s: Extract<GpuStatus, { ok: true }>) {
    const { adapter, features, limits } = s.gpu;
    const tensorCores = int8MatmulSupport(features);
    const matrices = features.subgroupMatrixConfigs.map((c) => `${c.componentType}→${c.resultComponentType} ${c.M}×${c.N}×${c.K}`).join(', ');
    return html`
      <dl>
        <dt>Adapter</dt><dd>${[adapter.vendor, adapter.architecture, adapter.device].filter(Boolean).join(' / ') || 'unknown'}</dd>
        <dt>shader-f16</dt><dd>${this.yesNo(features.shaderF16)}</dd>
        <dt>Subgroups</dt><dd>${this.yesNo(features.subgroups)}${features.subgroups && features.subgroupMaxSize ? ` (${features.subgroupMinSize}–${features.subgroupMaxSize})` : ''}</dd>
        <dt>Subgroup matrices</dt><dd>${features.subgroupMatrix ? matrices || 'yes' : html`<span class="no">no</span>`}</dd>
        <dt>Tensor cores</dt><dd data-testid="gpu-tensor-cores">${tensorCores.ok ? html`available: int8 matmuls for the 4-bit base (Train › matmul precision)` : html`<span class="no">off</span>: ${tensorCores.why}`}</dd>
        <dt>Timestamps</dt><dd>${this.yesNo(features.timestampQuery)}</dd>
        <dt>Max buffer</dt><dd>${formatBytes(limits.maxBufferSize)}</dd>
        <dt>Max binding</dt><dd>${formatBytes(limits.maxStorageBufferBindingSize)}</dd>
        <dt>Workgroup memory</dt><dd>${formatBytes(limits.maxComputeWorkgroupStorageSize)}</dd>
        <dt>Invocations</dt><dd>${limits.maxComputeInvocationsPerWorkgroup}</dd>
      </dl>
      <button @click=${() => void this.runSelfTest()} data-testid="gpu-selftest">Run GPU self-test</button>
      <div class="selftest" data-testid="gpu-selftest-result">${this.selfTest}</div>
      <div class="selftest"><button data-testid="gpu-simulate-loss" title="Destroys the GPU device as a driver reset would: WebTune sets up a new one, loads the model again and continues a training run from its last checkpoint"
        @click=${() => void this.simulateLoss()}>Simulate a GPU loss</button></div>
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-gpu-badge': WtGpuBadge;
  }
}
