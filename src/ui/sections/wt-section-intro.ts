import { LitElement, css, html } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import { theme } from '../theme.ts';

/** The heading and one-paragraph explanation at the top of a section. */
@customElement('wt-section-intro')
export class WtSectionIntro extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; margin-bottom: 1rem; }
      h2 { margin: 0 0 0.3rem; font-size: 1.3rem; }
      p { margin: 0; color: var(--wt-muted); max-width: 60rem; }
    `,
  ];
  @property() heading = '';
  @property() text = '';
  override render() {
    return html`<h2>${this.heading}</h2><p>${this.text}</p>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-section-intro': WtSectionIntro;
  }
}
