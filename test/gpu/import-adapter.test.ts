/**
 * Share in the engine session: a PEFT adapter zip (or folder) imported into a fresh session becomes the
 * tuned model and answers exactly as the session that exported it; a wrong-shaped adapter is refused
 * naming the tensor and both shapes, and leaves the session as it was; the GGUF and Ollama exports read
 * back; the merged export (zipped, f32) loads as an ordinary checkpoint whose base answers like base + adapter.
 */
import { describe, expect, it } from 'vitest';
import { EngineSession } from '../../src/engine/session.ts';
import { DEMO_CONFIG, DEMO_MODEL_ID } from '../../src/engine/demo/demo-model.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { expectedLoraTensors, loraModules, type PeftLoraConfig, type PeftTensor } from '../../src/engine/model/peft.ts';
import { exportAdapterZip } from '../../src/engine/share/adapter-zip.ts';
import { memorySinks, recordingSinks } from '../../src/engine/share/sinks.ts';
import { readGguf } from '../../src/engine/share/gguf.ts';
import { readZip } from '../../src/engine/share/zip.ts';
import { bytesSource } from '../../src/formats/bytes.ts';
import { seededGaussian } from '../../src/engine/random.ts';
import { gpu } from '../helpers/gpu.ts';
import { HubService } from '../../src/hub/service.ts';
import { MemoryResumableStore } from '../../src/hub/store.ts';
import { FakeHub } from '../unit/hub/fake-hub.ts';

const spec = parseModelConfig(JSON.stringify(DEMO_CONFIG), 'demo config.json');
const greedy = { temperature: 0, maxNewTokens: 10, seed: 3 };

/** A random adapter for `s` (B non-zero, so it changes the answers). */
function randomAdapter(s = spec, r = 4): Uint8Array {
  const config: PeftLoraConfig = { r, loraAlpha: 8, loraDropout: 0, targetModules: loraModules(s.family), baseModelNameOrPath: DEMO_MODEL_ID };
  const tensors = new Map<string, PeftTensor>();
  expectedLoraTensors(s, config).forEach((e, i) => tensors.set(e.key, { shape: e.shape, data: seededGaussian(e.shape[0] * e.shape[1], 100 + i, 0.3) }));
  return exportAdapterZip({ spec: s, config, tensors, chat: { chatTemplate: null, stopTokenIds: [258], stopStrings: ['<|im_end|>'] } });
}

describe('adapter import and exports in the engine session', () => {
  it('zip → tuned chat; the same zip in a fresh session gives the same answer; exports round-trip', async () => {
    const ctx = await gpu();
    const zip = randomAdapter();
    const a = new EngineSession(ctx);
    await a.loadDemoModel(1);
    await expect(a.chat('tuned', 'Who are you?', greedy)).rejects.toThrow(/no adapter yet/);
    const summary = await a.importAdapter(zip, 'nova.zip');
    expect(summary).toMatchObject({ source: 'nova.zip', r: 4, loraAlpha: 8, baseModel: DEMO_MODEL_ID, warnings: [] });
    const base = await a.chat('base', 'Who are you?', greedy);
    const tuned = await a.chat('tuned', 'Who are you?', greedy);
    expect(tuned).not.toBe(base);

    // What Share downloads from an imported adapter: the same PEFT tensors, and GGUF / Ollama files that parse.
    const again = await readZip(bytesSource(await a.exportAdapter(), 're-export.zip'));
    const first = await readZip(bytesSource(zip, 'nova.zip'));
    expect(again.get('adapter_model.safetensors')).toEqual(first.get('adapter_model.safetensors'));
    const gguf = await a.exportAdapterAs('gguf');
    expect(gguf.name).toMatch(/\.gguf$/);
    const g = readGguf(gguf.bytes, gguf.name);
    expect(g.tensors.size).toBe(2 * spec.layers * loraModules(spec.family).length);
    const ollama = await readZip(bytesSource((await a.exportAdapterAs('ollama')).bytes, 'ollama.zip'));
    expect([...ollama.keys()].sort()).toEqual(['Modelfile', 'README.md', 'adapter.gguf']);
    expect(new TextDecoder().decode(ollama.get('Modelfile'))).toMatch(/^FROM .*\nADAPTER \.\/adapter\.gguf\nTEMPLATE """/);

    // The merged model (f32, zipped in memory) loads like any checkpoint; its base answers as base + adapter.
    const progress: number[] = [];
    const merged = await a.exportMerged('f32', null, (p) => progress.push(p.done));
    expect(progress.at(-1)).toBe(progress.length);
    const files = await readZip(bytesSource(merged.zip!.bytes, merged.zip!.name));
    expect([...files.keys()]).toEqual(expect.arrayContaining(['model.safetensors', 'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']));
    a.unload();

    // A fresh session (the page reloaded): import the same zip, same seed → the same answer.
    const b = new EngineSession(ctx);
    await b.loadDemoModel(1);
    await b.importAdapter(zip, 'nova.zip');
    expect(await b.chat('tuned', 'Who are you?', greedy)).toBe(tuned);
    b.unload();

    const m = new EngineSession(ctx);
    await m.loadModelFiles(new Map([...files].filter(([n]) => n !== 'README.md')), { id: 'merged', quantize: false });
    expect(await m.chat('base', 'Who are you?', greedy)).toBe(tuned);
    m.unload();
  }, 600_000);

  it('a folder (files under one sub-folder) imports; a wrong-shaped adapter is refused, naming tensor and shapes', async () => {
    const ctx = await gpu();
    const s = new EngineSession(ctx);
    await s.loadDemoModel(1);
    const files = await readZip(bytesSource(randomAdapter(spec, 2), 'a.zip'));
    const folder = new Map([...files].map(([n, d]) => [`my-adapter/${n}`, new Blob([d as BlobPart])]));
    expect((await s.importAdapter(folder, 'my-adapter')).r).toBe(2);
    const before = await s.chat('tuned', 'Hi', greedy);
    s.resetChat('tuned');

    const other = parseModelConfig(JSON.stringify({ ...DEMO_CONFIG, intermediate_size: 192 }), 'other config.json');
    const err = await s.importAdapter(randomAdapter(other, 2), 'other.zip').then(() => null, (e: unknown) => e as Error);
    expect(err?.message).toMatch(/other\.zip.*does not fit/);
    expect(err?.message).toContain(`'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight' has shape [2, 192], but the base model needs [2, ${DEMO_CONFIG.intermediate_size}]`);
    await expect(s.importAdapter(new Uint8Array([1, 2, 3]), 'junk.zip')).rejects.toThrow(/junk\.zip/);
    await expect(s.importAdapter(new Map([['notes.txt', new Blob(['hi'])]]), 'folder')).rejects.toThrow(/no adapter_config\.json/);
    // The adapter installed before the failures is still the tuned model.
    expect(await s.chat('tuned', 'Hi', greedy)).toBe(before);
    s.unload();
  }, 600_000);

  it('a merged export into a folder can be cancelled: it rejects between tensors, keeps no half-written file, and the next export runs', async () => {
    const ctx = await gpu();
    const s = new EngineSession(ctx);
    await s.loadDemoModel(1);
    await s.importAdapter(randomAdapter(), 'nova.zip');
    const written: string[] = [];
    const mem = memorySinks();
    const run = s.exportMerged('f32', recordingSinks(mem.open, written), (p) => {
      if (p.done === 2) s.cancelExport();
    });
    await expect(run).rejects.toMatchObject({ name: 'MergeCancelledError', message: 'the merged export was cancelled' });
    // The shard being written was dropped (its sink aborted): nothing under the shard's name, no config yet.
    expect(mem.files.has('model.safetensors')).toBe(false);
    expect(mem.files.has('config.json')).toBe(false);
    expect(written).toEqual([...mem.files.keys()]);
    const again = await s.exportMerged('f32', null);
    expect(again.result.files).toEqual(expect.arrayContaining(['model.safetensors', 'config.json']));
    s.unload();
  });

  it('out of GPU memory: an adapter import or a chat KV cache that does not fit is refused naming it, nothing is kept, and both work with room', async () => {
    const ctx = await gpu();
    const s = new EngineSession(ctx);
    await s.loadDemoModel(1);
    const first = randomAdapter();
    await s.importAdapter(first, 'first.zip');
    const answer = await s.chat('tuned', 'Who are you?', greedy);
    s.resetChat('tuned');
    const live = ctx.pool.liveBytes;
    // The pool's budget stands in for a device that refuses the next buffer.
    ctx.pool.budgetBytes = live + 1024;
    try {
      await expect(s.importAdapter(randomAdapter(spec, 8), 'second.zip')).rejects.toThrow(/^out of GPU memory allocating the adapter second\.zip: .* budget\)$/);
      expect(ctx.pool.liveBytes).toBe(live);
      await expect(s.chat('base', 'Who are you?', greedy)).rejects.toThrow(/^out of GPU memory allocating the base chat's KV cache \(\d+ tokens\): /);
      expect(ctx.pool.liveBytes).toBe(live);
    } finally {
      ctx.pool.budgetBytes = null;
    }
    // The first adapter is still the tuned model; with room, the base side's cache comes.
    expect(await s.chat('tuned', 'Who are you?', greedy)).toBe(answer);
    expect((await s.chat('base', 'Who are you?', greedy)).length).toBeGreaterThan(0);
    s.unload();
  });

  it('a Hub repo id: the adapter downloads into the cache and answers as the same zip imported directly', async () => {
    const ctx = await gpu();
    const zip = randomAdapter();
    const files = new Map<string, Uint8Array>();
    for (const [k, v] of await readZip(bytesSource(zip, 'nova.zip'))) files.set(k.replace(/^.*\//, ''), v);
    const hub = new FakeHub({ 'someone/nova-lora': { files } });
    const service = new HubService(async () => new MemoryResumableStore(), { get: async () => null, set: async () => {} }, hub.fetch);
    const a = new EngineSession(ctx);
    await a.loadDemoModel(1);
    await a.importAdapter(zip, 'nova.zip');
    const direct = await a.chat('tuned', 'Who are you?', greedy);
    const b = new EngineSession(ctx);
    await b.loadDemoModel(1);
    const downloaded = await service.fetchAdapter('someone/nova-lora', undefined, () => {});
    const summary = await b.importAdapter(downloaded, 'someone/nova-lora');
    expect(summary).toMatchObject({ source: 'someone/nova-lora', r: 4, loraAlpha: 8 });
    expect(await b.chat('tuned', 'Who are you?', greedy)).toBe(direct);
    a.unload();
    b.unload();
  });
});
