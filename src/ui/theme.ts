import { css } from 'lit';

/** Design tokens shared by every element (light and dark follow the system setting). */
export const theme = css`
  :host {
    --wt-bg: #ffffff;
    --wt-surface: #f5f6f8;
    --wt-border: #d9dce1;
    --wt-text: #1b1e23;
    --wt-muted: #5b6270;
    --wt-accent: #3158d4;
    --wt-accent-text: #ffffff;
    --wt-ok: #1f8a4c;
    --wt-warn: #a86400;
    --wt-error: #c0392b;
    --wt-radius: 8px;
    --wt-font-mono: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace;
    color: var(--wt-text);
  }
  @media (prefers-color-scheme: dark) {
    :host {
      --wt-bg: #15171b;
      --wt-surface: #1e2126;
      --wt-border: #343841;
      --wt-text: #e8eaee;
      --wt-muted: #9aa1ad;
      --wt-accent: #7c9cff;
      --wt-accent-text: #0d1020;
      --wt-ok: #4cc38a;
      --wt-warn: #e0a040;
      --wt-error: #ff7b6e;
    }
  }
`;
