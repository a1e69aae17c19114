import { describe, expect, it } from 'vitest';
import { HubService } from '../../../src/hub/service.ts';
import { MemoryResumableStore } from '../../../src/hub/store.ts';
import { checkToken, type TokenStore } from '../../../src/hub/token.ts';
import { demoModelFiles } from '../../../src/engine/demo/demo-model.ts';
import { FakeHub } from './fake-hub.ts';

function memoryTokens(): TokenStore {
  let t: string | null = null;
  return { get: async () => t, set: async (v) => void (t = v === null ? null : checkToken(v)) };
}

describe('HubService (what the worker exposes)', () => {
  const files = new Map<string, Uint8Array>();
  for (const [k, v] of demoModelFiles(1)) files.set(k, typeof v === 'string' ? new TextEncoder().encode(v) : v);

  it('token: checked, saved, used for the Hub, forgotten', async () => {
    const hub = new FakeHub({ 'meta/gated': { files, gated: true, token: 'hf_0123456789abcdefghijKLMN' } });
    const svc = new HubService(async () => new MemoryResumableStore(), memoryTokens(), hub.fetch);
    await expect(svc.setToken('not-a-token')).rejects.toThrow(/does not look like a Hugging Face access token/);
    expect(await svc.hasToken()).toBe(false);
    await expect(svc.fetchModel('meta/gated', undefined, () => {})).rejects.toThrow(/is gated/);
    await svc.setToken(' hf_0123456789abcdefghijKLMN ');
    expect(await svc.hasToken()).toBe(true);
    const got = await svc.fetchModel('meta/gated', undefined, () => {});
    expect(got.has('model.safetensors')).toBe(true);
    expect((await svc.list())[0]).toMatchObject({ repo: 'meta/gated', complete: true });
    await svc.setToken(null);
    expect(await svc.hasToken()).toBe(false);
  });

  it('cancel() stops the download in progress; a new fetch resumes', async () => {
    const hub = new FakeHub({ 'webtune/demo': { files } });
    const svc = new HubService(async () => new MemoryResumableStore(), memoryTokens(), hub.fetch);
    let cancelled = false;
    const first = svc.fetchModel('webtune/demo', undefined, (p) => {
      if (!cancelled && p.status === 'downloading' && p.file === 'model.safetensors') {
        cancelled = true;
        svc.cancel();
      }
    });
    await expect(first).rejects.toThrow(/cancelled/);
    const [partial] = await svc.list();
    expect(partial!.complete).toBe(false);
    await svc.fetchModel('webtune/demo', 'main', () => {});
    expect((await svc.list())[0]!.complete).toBe(true);
    await svc.delete('webtune/demo', (await svc.list())[0]!.commit);
    expect(await svc.list()).toEqual([]);
  });
});
