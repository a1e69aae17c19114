import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bytesSource, type ByteSource } from '../../../src/formats/bytes.ts';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../../src/formats/safetensors.ts';
import { fileSource } from '../../../src/node/files.ts';
import { parseModelConfig, type ModelSpec } from '../../../src/engine/model/config.ts';
import {
  CheckpointError,
  CheckpointIndex,
  INDEX_FILE,
  gatherRows,
  hfCheckpointLayout,
  modelParams,
  packWqkv,
  unpackWqkv,
  wqkvRowRanges,
} from '../../../src/engine/model/weights.ts';
import { FIXTURE_FAMILIES, fixturesDir } from '../../helpers/fixtures.ts';
import { freshSeed, randn, rng } from '../../helpers/numeric.ts';

const specOf = (family: string): ModelSpec => parseModelConfig(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));
const dirOpener = (dir: string) => (name: string) => fileSource(join(dir, name));
const openFixture = (family: string) => CheckpointIndex.open(specOf(family), dirOpener(fixturesDir(family)));

/** An opener over in-memory files; throws (like a missing file) for other names. */
function memOpener(files: Record<string, Uint8Array>): (name: string) => Promise<ByteSource> {
  return async (name) => {
    const f = files[name];
    if (!f) throw new Error(`${name}: no such file`);
    return bytesSource(f, name);
  };
}

async function fixtureTensors(family: string): Promise<TensorToWrite[]> {
  const f = await SafetensorsFile.open(await fileSource(fixturesDir(family, 'model.safetensors')));
  const out: TensorToWrite[] = [];
  for (const name of f.names) out.push({ name, dtype: 'F32', shape: f.entry(name).shape, data: await f.float32(name) });
  return out;
}

describe('InternLM2 wqkv layout', () => {
  it('row ranges for 4 query heads over 2 KV heads of 16 (the fixture)', () => {
    const l = wqkvRowRanges(4, 2, 16);
    expect(l.rows).toBe(128);
    // group 0: q0 q1 k0 v0 (rows 0..63); group 1: q2 q3 k1 v1 (rows 64..127)
    expect(l.q).toEqual([{ start: 0, count: 32 }, { start: 64, count: 32 }]);
    expect(l.k).toEqual([{ start: 32, count: 16 }, { start: 96, count: 16 }]);
    expect(l.v).toEqual([{ start: 48, count: 16 }, { start: 112, count: 16 }]);
    // one KV head: q is one contiguous range; MHA (G = 1): alternating q, k, v per head
    expect(wqkvRowRanges(8, 1, 4).q).toEqual([{ start: 0, count: 32 }]);
    expect(wqkvRowRanges(2, 2, 4)).toMatchObject({ q: [{ start: 0, count: 4 }, { start: 12, count: 4 }], k: [{ start: 4, count: 4 }, { start: 16, count: 4 }] });
  });

  for (const [nH, nKv, d, cols] of [[4, 2, 16, 64], [16, 8, 8, 5], [12, 2, 4, 3], [6, 6, 2, 1], [8, 1, 4, 7]] as const) {
    it(`pack ∘ unpack is the identity (${nH} heads, ${nKv} KV, d=${d}, ${cols} cols)`, () => {
      const seed = freshSeed();
      const r = rng(seed);
      const dims = { nHeads: nH, nKvHeads: nKv, headDim: d };
      const q = randn(nH * d * cols, r);
      const k = randn(nKv * d * cols, r);
      const v = randn(nKv * d * cols, r);
      const packed = packWqkv(q, k, v, dims, cols);
      const back = unpackWqkv(packed, dims, cols);
      expect(back.q, `seed ${seed}`).toEqual(q);
      expect(back.k).toEqual(k);
      expect(back.v).toEqual(v);
      // head-level check: query head h sits in group floor(h / G) at slot h mod G
      const G = nH / nKv;
      for (let h = 0; h < nH; h++) {
        const row = Math.floor(h / G) * (G + 2) * d + (h % G) * d;
        expect(packed.subarray(row * cols, (row + d) * cols)).toEqual(q.subarray(h * d * cols, (h + 1) * d * cols));
      }
    });
  }
});

describe('CheckpointIndex on the fixtures', () => {
  for (const family of FIXTURE_FAMILIES) {
    it(`${family}: every parameter present with its internal shape, nothing unused`, async () => {
      const idx = await openFixture(family);
      const spec = idx.spec;
      expect(idx.params.map((p) => p.name)).toEqual(modelParams(spec).map((p) => p.name));
      expect(idx.unusedTensors).toEqual([]);
      let n = 0;
      for await (const { param, data } of idx.tensors()) {
        expect(data.length).toBe(param.shape.reduce((a, b) => a * b, 1));
        n++;
      }
      expect(n).toBe(idx.params.length);
      const kinds = new Set(idx.params.map((p) => p.kind));
      expect(kinds.has('q_bias')).toBe(family === 'qwen2');
      expect(kinds.has('q_norm')).toBe(family === 'qwen3');
      expect(idx.param('lm_head').tied).toBe(family === 'llama' || family === 'qwen3');
    });
  }

  it('llama ≡ internlm2: identical internal tensors after unpacking wqkv (proves the layout)', async () => {
    const llama = await openFixture('llama');
    const ilm = await openFixture('internlm2');
    expect(ilm.params.map((p) => [p.name, p.shape])).toEqual(llama.params.map((p) => [p.name, p.shape]));
    expect(ilm.param('layers.0.q').source).toMatchObject({ tensor: 'model.layers.0.attention.wqkv.weight' });
    for (const p of llama.params) {
      const a = await llama.read(p.name);
      const b = await ilm.read(p.name);
      expect(b, p.name).toEqual(a);
    }
    // and the inverse: packing llama's q, k, v reproduces the stored wqkv exactly
    const stored = await SafetensorsFile.open(await fileSource(fixturesDir('internlm2', 'model.safetensors')));
    for (let l = 0; l < llama.spec.layers; l++) {
      const packed = packWqkv(await llama.read(`layers.${l}.q`), await llama.read(`layers.${l}.k`), await llama.read(`layers.${l}.v`), llama.spec, llama.spec.hidden);
      expect(packed).toEqual(await stored.float32(`model.layers.${l}.attention.wqkv.weight`));
    }
  });

  it('a wrong permutation would be caught: q heads of the fixture differ from each other', async () => {
    const llama = await openFixture('llama');
    const q = await llama.read('layers.0.q');
    const swapped = gatherRows(q, 64, [{ start: 16, count: 16 }, { start: 0, count: 16 }, { start: 32, count: 32 }]);
    expect(swapped).not.toEqual(q);
  });

  it('readRows: windows that cross wqkv row ranges equal slices of the whole', async () => {
    const ilm = await openFixture('internlm2');
    for (const name of ['layers.1.q', 'layers.1.k', 'layers.0.v', 'embed', 'layers.0.attn_norm']) {
      const p = ilm.param(name);
      const rows = p.shape[0]!;
      const cols = p.shape[1] ?? 1;
      const whole = await ilm.read(name);
      for (const [s, c] of [[0, rows], [0, 1], [rows - 1, 1], [5, Math.min(30, rows - 5)], [Math.floor(rows / 2) - 3, 7], [3, 0]] as const) {
        expect(await ilm.readRows(name, s, c), `${name} rows ${s}+${c}`).toEqual(whole.subarray(s * cols, (s + c) * cols));
      }
    }
    await expect(ilm.readRows('layers.1.q', 60, 10)).rejects.toThrow(/outside its 64 rows/);
  });

  it('qwen2 biases and qwen3 q/k norms come from their HF tensors', async () => {
    const q2 = await openFixture('qwen2');
    const raw = await SafetensorsFile.open(await fileSource(fixturesDir('qwen2', 'model.safetensors')));
    expect(await q2.read('layers.1.k_bias')).toEqual(await raw.float32('model.layers.1.self_attn.k_proj.bias'));
    expect(await q2.read('lm_head')).toEqual(await raw.float32('lm_head.weight'));
    const q3 = await openFixture('qwen3');
    const raw3 = await SafetensorsFile.open(await fileSource(fixturesDir('qwen3', 'model.safetensors')));
    expect(await q3.read('layers.0.q_norm')).toEqual(await raw3.float32('model.layers.0.self_attn.q_norm.weight'));
    expect(await q3.read('lm_head')).toEqual(await raw3.float32('model.embed_tokens.weight'));
  });
});

describe('CheckpointIndex: sharded checkpoints, dtypes, errors', () => {
  it('reads a sharded checkpoint through its index exactly as the single file', async () => {
    const tensors = await fixtureTensors('qwen2');
    const half = Math.floor(tensors.length / 2);
    const shards = { 'model-00001-of-00002.safetensors': tensors.slice(0, half), 'model-00002-of-00002.safetensors': tensors.slice(half) };
    const files: Record<string, Uint8Array> = {};
    const weightMap: Record<string, string> = {};
    for (const [file, ts] of Object.entries(shards)) {
      files[file] = writeSafetensors(ts, { format: 'pt' });
      for (const t of ts) weightMap[t.name] = file;
    }
    files[INDEX_FILE] = new TextEncoder().encode(JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
    const spec = specOf('qwen2');
    const sharded = await CheckpointIndex.open(spec, memOpener(files));
    expect(sharded.fileNames.sort()).toEqual(Object.keys(shards).sort());
    const single = await openFixture('qwen2');
    for (const p of single.params) expect(await sharded.read(p.name), p.name).toEqual(await single.read(p.name));
    // with a file listing, the index is chosen without probing
    const listed = await CheckpointIndex.open(spec, memOpener(files), Object.keys(files));
    expect(listed.params.length).toBe(single.params.length);
  });

  it('index errors: bad JSON, a shard lacking a mapped tensor, path-like shard names', async () => {
    const spec = specOf('llama');
    const model = readFileSync(fixturesDir('llama', 'model.safetensors'));
    const enc = (o: unknown) => new TextEncoder().encode(typeof o === 'string' ? o : JSON.stringify(o));
    await expect(CheckpointIndex.open(spec, memOpener({ [INDEX_FILE]: enc('{') }))).rejects.toThrow(/index\.json: not valid JSON/);
    await expect(CheckpointIndex.open(spec, memOpener({ [INDEX_FILE]: enc({ weight_map: { 'x.weight': 'a.safetensors' } }), 'a.safetensors': model }))).rejects.toThrow(/maps 'x\.weight' to a\.safetensors, which has no such tensor/);
    await expect(CheckpointIndex.open(spec, memOpener({ [INDEX_FILE]: enc({ weight_map: { 'x.weight': '../../etc/passwd' } }) }))).rejects.toThrow(/not a file name/);
    await expect(CheckpointIndex.open(spec, memOpener({}), ['config.json'])).rejects.toThrow(/no model\.safetensors or model\.safetensors\.index\.json among the checkpoint's files \(config\.json\)/);
    await expect(CheckpointIndex.open(spec, memOpener({}))).rejects.toThrow(/neither .* could be opened/);
  });

  it('reads BF16 and F16 weights as float32', async () => {
    const tensors = await fixtureTensors('llama');
    const toBf16 = (x: Float32Array) => {
      const u = new Uint32Array(x.buffer.slice(0));
      const out = new Uint16Array(x.length);
      for (let i = 0; i < x.length; i++) out[i] = u[i]! >>> 16;
      return out;
    };
    const bf = tensors.map((t) => ({ ...t, dtype: 'BF16' as const, data: toBf16(t.data as Float32Array) }));
    const idx = await CheckpointIndex.open(specOf('llama'), memOpener({ 'model.safetensors': writeSafetensors(bf, { format: 'pt' }) }));
    expect(idx.param('layers.0.q').dtype).toBe('BF16');
    const want = tensors.find((t) => t.name === 'model.layers.0.self_attn.q_proj.weight')!.data as Float32Array;
    const got = await idx.read('layers.0.q');
    const trunc = new Float32Array(new Uint32Array(want.buffer.slice(0)).map((u) => u & 0xffff0000).buffer);
    expect(got).toEqual(trunc);
    expect(await idx.readRows('layers.0.q', 3, 2)).toEqual(trunc.subarray(3 * 64, 5 * 64));
  });

  it('missing and misshapen tensors are named with expected and found shapes', async () => {
    const tensors = await fixtureTensors('qwen2');
    const withoutBias = tensors.filter((t) => t.name !== 'model.layers.1.self_attn.v_proj.bias');
    const bad = await CheckpointIndex.open(specOf('qwen2'), memOpener({ 'model.safetensors': writeSafetensors(withoutBias) })).catch((e: Error) => e);
    expect(bad).toBeInstanceOf(CheckpointError);
    expect((bad as Error).message).toContain("missing tensor 'model.layers.1.self_attn.v_proj.bias' (for layers.1.v_bias), expected shape [32]");
    // A config that says intermediate 128 against 160-wide weights
    const spec = { ...specOf('llama'), intermediate: 128 };
    const msg = await CheckpointIndex.open(spec, dirOpener(fixturesDir('llama'))).catch((e: Error) => e.message);
    expect(msg).toContain("tensor 'model.layers.0.mlp.gate_proj.weight' in model.safetensors has shape [160, 64], expected [128, 64]");
    expect(msg).toContain('6 problems');
    // untied model without lm_head
    const noHead = tensors.filter((t) => t.name !== 'lm_head.weight');
    await expect(CheckpointIndex.open(specOf('qwen2'), memOpener({ 'model.safetensors': writeSafetensors(noHead) }))).rejects.toThrow(/missing tensor 'lm_head\.weight'/);
    // internlm2 with a wrong head count: wqkv rows disagree
    const ilmSpec = { ...specOf('internlm2'), nKvHeads: 4 };
    await expect(CheckpointIndex.open(ilmSpec, dirOpener(fixturesDir('internlm2')))).rejects.toThrow(/wqkv\.weight' in model\.safetensors has shape \[128, 64\], expected \[192, 64\]/);
  });

  it('a tied model that also stores lm_head reads it from the embedding and reports lm_head unused', async () => {
    const tensors = await fixtureTensors('llama');
    const embed = tensors.find((t) => t.name === 'model.embed_tokens.weight')!;
    const extra = [...tensors, { ...embed, name: 'lm_head.weight', data: new Float32Array(embed.data.byteLength / 4) }];
    const idx = await CheckpointIndex.open(specOf('llama'), memOpener({ 'model.safetensors': writeSafetensors(extra) }));
    expect(idx.unusedTensors).toEqual(['lm_head.weight']);
    expect(await idx.read('lm_head')).toEqual(embed.data);
  });

  it('hfCheckpointLayout lists each HF tensor a merged export writes', () => {
    const names = new Set(hfCheckpointLayout(specOf('internlm2')).map((x) => x.source.tensor));
    expect(names.has('model.layers.1.attention.wqkv.weight')).toBe(true);
    expect(names.has('output.weight')).toBe(true);
    expect(hfCheckpointLayout(specOf('llama')).some((x) => x.source.tensor === 'lm_head.weight')).toBe(false);
  });
});
