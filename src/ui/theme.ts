import { css, unsafeCSS } from 'lit';
import type { ThemeChoice } from './store/settings.ts';

const LIGHT = `
  --wt-bg: #ffffff;
  --wt-surface: #f5f6f8;
  --wt-border: #d9dce1;
  --wt-text: #1b1e23;
  --wt-muted: #5b6270;
  --wt-accent: #3158d4;
  --wt-accent-text: #ffffff;
  --wt-ok: #1f8a4c;
  --wt-warn: #a86400;
  --wt-error: #c0392b;`;
const DARK = `
  --wt-bg: #15171b;
  --wt-surface: #1e2126;
  --wt-border: #343841;
  --wt-text: #e8eaee;
  --wt-muted: #9aa1ad;
  --wt-accent: #7c9cff;
  --wt-accent-text: #0d1020;
  --wt-ok: #4cc38a;
  --wt-warn: #e0a040;
  --wt-error: #ff7b6e;`;

/**
 * The design tokens, set once on the document root: custom properties inherit into every shadow root, so
 * one attribute on <html> (data-theme, absent = follow the system) recolours the whole page.
 */
const tokens = css`
  :root {
    ${unsafeCSS(LIGHT)}
    --wt-radius: 8px;
    --wt-font-mono: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace;
    color-scheme: light;
  }
  @media (prefers-color-scheme: dark) {
    :root:not([data-theme='light']) {
      ${unsafeCSS(DARK)}
      color-scheme: dark;
    }
  }
  :root[data-theme='dark'] {
    ${unsafeCSS(DARK)}
    color-scheme: dark;
  }
`;

let installed = false;
/** Adds the token sheet to the document (once; elements importing `theme` do it on load). */
export function installThemeTokens(doc: Document = document): void {
  if (installed || !doc.adoptedStyleSheets || !tokens.styleSheet) return;
  installed = true;
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, tokens.styleSheet];
}

/** Applies the user's choice to the page ('system' follows prefers-color-scheme). */
export function applyTheme(choice: ThemeChoice, doc: Document = document): void {
  if (choice === 'system') delete doc.documentElement.dataset.theme;
  else doc.documentElement.dataset.theme = choice;
}

/** A token's current value as seen from `el` (for canvas drawing, which CSS variables do not reach). */
export function themeColor(el: Element, token: string): string {
  return getComputedStyle(el).getPropertyValue(token).trim();
}

/** Calls `cb` when the page's colours change (the user's choice or the system's scheme); returns the unsubscribe. */
export function watchTheme(cb: () => void): () => void {
  const mo = new MutationObserver(cb);
  mo.observe(document.documentElement, { attributes: true, attributeFilter: ['data-theme'] });
  const mq = matchMedia('(prefers-color-scheme: dark)');
  mq.addEventListener('change', cb);
  return () => {
    mo.disconnect();
    mq.removeEventListener('change', cb);
  };
}

if (typeof document !== 'undefined') installThemeTokens();

/** What every element's styles start with: the text colour of the current theme (tokens come from the root). */
export const theme = css`
  :host {
    color: var(--wt-text);
  }
`;
