import { LitElement, css, html, nothing } from 'lit';
import { customElement, state } from 'lit/decorators.js';
import { validateIdentityOptions, type IdentityLanguage, type IdentityOptions } from '../../data/identity.ts';
import { theme } from '../theme.ts';

/** The personal-assistant identity dataset form. Emits `identity-generate` with IdentityOptions. */
@customElement('wt-data-identity')
export class WtDataIdentity extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      label { display: grid; grid-template-columns: 9rem 1fr; gap: 0.5rem; margin: 0.3rem 0; align-items: start; }
      textarea { min-height: 3rem; }
      .errors { color: var(--wt-error); }
      .langs { display: flex; gap: 1rem; }
      .langs label { display: inline-flex; gap: 0.3rem; margin: 0; }
    `,
  ];
  @state() private o: IdentityOptions = { assistantName: '', owner: '', description: '', languages: ['en', 'zh'], repeat: 100, seed: 0 };
  @state() private errors: string[] = [];

  private set<K extends keyof IdentityOptions>(k: K, v: IdentityOptions[K]) {
    this.o = { ...this.o, [k]: v };
  }

  private toggle(lang: IdentityLanguage, on: boolean) {
    const ls = this.o.languages.filter((l) => l !== lang);
    this.set('languages', on ? [...ls, lang] : ls);
  }

  private submit(e: Event) {
    e.preventDefault();
    this.errors = validateIdentityOptions(this.o);
    if (this.errors.length) return;
    this.dispatchEvent(new CustomEvent<IdentityOptions>('identity-generate', { detail: { ...this.o }, bubbles: true, composed: true }));
  }

  override render() {
    return html`<form @submit=${(e: Event) => this.submit(e)}>
      <label>Assistant name <input .value=${this.o.assistantName} placeholder="Xiaoming's assistant"
        @input=${(e: Event) => this.set('assistantName', (e.target as HTMLInputElement).value)} /></label>
      <label>Made by <input .value=${this.o.owner ?? ''} placeholder="(optional)"
        @input=${(e: Event) => this.set('owner', (e.target as HTMLInputElement).value)} /></label>
      <label>Self-description <textarea .value=${this.o.description} placeholder="I am built on a 1.8B model and help with..."
        @input=${(e: Event) => this.set('description', (e.target as HTMLTextAreaElement).value)}></textarea></label>
      <label>Languages <span class="langs">
        <label><input type="checkbox" .checked=${this.o.languages.includes('en')} @change=${(e: Event) => this.toggle('en', (e.target as HTMLInputElement).checked)} />English</label>
        <label><input type="checkbox" .checked=${this.o.languages.includes('zh')} @change=${(e: Event) => this.toggle('zh', (e.target as HTMLInputElement).checked)} />中文</label>
      </span></label>
      <label>Repeat <input type="number" min="1" max="100000" .value=${String(this.o.repeat)}
        @input=${(e: Event) => this.set('repeat', Number((e.target as HTMLInputElement).value))} /></label>
      ${this.errors.length ? html`<ul class="errors">${this.errors.map((x) => html`<li>${x}</li>`)}</ul>` : nothing}
      <button type="submit">Add identity dataset</button>
    </form>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-data-identity': WtDataIdentity;
  }
}
