import { LitElement, css, html } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import { theme } from '../theme.ts';

/** What to do when this browser cannot train: shown instead of the GPU-dependent sections. */
@customElement('wt-no-webgpu')
export class WtNoWebgpu extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; max-width: 46rem; margin: 2rem auto; padding: 1.5rem; border: 1px solid var(--wt-border); border-radius: var(--wt-radius); background: var(--wt-surface); }
      h2 { margin-top: 0; }
      li { margin: 0.3rem 0; }
      code { font-family: var(--wt-font-mono); }
    `,
  ];

  /** The reason reported by the engine (shown verbatim, as text). */
  @property() message = '';

  override render() {
    const insecure = !window.isSecureContext;
    return html`
      <h2 data-testid="no-webgpu-title">WebTune needs WebGPU, and this page cannot use it</h2>
      <p>WebTune trains and runs the model on your own GPU through WebGPU, so nothing leaves your machine. ${this.message}</p>
      <ul>
        ${insecure
          ? html`<li><strong>Open the page over https:// or from http://localhost.</strong> Browsers only offer WebGPU in secure contexts; this address is <code>${location.origin}</code>.</li>`
          : ''}
        <li><strong>Chrome or Edge 113+</strong> on Windows, macOS and ChromeOS have WebGPU on by default; on Linux start Chrome with <code>--enable-unsafe-webgpu --enable-features=Vulkan</code>.</li>
        <li><strong>Firefox</strong> 141+ on Windows has it; elsewhere set <code>dom.webgpu.enabled</code> in <code>about:config</code>.</li>
        <li><strong>Safari</strong> 26+ (macOS Tahoe, iOS 26) has it; earlier versions: enable WebGPU under Develop → Feature Flags.</li>
        <li>Check <code>chrome://gpu</code>: a blocklisted driver disables WebGPU; updating the GPU driver usually helps.</li>
      </ul>
      <p>You can still prepare and inspect your dataset in the Data section: it does not need the GPU.</p>
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-no-webgpu': WtNoWebgpu;
  }
}
