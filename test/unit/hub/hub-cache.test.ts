import { describe, expect, it } from 'vitest';
import { HubCache, type HubProgress } from '../../../src/hub/cache.ts';
import { HubClient, HubError, checkRepoId, tokenAllowed } from '../../../src/hub/client.ts';
import { MemoryResumableStore } from '../../../src/hub/store.ts';
import { demoModelFiles, DEMO_CONFIG } from '../../../src/engine/demo/demo-model.ts';
import { parseModelConfig } from '../../../src/engine/model/config.ts';
import { CheckpointIndex } from '../../../src/engine/model/weights.ts';
import { blobSource } from '../../../src/formats/bytes.ts';
import { FakeHub, sha256, type FakeRepo } from './fake-hub.ts';

const enc = new TextEncoder();
const TOKEN = 'hf_abcdefghijklmnopqrstuvwxyz0123';

function demoRepo(extra: Partial<FakeRepo> = {}): FakeRepo {
  const files = new Map<string, Uint8Array>();
  for (const [k, v] of demoModelFiles(1)) files.set(k, typeof v === 'string' ? enc.encode(v) : v);
  // Files a checkpoint does not need: never downloaded.
  files.set('README.md', enc.encode('# demo\n'));
  files.set('pytorch_model.bin', new Uint8Array(5000).fill(7));
  files.set('onnx/model.onnx', new Uint8Array(3000).fill(9));
  return { files, ...extra };
}

function setup(repos: Record<string, FakeRepo>, opts: { token?: string | null; quota?: number; partBytes?: number; retries?: number } = {}) {
  const hub = new FakeHub(repos);
  const store = new MemoryResumableStore(opts.quota ?? null);
  const client = new HubClient({ fetch: hub.fetch, token: async () => opts.token ?? null });
  const cache = new HubCache(store, client, { partBytes: opts.partBytes ?? 4096, retries: opts.retries ?? 0, retryDelayMs: 0, progressIntervalMs: 0 });
  return { hub, store, client, cache };
}

const bytesOf = async (b: Blob) => new Uint8Array(await b.arrayBuffer());

async function rejection(p: Promise<unknown>): Promise<HubError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HubError);
    return e as HubError;
  }
  throw new Error('expected a rejection');
}

describe('Hub downloads', () => {
  it('fetches only what a checkpoint needs, verified, and the files load as a checkpoint', async () => {
    const repo = demoRepo();
    const { hub, cache } = setup({ 'webtune/demo': repo });
    const events: HubProgress[] = [];
    const files = await cache.fetchModel('webtune/demo', { onProgress: (p) => events.push(p) });
    expect([...files.keys()].sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    for (const [k, b] of files) expect(sha256(await bytesOf(b))).toBe(sha256(repo.files.get(k)!));
    for (const never of ['README.md', 'pytorch_model.bin', 'onnx/model.onnx']) expect(hub.calls.some((c) => c.url.includes(encodeURIComponent(never).replace(/%2F/g, '/')))).toBe(false);
    // The safetensors came from the CDN after the Hub's redirect.
    expect(hub.calls.some((c) => c.url.startsWith('https://cdn-lfs.hf.co/'))).toBe(true);
    // The blobs are a loadable checkpoint (the same path the engine takes).
    const spec = parseModelConfig(await (files.get('config.json')!).text());
    const index = await CheckpointIndex.open(spec, async (n) => blobSource(files.get(n)!, n), [...files.keys()]);
    expect(index).toBeTruthy();
    // Progress: downloading events only grow, end at the total, then 'done'.
    const dl = events.filter((e): e is Extract<HubProgress, { status: 'downloading' }> => e.status === 'downloading' && e.total > 1000);
    for (let i = 1; i < dl.length; i++) expect(dl[i]!.loaded).toBeGreaterThanOrEqual(dl[i - 1]!.loaded);
    expect(dl.at(-1)!.loaded).toBe(dl.at(-1)!.total);
    expect(events.at(-1)).toMatchObject({ status: 'done', repo: 'webtune/demo' });
    const list = await cache.list();
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ repo: 'webtune/demo', complete: true, revisions: ['main'], files: 5 });
    expect(list[0]!.bytes).toBe([...files.values()].reduce((a, b) => a + b.size, 0));
    expect(list[0]!.lastUsed).not.toBeNull();
  });

  it('the next visit uses the cache: no file requests online, and it opens offline', async () => {
    const { hub, cache } = setup({ 'webtune/demo': demoRepo() });
    await cache.fetchModel('webtune/demo');
    const before = hub.calls.length;
    const events: HubProgress[] = [];
    await cache.fetchModel('webtune/demo', { onProgress: (p) => events.push(p) });
    expect(hub.calls.slice(before).map((c) => new URL(c.url).pathname)).toEqual(['/api/models/webtune/demo/revision/main']);
    expect(events.at(-1)?.status).toBe('cached');
    hub.offline = true;
    const files = await cache.fetchModel('webtune/demo');
    expect(files.get('model.safetensors')!.size).toBeGreaterThan(100_000);
    await expect(cache.fetchModel('webtune/other')).rejects.toThrow(/not in this browser's cache/);
  });

  it('resumes with an HTTP Range request after the connection drops mid-file', async () => {
    const repo = demoRepo();
    const { hub, cache } = setup({ 'webtune/demo': repo }, { retries: 2 });
    hub.dropAfter.set('model.safetensors', 10_500);
    const events: HubProgress[] = [];
    const files = await cache.fetchModel('webtune/demo', { onProgress: (p) => events.push(p) });
    expect(sha256(await bytesOf(files.get('model.safetensors')!))).toBe(sha256(repo.files.get('model.safetensors')!));
    const ranged = hub.calls.filter((c) => c.headers.range);
    expect(ranged.map((c) => c.headers.range)).toEqual(['bytes=10500-', 'bytes=10500-']); // resolve, then the CDN hop
    expect(events.some((e) => e.status === 'retrying')).toBe(true);
  });

  it('after a reload (a new cache on the same storage) the partial download resumes where it stopped', async () => {
    const repo = demoRepo();
    const { hub, store, client, cache } = setup({ 'webtune/demo': repo });
    hub.dropAfter.set('model.safetensors', 9_000);
    const e = await rejection(cache.fetchModel('webtune/demo'));
    expect(e.code).toBe('network');
    expect(e.message).toMatch(/model\.safetensors.*kept.*resume/);
    // Partial: listed, not complete, and it cannot be opened.
    const [partial] = await cache.list();
    expect(partial).toMatchObject({ repo: 'webtune/demo', complete: false });
    expect(partial!.totalBytes).toBeGreaterThan(partial!.bytes);
    await expect(cache.open('webtune/demo', partial!.commit)).rejects.toThrow(/not completely downloaded/);

    const reloaded = new HubCache(store, client, { partBytes: 4096, retries: 0 });
    const n = hub.calls.length;
    const files = await reloaded.fetchModel('webtune/demo');
    expect(sha256(await bytesOf(files.get('model.safetensors')!))).toBe(sha256(repo.files.get('model.safetensors')!));
    const fileCalls = hub.calls.slice(n).filter((c) => c.url.includes('model.safetensors'));
    expect(fileCalls.map((c) => c.headers.range)).toEqual(['bytes=9000-', 'bytes=9000-']);
    // Files completed before the drop were not fetched again.
    expect(hub.calls.slice(n).some((c) => c.url.endsWith('/config.json'))).toBe(false);
    expect((await reloaded.list())[0]!.complete).toBe(true);
  });

  it('cancel (AbortSignal) stops the download, keeps the bytes, and a later download resumes', async () => {
    const repo = demoRepo();
    const { hub, cache } = setup({ 'webtune/demo': repo });
    const ac = new AbortController();
    const e = await rejection(
      cache.fetchModel('webtune/demo', {
        signal: ac.signal,
        onProgress: (p) => {
          if (p.status === 'downloading' && p.file === 'model.safetensors' && p.fileLoaded > 20_000) ac.abort();
        },
      }),
    );
    expect(e.code).toBe('aborted');
    const [partial] = await cache.list();
    expect(partial!.complete).toBe(false);
    const n = hub.calls.length;
    const files = await cache.fetchModel('webtune/demo');
    expect(sha256(await bytesOf(files.get('model.safetensors')!))).toBe(sha256(repo.files.get('model.safetensors')!));
    const first = hub.calls.slice(n).find((c) => c.url.includes('model.safetensors'))!;
    expect(Number(/bytes=(\d+)-/.exec(first.headers.range ?? '')?.[1])).toBeGreaterThan(20_000);
  });

  it('a file whose sha256 does not match the Hub is rejected, deleted, and never listed as complete', async () => {
    const repo = demoRepo();
    const { hub, cache, store } = setup({ 'webtune/demo': repo });
    const bad = repo.files.get('model.safetensors')!.slice();
    bad[5000] = bad[5000]! ^ 0xff;
    hub.corrupt.set('model.safetensors', bad);
    const e = await rejection(cache.fetchModel('webtune/demo'));
    expect(e.code).toBe('integrity');
    expect(e.message).toMatch(/model\.safetensors failed verification \(sha256 [0-9a-f]{64}, the Hub lists [0-9a-f]{64}\)/);
    expect((await store.list('hub/')).filter((b) => b.name.includes('model.safetensors'))).toEqual([]);
    expect((await cache.list()).every((m) => !m.complete)).toBe(true);
    hub.corrupt.clear();
    const files = await cache.fetchModel('webtune/demo');
    expect(sha256(await bytesOf(files.get('model.safetensors')!))).toBe(sha256(repo.files.get('model.safetensors')!));
  });

  it('a small (non-LFS) file is checked against its git blob id', async () => {
    const repo = demoRepo();
    const { hub, cache } = setup({ 'webtune/demo': repo });
    const bad = repo.files.get('tokenizer.json')!.slice();
    bad[10] = bad[10]! ^ 1;
    hub.corrupt.set('tokenizer.json', bad);
    const e = await rejection(cache.fetchModel('webtune/demo'));
    expect(e.message).toMatch(/tokenizer\.json failed verification \(git blob id/);
  });

  it('a stored part that was damaged afterwards is caught on open', async () => {
    const { store, cache } = setup({ 'webtune/demo': demoRepo() });
    await cache.fetchModel('webtune/demo');
    const [m] = await cache.list();
    const part = (await store.list('hub/')).find((b) => b.name.includes('model.safetensors/part-3'))!;
    await store.put(part.name, (await store.get(part.name))!.subarray(0, 100));
    await expect(cache.open('webtune/demo', m!.commit)).rejects.toThrow(/model\.safetensors: stored part 3 has 100 bytes, expected 4096/);
    expect((await cache.list())[0]!.complete).toBe(false);
  });

  it('says what is wrong: unknown repo, unknown revision, gated without or with a refused token, bad id', async () => {
    const { cache } = setup({ 'webtune/demo': demoRepo(), 'meta/gated': demoRepo({ gated: true, token: TOKEN }) });
    expect((await rejection(cache.fetchModel('nobody/nothing'))).message).toMatch(/model nobody\/nothing not found on the Hub \(if it is private, save an access token/);
    const rev = await rejection(cache.fetchModel('webtune/demo', { revision: 'v9' }));
    expect(rev.code).toBe('revision-not-found');
    expect(rev.message).toMatch(/revision 'v9' not found in webtune\/demo/);
    const gated = await rejection(cache.fetchModel('meta/gated'));
    expect(gated.code).toBe('gated');
    expect(gated.message).toMatch(/meta\/gated is gated: open https:\/\/huggingface\.co\/meta\/gated, sign in and accept its licence, then save a Hugging Face access token/);
    const wrong = setup({ 'meta/gated': demoRepo({ gated: true, token: TOKEN }) }, { token: 'hf_wrongwrongwrongwrongwrong' });
    const refused = await rejection(wrong.cache.fetchModel('meta/gated'));
    expect(refused.code).toBe('gated');
    expect(refused.message).toMatch(/the saved token has no access to it yet/);
    expect(() => checkRepoId('not a repo')).toThrow(/not a Hub model id/);
    expect(checkRepoId(' https://huggingface.co/Qwen/Qwen3-1.7B/ ')).toBe('Qwen/Qwen3-1.7B');
  });

  it('sends the token to the Hub only, never to the CDN it redirects to', async () => {
    const repo = demoRepo({ gated: true, token: TOKEN });
    const { hub, cache } = setup({ 'meta/gated': repo }, { token: TOKEN });
    const files = await cache.fetchModel('meta/gated');
    expect(sha256(await bytesOf(files.get('model.safetensors')!))).toBe(sha256(repo.files.get('model.safetensors')!));
    const cdn = hub.calls.filter((c) => new URL(c.url).hostname !== 'huggingface.co');
    expect(cdn.length).toBeGreaterThan(0);
    for (const c of cdn) expect(c.headers.authorization).toBeUndefined();
    for (const c of hub.calls.filter((c) => new URL(c.url).hostname === 'huggingface.co')) expect(c.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(tokenAllowed('https://huggingface.co/x')).toBe(true);
    expect(tokenAllowed('https://cdn-lfs.huggingface.co/x')).toBe(false);
    expect(tokenAllowed('http://huggingface.co/x')).toBe(false);
    expect(tokenAllowed('https://huggingface.co.evil.example/x')).toBe(false);
  });

  it('rejects a model the app cannot train before downloading any weights', async () => {
    const repo = demoRepo();
    repo.files.set('config.json', enc.encode(JSON.stringify({ ...DEMO_CONFIG, architectures: ['GPT2LMHeadModel'], model_type: 'gpt2' })));
    const { hub, cache } = setup({ 'openai/gpt2': repo });
    const e = await rejection(cache.fetchModel('openai/gpt2'));
    expect(e.code).toBe('unsupported');
    expect(e.message).toMatch(/openai\/gpt2 \(gpt2 \/ GPT2LMHeadModel\) is not a model WebTune can train: it supports LlamaForCausalLM, Qwen2ForCausalLM/);
    expect(hub.calls.some((c) => c.url.includes('.safetensors'))).toBe(false);
  });

  it('a repo with only .bin weights is refused with the reason', async () => {
    const repo = demoRepo();
    repo.files.delete('model.safetensors');
    const { cache } = setup({ 'old/bin': repo });
    expect((await rejection(cache.fetchModel('old/bin'))).message).toMatch(/no safetensors weights .* only PyTorch \.bin files/);
  });

  it('quota: names the file and the size needed before downloading; a full store mid-write keeps the bytes', async () => {
    const repo = demoRepo();
    const weights = repo.files.get('model.safetensors')!.length;
    const tight = setup({ 'webtune/demo': repo }, { quota: 30_000 });
    const e = await rejection(tight.cache.fetchModel('webtune/demo'));
    expect(e.code).toBe('quota');
    expect(e.message).toMatch(/not enough browser storage for webtune\/demo: .* still to download \(the largest file, model\.safetensors, needs .*\)/);
    expect(tight.hub.calls.some((c) => c.url.includes('.safetensors'))).toBe(false);

    // A store that claims room but fills up (another tab, the OS): the error names the file.
    const liar = setup({ 'webtune/demo': repo }, { quota: weights - 1000 });
    liar.store.available = async () => null;
    const e2 = await rejection(liar.cache.fetchModel('webtune/demo'));
    expect(e2.code).toBe('quota');
    expect(e2.message).toMatch(/browser storage is full while storing webtune\/demo\/model\.safetensors/);
    expect((await liar.cache.list())[0]!.complete).toBe(false);
  });

  it('follows a sharded index and fetches only the shards it names', async () => {
    const repo = demoRepo();
    repo.files.delete('model.safetensors');
    repo.files.set('model-00001-of-00002.safetensors', new Uint8Array(7000).fill(1));
    repo.files.set('model-00002-of-00002.safetensors', new Uint8Array(5000).fill(2));
    repo.files.set('consolidated.safetensors', new Uint8Array(9000).fill(3));
    repo.files.set('model.safetensors.index.json', enc.encode(JSON.stringify({ metadata: {}, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' } })));
    const { hub, cache } = setup({ 'x/sharded': repo });
    const files = await cache.fetchModel('x/sharded');
    expect([...files.keys()].filter((k) => k.includes('safetensors')).sort()).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
    expect(hub.calls.some((c) => c.url.includes('consolidated'))).toBe(false);
  });

  it('delete removes an entry (complete or partial) and its refs; an active download cannot be deleted', async () => {
    const { hub, cache, store } = setup({ 'webtune/demo': demoRepo(), 'webtune/other': demoRepo({ commit: 'b'.repeat(40) }) });
    await cache.fetchModel('webtune/demo');
    hub.dropAfter.set('model.safetensors', 5000);
    await rejection(cache.fetchModel('webtune/other'));
    expect((await cache.list()).map((m) => [m.repo, m.complete])).toEqual(
      expect.arrayContaining([
        ['webtune/demo', true],
        ['webtune/other', false],
      ]),
    );
    await cache.delete('webtune/other', 'b'.repeat(40));
    await cache.delete('webtune/demo', 'a'.repeat(40));
    expect(await cache.list()).toEqual([]);
    expect(await store.list('hub/')).toEqual([]);

    const ac = new AbortController();
    let deleting: Promise<unknown> | null = null;
    const p = cache.fetchModel('webtune/demo', {
      signal: ac.signal,
      onProgress: (e) => {
        if (e.status === 'downloading' && !deleting) {
          deleting = cache.delete('webtune/demo', 'a'.repeat(40)).catch((err: Error) => err);
          ac.abort();
        }
      },
    });
    await rejection(p);
    expect(String(await deleting)).toMatch(/being downloaded: cancel the download first/);
  });

  it('an adapter repo: adapter_config.json, the weights and the model card, verified and cached; a non-adapter repo is refused', async () => {
    const files = new Map<string, Uint8Array>([
      ['adapter_config.json', enc.encode(JSON.stringify({ peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['q_proj'] }))],
      ['adapter_model.safetensors', new Uint8Array(9000).map((_, i) => i % 251)],
      ['README.md', enc.encode('# my adapter\n')],
      ['training_args.bin', new Uint8Array(100)],
    ]);
    const { hub, cache } = setup({ 'user/adapter': { files }, 'user/pickle-adapter': { files: new Map([['adapter_config.json', files.get('adapter_config.json')!], ['adapter_model.bin', new Uint8Array(10)]]) }, 'webtune/demo': demoRepo() });
    const got = await cache.fetchAdapter('user/adapter');
    expect([...got.keys()].sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors']);
    expect(await bytesOf(got.get('adapter_model.safetensors')!)).toEqual(files.get('adapter_model.safetensors'));
    // The next time it comes from the cache, offline included.
    hub.offline = true;
    expect([...(await cache.fetchAdapter('user/adapter')).keys()].sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors']);
    hub.offline = false;
    const pickle = await rejection(cache.fetchAdapter('user/pickle-adapter'));
    expect(pickle.code).toBe('unsupported');
    expect(pickle.message).toMatch(/adapter_model\.bin, a PyTorch pickle/);
    expect((await rejection(cache.fetchAdapter('webtune/demo'))).message).toMatch(/not a PEFT adapter.*adapter_config\.json and adapter_model\.safetensors/);
  });
});
