import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { zipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { bytesSource } from '../../../src/formats/bytes.ts';
import { SafetensorsFile } from '../../../src/formats/safetensors.ts';
import { fileSource } from '../../../src/node/files.ts';
import { parseModelConfig, type ModelSpec } from '../../../src/engine/model/config.ts';
import { expectedLoraTensors, loraModules, readPeftAdapter, type PeftLoraConfig, type PeftTensor } from '../../../src/engine/model/peft.ts';
import { adapterFiles, exportAdapterZip, importAdapterFolder, importAdapterZip, type AdapterBundle } from '../../../src/engine/share/adapter-zip.ts';
import { crc32, listZip, readZip, ZipError } from '../../../src/engine/share/zip.ts';
import { Sha256 } from '../../../src/engine/share/sha256.ts';
import { fixturesDir } from '../../helpers/fixtures.ts';
import { freshSeed, randn, rng } from '../../helpers/numeric.ts';

const specOf = (family: string): ModelSpec => parseModelConfig(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));
const chat = { chatTemplate: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", stopTokenIds: [2, 5], stopStrings: ['<|im_end|>'] };
const training = { dataset: { name: 'chat.jsonl', rows: 12, tokens: 3400, supervisedTokens: 1200 }, hyperParameters: { lr: 2e-4, epochs: 3, rank: 8 }, steps: 9, finalLoss: 1.23456 };

describe('adapter export/import (.zip)', () => {
  for (const family of ['llama', 'qwen2', 'qwen3'] as const) {
    it(`${family}: fixture adapter → zip → import is lossless; PEFT files byte-identical; exact key set and shapes`, async () => {
      const spec = specOf(family);
      const dir = fixturesDir(family, 'adapter_init');
      const a = await readPeftAdapter(readFileSync(`${dir}/adapter_config.json`, 'utf8'), await fileSource(`${dir}/adapter_model.safetensors`), spec);
      const bundle: AdapterBundle = { spec, config: a.config, tensors: a.tensors, training, chat };
      const zip = exportAdapterZip(bundle);
      const files = await readZip(bytesSource(zip, 'x.zip'));
      expect([...files.keys()].sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'chat_template.jinja', 'webtune.json']);
      // PEFT's own bytes, unchanged (base_model_name_or_path is null in the fixtures, as in a.config).
      expect(Buffer.from(files.get('adapter_model.safetensors')!).equals(readFileSync(`${dir}/adapter_model.safetensors`))).toBe(true);
      // adapter_config.json: the fixture's text once target_modules (a Python set, hash-ordered) is put in its order
      const theirs = readFileSync(`${dir}/adapter_config.json`, 'utf8');
      const order = (JSON.parse(theirs) as { target_modules: string[] }).target_modules;
      const mine = new TextDecoder().decode(files.get('adapter_config.json')!);
      expect(mine.replace(/"target_modules": \[[^\]]*\]/, `"target_modules": [\n${order.map((t) => `    "${t}"`).join(',\n')}\n  ]`)).toBe(theirs);
      const st = await SafetensorsFile.open(bytesSource(files.get('adapter_model.safetensors')!));
      const expected = expectedLoraTensors(spec, a.config);
      expect(st.names.sort()).toEqual(expected.map((e) => e.key).sort());
      for (const e of expected) expect(st.entry(e.key).shape).toEqual(e.shape);
      expect(st.metadata).toEqual({ format: 'pt' });

      const back = await importAdapterZip(zip, spec);
      expect(back.adapter.unknownKeys).toEqual([]);
      for (const [k, t] of a.tensors) expect(Buffer.from(back.adapter.tensors.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer)), k).toBe(true);
      expect(back.chat).toEqual(chat);
      expect(back.info?.training).toEqual(training);
      expect(back.readme).toContain('final training loss: 1.2346');
    });
  }

  it('internlm2 (wqkv, wo, w1, w2, w3): random adapter round trip, Hub id as base_model_name_or_path', async () => {
    const seed = freshSeed();
    const spec = specOf('internlm2');
    const config: PeftLoraConfig = { r: 4, loraAlpha: 8, loraDropout: 0.05, targetModules: loraModules('internlm2'), baseModelNameOrPath: 'internlm/internlm2-chat-1_8b' };
    const random = rng(seed);
    const tensors = new Map<string, PeftTensor>();
    for (const e of expectedLoraTensors(spec, config)) tensors.set(e.key, { shape: e.shape, data: randn(e.shape[0] * e.shape[1], random) });
    const zip = exportAdapterZip({ spec, config, tensors });
    const back = await importAdapterZip(zip, spec);
    expect(back.adapter.config.baseModelNameOrPath).toBe('internlm/internlm2-chat-1_8b');
    expect([...back.adapter.tensors.keys()].sort()).toEqual([...tensors.keys()].sort());
    expect([...back.adapter.tensors.keys()].some((k) => k.includes('attention.wqkv.lora_B'))).toBe(true);
    for (const [k, t] of tensors) expect(back.adapter.tensors.get(k)!.data, `${k} seed ${seed}`).toEqual(t.data);
    const cfg = JSON.parse(new TextDecoder().decode(adapterFiles({ spec, config, tensors }).get('adapter_config.json')!));
    expect(cfg.target_modules).toEqual(['wqkv', 'wo', 'w1', 'w3', 'w2']);
    expect(cfg.base_model_name_or_path).toBe('internlm/internlm2-chat-1_8b');
  });

  it('imports a folder (files in a sub-folder, as a zipped directory has them)', async () => {
    const spec = specOf('qwen2');
    const dir = fixturesDir('qwen2', 'adapter_after_5_steps');
    const files = new Map([
      ['my-adapter/adapter_config.json', await fileSource(`${dir}/adapter_config.json`)],
      ['my-adapter/adapter_model.safetensors', await fileSource(`${dir}/adapter_model.safetensors`)],
    ]);
    const back = await importAdapterFolder(files, spec);
    expect(back.adapter.tensors.size).toBe(2 * 7 * spec.layers);
    expect(back.chat).toBeNull();
  });

  it('rejects an adapter for another base, naming the tensor and both shapes', async () => {
    const spec = specOf('llama');
    const dir = fixturesDir('llama', 'adapter_init');
    const zip = exportAdapterZip({
      spec,
      config: (await readPeftAdapter(readFileSync(`${dir}/adapter_config.json`, 'utf8'), await fileSource(`${dir}/adapter_model.safetensors`), spec)).config,
      tensors: (await readPeftAdapter(readFileSync(`${dir}/adapter_config.json`, 'utf8'), await fileSource(`${dir}/adapter_model.safetensors`), spec)).tensors,
    });
    const other: ModelSpec = { ...spec, intermediate: 128 };
    await expect(importAdapterZip(zip, other)).rejects.toThrow(/'base_model\.model\.model\.layers\.0\.mlp\.down_proj\.lora_A\.weight' has shape \[8, 160\], but the base model needs \[8, 128\]/);
  });

  it('zip bombs: declared sizes over the caps are refused before inflating; a lying header is stopped while inflating', async () => {
    const zeros = new Uint8Array(16 << 20); // 16 MiB of zeros deflates to ~16 KiB
    const bomb = zipSync({ 'adapter_model.safetensors': [zeros, { level: 9 }], 'adapter_config.json': new Uint8Array(10) });
    expect(bomb.length).toBeLessThan(100_000);
    await expect(importAdapterZip(bomb, specOf('llama'), { maxEntryBytes: 1 << 20 })).rejects.toThrow(/declares 16\.0 MiB uncompressed, over the 1\.0 MiB cap/);
    await expect(importAdapterZip(bomb, specOf('llama'), { maxTotalBytes: 8 << 20 })).rejects.toThrow(/more than 8\.0 MiB uncompressed in all/);
    await expect(importAdapterZip(bomb, specOf('llama'), { maxEntries: 1 })).rejects.toThrow(/2 entries; at most 1/);
    // Rewrite the declared size of the big entry (central directory and local header) to 1000 bytes.
    const liar = bomb.slice();
    const dv = new DataView(liar.buffer);
    const [entry] = await listZip(bytesSource(bomb));
    for (let i = 0; i < liar.length - 4; i++) if (dv.getUint32(i, true) === 0x02014b50 && i > entry!.localOffset) { dv.setUint32(i + 24, 1000, true); break; }
    dv.setUint32(entry!.localOffset + 22, 1000, true);
    await expect(importAdapterZip(liar, specOf('llama'))).rejects.toThrow(ZipError);
    await expect(importAdapterZip(liar, specOf('llama'))).rejects.toThrow(/inflates to more than the 1000 bytes it declares/);
  });

  it('crc32 and incremental sha256 agree with node:zlib/crypto', async () => {
    const seed = freshSeed();
    const random = rng(seed);
    for (const n of [0, 1, 55, 56, 63, 64, 65, 1000, 100_003]) {
      const data = Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
      const h = new Sha256();
      for (let i = 0; i < n; i += 37) h.update(data.subarray(i, i + 37));
      expect(h.hex(), `n=${n} seed ${seed}`).toBe(createHash('sha256').update(data).digest('hex'));
      const { crc32: zcrc } = await import('node:zlib');
      expect(crc32(data)).toBe(zcrc(data));
    }
  });
});
