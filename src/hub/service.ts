/**
 * What the engine worker offers the UI about the Hub: download-or-open a model (one at a time, cancellable:
 * comlink cannot carry an AbortSignal, so cancel is its own call), the cache list and delete, and the
 * access token (saved and checked here; the UI only learns whether one is saved).
 */
import { HubCache, type CachedModel, type HubProgress } from './cache.ts';
import { HubClient } from './client.ts';
import type { ResumableStore } from './store.ts';
import type { TokenStore } from './token.ts';

export type { CachedModel, HubProgress };

export class HubService {
  private cachePromise: Promise<HubCache> | null = null;
  private download: AbortController | null = null;

  constructor(
    private readonly openStore: () => Promise<ResumableStore>,
    private readonly tokens: TokenStore,
    private readonly fetchFn?: typeof fetch,
  ) {}

  private cache(): Promise<HubCache> {
    this.cachePromise ??= this.openStore().then((store) => new HubCache(store, new HubClient({ token: () => this.tokens.get(), ...(this.fetchFn ? { fetch: this.fetchFn } : {}) })));
    this.cachePromise.catch(() => (this.cachePromise = null));
    return this.cachePromise;
  }

  /** The model's files, downloaded or from the cache; a second call (model or adapter) cancels the first. */
  fetchModel(repo: string, revision: string | undefined, onProgress: (p: HubProgress) => void): Promise<Map<string, Blob>> {
    return this.fetch('model', repo, revision, onProgress);
  }

  /** A PEFT adapter repo's files, downloaded or from the cache (cancellable like a model). */
  fetchAdapter(repo: string, revision: string | undefined, onProgress: (p: HubProgress) => void): Promise<Map<string, Blob>> {
    return this.fetch('adapter', repo, revision, onProgress);
  }

  private async fetch(kind: 'model' | 'adapter', repo: string, revision: string | undefined, onProgress: (p: HubProgress) => void): Promise<Map<string, Blob>> {
    this.download?.abort();
    const ac = new AbortController();
    this.download = ac;
    try {
      const cache = await this.cache();
      const opts = { ...(revision ? { revision } : {}), signal: ac.signal, onProgress };
      return await (kind === 'model' ? cache.fetchModel(repo, opts) : cache.fetchAdapter(repo, opts));
    } finally {
      if (this.download === ac) this.download = null;
    }
  }

  cancel(): void {
    this.download?.abort();
  }

  async list(): Promise<CachedModel[]> {
    return (await this.cache()).list();
  }

  async delete(repo: string, commit: string): Promise<void> {
    return (await this.cache()).delete(repo, commit);
  }

  setToken(token: string | null): Promise<void> {
    return this.tokens.set(token === null || token.trim() === '' ? null : token);
  }

  async hasToken(): Promise<boolean> {
    return (await this.tokens.get()) !== null;
  }
}
