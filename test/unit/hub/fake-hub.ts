/**
 * A Hugging Face Hub in a fetch function, for tests that must not touch the network: the model-info API
 * (`?blobs=true`), `/resolve/<commit>/<path>` with LFS files redirected to a CDN host, Range requests,
 * gated repos, and injected faults (a connection that drops after N bytes, a corrupted file).
 */
import { createHash } from 'node:crypto';

export interface FakeRepo {
  files: Map<string, Uint8Array>;
  /** Files stored in LFS (redirected to the CDN, listed with lfs.sha256). Default: *.safetensors. */
  lfs?: (path: string) => boolean;
  commit?: string;
  gated?: boolean;
  private?: boolean;
  /** The token that opens a gated/private repo. */
  token?: string;
}

export interface Call {
  url: string;
  headers: Record<string, string>;
}

export const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const gitOid = (b: Uint8Array) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

export class FakeHub {
  readonly calls: Call[] = [];
  /** path → byte count after which the next body of that file breaks (one-shot). */
  readonly dropAfter = new Map<string, number>();
  /** path → bytes served instead of the real ones (the listing keeps the real hash). */
  readonly corrupt = new Map<string, Uint8Array>();
  /** Set to make every request fail like a lost connection. */
  offline = false;
  /** Requests answered so far per file (resolve + CDN). */
  readonly served = new Map<string, number>();

  constructor(readonly repos: Record<string, FakeRepo>) {}

  private repoOf(id: string) {
    return this.repos[id];
  }

  readonly fetch: typeof fetch = async (input, init) => {
    const url = String(input);
    const headers = Object.fromEntries(Object.entries((init?.headers ?? {}) as Record<string, string>).map(([k, v]) => [k.toLowerCase(), v]));
    this.calls.push({ url, headers });
    if (this.offline) throw new TypeError('fetch failed');
    if (init?.signal?.aborted) throw new DOMException('aborted', 'AbortError');
    const u = new URL(url);
    const auth = headers.authorization;
    const err = (status: number, code?: string) => new Response(`error ${status}`, { status, headers: code ? { 'x-error-code': code } : {} });

    if (u.hostname === 'huggingface.co') {
      let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/?]+)$/.exec(u.pathname);
      if (m) {
        const repo = this.repoOf(m[1]!);
        if (!repo || (repo.private && auth !== `Bearer ${repo.token}`)) return err(401, 'RepoNotFound');
        const rev = decodeURIComponent(m[2]!);
        const commit = repo.commit ?? 'a'.repeat(40);
        if (rev !== 'main' && rev !== commit) return err(404, 'RevisionNotFound');
        const lfs = repo.lfs ?? ((p: string) => p.endsWith('.safetensors'));
        return Response.json({
          id: m[1],
          sha: commit,
          gated: repo.gated ? 'manual' : false,
          private: !!repo.private,
          siblings: [...repo.files].map(([p, b]) => (lfs(p) ? { rfilename: p, size: b.length, blobId: gitOid(b), lfs: { sha256: sha256(b), size: b.length, pointerSize: 134 } } : { rfilename: p, size: b.length, blobId: gitOid(b) })),
        });
      }
      m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(u.pathname);
      if (m) {
        const repo = this.repoOf(m[1]!);
        if (!repo) return err(401, 'RepoNotFound');
        if ((repo.gated || repo.private) && auth !== `Bearer ${repo.token}`) return err(auth ? 403 : 401, repo.gated ? 'GatedRepo' : 'RepoNotFound');
        const path = m[3]!.split('/').map(decodeURIComponent).join('/');
        const bytes = repo.files.get(path);
        if (!bytes) return err(404, 'EntryNotFound');
        const lfs = repo.lfs ?? ((p: string) => p.endsWith('.safetensors'));
        if (lfs(path)) return new Response(null, { status: 302, headers: { location: `https://cdn-lfs.hf.co/repos/${sha256(bytes)}?path=${encodeURIComponent(path)}&repo=${encodeURIComponent(m[1]!)}&X-Signature=abc` } });
        return this.serve(m[1]!, path, headers.range);
      }
      return err(404);
    }
    if (u.hostname === 'cdn-lfs.hf.co') return this.serve(u.searchParams.get('repo')!, u.searchParams.get('path')!, headers.range);
    throw new TypeError(`fake hub: no host ${u.hostname}`);
  };

  private serve(repoId: string, path: string, range: string | undefined): Response {
    const real = this.repoOf(repoId)!.files.get(path)!;
    const bytes = this.corrupt.get(path) ?? real;
    this.served.set(path, (this.served.get(path) ?? 0) + 1);
    let start = 0;
    let status = 200;
    const h: Record<string, string> = { 'accept-ranges': 'bytes' };
    if (range) {
      const m = /^bytes=(\d+)-$/.exec(range);
      if (!m) return new Response('bad range', { status: 400 });
      start = Number(m[1]);
      if (start >= bytes.length) return new Response(null, { status: 416, headers: { 'content-range': `bytes */${bytes.length}` } });
      status = 206;
      h['content-range'] = `bytes ${start}-${bytes.length - 1}/${bytes.length}`;
    }
    const body = bytes.slice(start);
    h['content-length'] = String(body.length);
    const drop = this.dropAfter.get(path);
    if (drop !== undefined) this.dropAfter.delete(path);
    const CHUNK = 1000;
    let at = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (drop !== undefined && at >= drop) {
          c.error(new TypeError('network error: connection reset'));
          return;
        }
        if (at >= body.length) {
          c.close();
          return;
        }
        const end = Math.min(body.length, at + CHUNK, drop !== undefined ? Math.max(drop, at + 1) : Infinity);
        c.enqueue(body.slice(at, end));
        at = end;
      },
    });
    return new Response(stream, { status, headers: h });
  }
}
