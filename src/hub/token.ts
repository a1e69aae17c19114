/**
 * The Hugging Face access token, for gated and private repos. Kept only in this browser profile, for this
 * origin (IndexedDB through idb-keyval: readable by this site's pages and workers, nobody else), and sent
 * only to the Hub's own hosts (see tokenAllowed in client.ts). Never logged, never returned to the UI.
 */
import { del, get, set } from 'idb-keyval';

const KEY = 'webtune.hub.token';

export interface TokenStore {
  get(): Promise<string | null>;
  set(token: string | null): Promise<void>;
}

/** Checks the shape of a token the user pasted: Hub user access tokens start with "hf_". */
export function checkToken(token: string): string {
  const t = token.trim();
  if (!/^hf_[A-Za-z0-9]{20,}$/.test(t)) throw new Error('that does not look like a Hugging Face access token (it starts with "hf_"; create one at https://huggingface.co/settings/tokens, "Read" access is enough)');
  return t;
}

export const idbTokenStore: TokenStore = {
  async get() {
    const t = await get<string>(KEY);
    return typeof t === 'string' && t ? t : null;
  },
  async set(token) {
    if (token === null) await del(KEY);
    else await set(KEY, checkToken(token));
  },
};
