/**
 * The Hugging Face Hub over HTTP: a model repository's file listing at one commit, and file requests
 * (`/resolve/<commit>/<path>`, optionally from a byte offset).
 *
 * The access token goes only to the Hub itself (HUB_TOKEN_HOSTS), never to another host, not even one
 * the Hub redirects to: LFS and Xet files are redirected to a CDN with a pre-signed URL, and
 * huggingface_hub drops the Authorization header whenever the redirect leaves the Hub's host
 * (file_download.py: "If url domain is different => we are downloading from a CDN => url is signed =>
 * don't send auth"). We follow redirects ourselves (`redirect: 'manual'`) and add the header per hop.
 * Browsers hide manual redirects (an 'opaqueredirect' response); there the request is repeated with
 * `redirect: 'follow'`, and the Fetch standard removes Authorization on a cross-origin redirect.
 */

export const HUB_ENDPOINT = 'https://huggingface.co';
/** Hosts the token may be sent to. Not their sub-domains: cdn-lfs.huggingface.co is a CDN. */
export const HUB_TOKEN_HOSTS: readonly string[] = ['huggingface.co', 'hf.co'];

export type HubErrorCode = 'not-found' | 'revision-not-found' | 'gated' | 'unauthorized' | 'rate-limited' | 'network' | 'integrity' | 'quota' | 'unsupported' | 'no-weights' | 'offline' | 'corrupt-cache' | 'aborted' | 'http';

export class HubError extends Error {
  override name = 'HubError';
  constructor(
    readonly code: HubErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface HubFileEntry {
  path: string;
  size: number;
  /** LFS/Xet files: the sha256 of the content, as the Hub lists it (`lfs.sha256` / `lfs.oid`). */
  sha256: string | null;
  /** Plain git files: the git blob id (sha1 of "blob <size>\0" + content). */
  gitOid: string | null;
}

export interface HubRepoInfo {
  repo: string;
  revision: string;
  /** The commit the revision points to now: files are fetched from it, so they all belong together. */
  commit: string;
  /** false, 'auto' or 'manual' (a licence to accept on the Hub before downloading). */
  gated: false | string;
  isPrivate: boolean;
  files: HubFileEntry[];
}

export interface HubClientOptions {
  fetch?: typeof fetch;
  endpoint?: string;
  /** The saved access token (asked for each request, so a token saved meanwhile is used). */
  token?: () => Promise<string | null>;
}

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Checks a repo id ("owner/name"); returns it trimmed. */
export function checkRepoId(repo: string): string {
  const r = repo.trim().replace(/^https?:\/\/(www\.)?(huggingface\.co|hf\.co)\//, '').replace(/\/+$/, '');
  if (!REPO_ID.test(r) || r.includes('..') || r.length > 96) throw new HubError('not-found', `'${repo}' is not a Hub model id: expected owner/name, e.g. Qwen/Qwen2.5-1.5B-Instruct`);
  return r;
}

const encodePath = (path: string) => path.split('/').map(encodeURIComponent).join('/');

export function tokenAllowed(url: string): boolean {
  const u = new URL(url);
  return u.protocol === 'https:' && HUB_TOKEN_HOSTS.includes(u.hostname);
}

export class HubClient {
  readonly endpoint: string;
  private readonly fetchFn: typeof fetch;
  private readonly token: () => Promise<string | null>;

  constructor(opts: HubClientOptions = {}) {
    this.endpoint = (opts.endpoint ?? HUB_ENDPOINT).replace(/\/+$/, '');
    this.fetchFn = opts.fetch ?? ((...a) => fetch(...a));
    this.token = opts.token ?? (async () => null);
  }

  resolveUrl(repo: string, commit: string, path: string): string {
    return `${this.endpoint}/${repo}/resolve/${encodeURIComponent(commit)}/${encodePath(path)}`;
  }

  /** The repo's files at `revision` with sizes and hashes (one request: `?blobs=true`). */
  async repoInfo(repo: string, revision: string, signal?: AbortSignal): Promise<HubRepoInfo> {
    const url = `${this.endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
    const res = await this.request(url, {}, signal);
    if (!res.ok) throw await this.httpError(res, { repo, revision });
    const json = (await res.json()) as {
      sha?: unknown;
      gated?: unknown;
      private?: unknown;
      siblings?: Array<{ rfilename?: unknown; size?: unknown; blobId?: unknown; lfs?: { sha256?: unknown; oid?: unknown; size?: unknown } | null }>;
    };
    if (typeof json.sha !== 'string' || !Array.isArray(json.siblings)) throw new HubError('http', `${url}: the Hub's answer has no commit or file list`);
    const files: HubFileEntry[] = [];
    for (const s of json.siblings) {
      if (typeof s.rfilename !== 'string') continue;
      const lfsSha = s.lfs ? (typeof s.lfs.sha256 === 'string' ? s.lfs.sha256 : typeof s.lfs.oid === 'string' ? s.lfs.oid : null) : null;
      const size = s.lfs && typeof s.lfs.size === 'number' ? s.lfs.size : s.size;
      if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new HubError('http', `${repo}: the Hub lists no size for ${s.rfilename}`);
      files.push({ path: s.rfilename, size, sha256: lfsSha?.toLowerCase() ?? null, gitOid: !s.lfs && typeof s.blobId === 'string' ? s.blobId : null });
    }
    return { repo, revision, commit: json.sha, gated: typeof json.gated === 'string' ? json.gated : false, isPrivate: json.private === true, files };
  }

  /** GET of a repo file from `offset` (a Range request when offset > 0); 416 is returned, not thrown. */
  async file(repo: string, commit: string, path: string, offset: number, signal?: AbortSignal): Promise<Response> {
    const url = this.resolveUrl(repo, commit, path);
    const res = await this.request(url, offset > 0 ? { Range: `bytes=${offset}-` } : {}, signal);
    if (!res.ok && res.status !== 416) throw await this.httpError(res, { repo, revision: commit, path });
    return res;
  }

  /** One GET following redirects, with the token only on hops to the Hub. */
  private async request(url: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    const token = await this.token();
    let current = url;
    for (let hop = 0; hop < 10; hop++) {
      const h: Record<string, string> = { ...headers };
      if (token && tokenAllowed(current)) h.Authorization = `Bearer ${token}`;
      let res: Response;
      try {
        res = await this.fetchFn(current, { headers: h, redirect: 'manual', signal });
      } catch (e) {
        throw this.networkError(e, current, signal);
      }
      if (res.type === 'opaqueredirect') {
        // A browser: it follows, and per the Fetch standard drops Authorization when the origin changes.
        try {
          return await this.fetchFn(current, { headers: h, redirect: 'follow', signal });
        } catch (e) {
          throw this.networkError(e, current, signal);
        }
      }
      if (res.status >= 300 && res.status < 400 && res.headers.get('location')) {
        await res.body?.cancel().catch(() => {});
        current = new URL(res.headers.get('location')!, current).toString();
        continue;
      }
      return res;
    }
    throw new HubError('http', `${url}: too many redirects`);
  }

  private networkError(e: unknown, url: string, signal?: AbortSignal): HubError {
    if (signal?.aborted || (e as { name?: string })?.name === 'AbortError') return new HubError('aborted', 'the download was cancelled; what arrived is kept and the next download resumes from there');
    return new HubError('network', `cannot reach ${new URL(url).host} (${e instanceof Error ? e.message : String(e)})`);
  }

  private async httpError(res: Response, what: { repo: string; revision: string; path?: string }): Promise<HubError> {
    const code = res.headers.get('x-error-code') ?? '';
    let detail = res.headers.get('x-error-message') ?? '';
    if (!detail) detail = await res.text().then((t) => t.slice(0, 300).trim()).catch(() => '');
    await res.body?.cancel().catch(() => {});
    const hasToken = !!(await this.token());
    const page = `${this.endpoint}/${what.repo}`;
    const file = what.path ? `${what.path} of ${what.repo}` : what.repo;
    if (code === 'GatedRepo' || res.status === 403) {
      return new HubError(
        'gated',
        `${what.repo} is gated: open ${page}, sign in and accept its licence, then save a Hugging Face access token (read access) here` +
          (hasToken ? ' (the saved token has no access to it yet)' : '') +
          '.',
      );
    }
    if (code === 'RevisionNotFound') return new HubError('revision-not-found', `revision '${what.revision}' not found in ${what.repo} (a branch, tag or commit of the repo)`);
    if (code === 'EntryNotFound') return new HubError('not-found', `${file}: no such file at ${what.revision}`);
    if (code === 'RepoNotFound' || res.status === 404) {
      if (res.status === 404 && !code && what.path) return new HubError('not-found', `${file}: not found (HTTP 404)`);
      return new HubError('not-found', `model ${what.repo} not found on the Hub${hasToken ? '' : ' (if it is private, save an access token that can read it)'}`);
    }
    if (res.status === 401) {
      return new HubError('unauthorized', hasToken ? `the saved Hugging Face token was refused for ${what.repo} (expired or mistyped?): save a new one` : `${what.repo} needs a Hugging Face access token (private or gated): save one with read access`);
    }
    if (res.status === 429) return new HubError('rate-limited', `the Hub is rate-limiting requests for ${file}; try again in a minute`);
    return new HubError('http', `${file}: HTTP ${res.status} ${res.statusText}${detail ? ` (${detail})` : ''}`);
  }
}
