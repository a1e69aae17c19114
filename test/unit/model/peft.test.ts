import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bytesSource } from '../../../src/formats/bytes.ts';
import { SafetensorsFile } from '../../../src/formats/safetensors.ts';
import { fileSource } from '../../../src/node/files.ts';
import { parseModelConfig, type ModelSpec } from '../../../src/engine/model/config.ts';
import {
  PeftError,
  expectedLoraTensors,
  loraModules,
  loraScale,
  packWqkvLoraB,
  splitWqkvLoraB,
  parsePeftConfig,
  peftKey,
  pythonFloatRepr,
  readPeftAdapter,
  writePeftAdapter,
  type PeftLoraConfig,
  type PeftTensor,
} from '../../../src/engine/model/peft.ts';
import { fixturesDir } from '../../helpers/fixtures.ts';
import { packWqkv, unpackWqkv } from '../../../src/engine/model/weights.ts';
import { freshSeed, randn, rng } from '../../helpers/numeric.ts';

const ADAPTER_FAMILIES = ['llama', 'qwen2', 'qwen3'] as const;
const specOf = (family: string): ModelSpec => parseModelConfig(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));
const fixtureConfigText = (family: string, dir = 'adapter_init') => readFileSync(fixturesDir(family, dir, 'adapter_config.json'), 'utf8');
const readFixture = async (family: string, dir = 'adapter_init') =>
  readPeftAdapter(fixtureConfigText(family, dir), await fileSource(fixturesDir(family, dir, 'adapter_model.safetensors')), specOf(family));

describe('PEFT adapters: the reference fixtures', () => {
  for (const family of ADAPTER_FAMILIES) {
    for (const dir of ['adapter_init', 'adapter_after_5_steps']) {
      it(`${family}/${dir}: read → write → read is lossless; key set is PEFT's exactly; files byte-identical`, async () => {
        const spec = specOf(family);
        const a = await readFixture(family, dir);
        expect(a.config).toMatchObject({ r: 8, loraAlpha: 16, loraDropout: 0, baseModelNameOrPath: null, useRslora: false, layersToTransform: null });
        expect([...a.config.targetModules]).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
        expect(a.unknownKeys).toEqual([]);
        expect(loraScale(a.config)).toBe(2);

        const raw = await SafetensorsFile.open(await fileSource(fixturesDir(family, dir, 'adapter_model.safetensors')));
        expect([...a.tensors.keys()].sort()).toEqual(raw.names.sort());
        expect(a.tensors.size).toBe(2 * 7 * spec.layers);
        expect(a.tensors.get('base_model.model.model.layers.1.mlp.down_proj.lora_A.weight')!.shape).toEqual([8, 160]);
        expect(a.tensors.get('base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight')!.shape).toEqual([32, 8]);

        const { adapterConfigJson, adapterSafetensors } = writePeftAdapter(spec, a.config, a.tensors);
        // adapter_model.safetensors: byte for byte what PEFT wrote (same order, header, padding, metadata)
        expect(Buffer.from(adapterSafetensors).equals(readFileSync(fixturesDir(family, dir, 'adapter_model.safetensors')))).toBe(true);
        // adapter_config.json: every field equal (target_modules is a set in PEFT: its order is Python's hash order)
        const mine = JSON.parse(adapterConfigJson) as Record<string, unknown>;
        const theirs = JSON.parse(fixtureConfigText(family, dir)) as Record<string, unknown>;
        expect(Object.keys(mine).sort()).toEqual(Object.keys(theirs).sort());
        for (const k of Object.keys(theirs)) {
          if (k === 'target_modules') expect((mine[k] as string[]).slice().sort()).toEqual((theirs[k] as string[]).slice().sort());
          else expect(mine[k], k).toEqual(theirs[k]);
        }
        // and the text itself, once target_modules is put in the fixture's order
        const reordered = adapterConfigJson.replace(/"target_modules": \[[^\]]*\]/, `"target_modules": [\n${(theirs.target_modules as string[]).map((t) => `    "${t}"`).join(',\n')}\n  ]`);
        expect(reordered).toBe(fixtureConfigText(family, dir));

        const b = await readPeftAdapter(adapterConfigJson, bytesSource(adapterSafetensors, 'written'), spec);
        expect([...b.tensors.keys()]).toEqual([...a.tensors.keys()]);
        for (const [k, t] of a.tensors) {
          expect(b.tensors.get(k)!.shape).toEqual(t.shape);
          expect(b.tensors.get(k)!.data).toEqual(t.data);
        }
      });
    }
  }

  it('rejects an adapter trained on another base shape, naming the tensor and both shapes', async () => {
    const qwen3 = specOf('qwen3');
    const other: ModelSpec = { ...qwen3, intermediate: 192 };
    const err = await readPeftAdapter(fixtureConfigText('qwen3'), await fileSource(fixturesDir('qwen3', 'adapter_init', 'adapter_model.safetensors')), other).catch((e: Error) => e);
    expect(err).toBeInstanceOf(PeftError);
    expect((err as Error).message).toContain("'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight' has shape [8, 160], but the base model needs [8, 192]");
    expect((err as Error).message).toContain('6 problems');
    // a deeper model: the adapter lacks layer 2's tensors
    const deeper: ModelSpec = { ...qwen3, layers: 3 };
    await expect(readPeftAdapter(fixtureConfigText('qwen3'), await fileSource(fixturesDir('qwen3', 'adapter_init', 'adapter_model.safetensors')), deeper)).rejects.toThrow(/missing 'base_model\.model\.model\.layers\.2\.mlp\.down_proj\.lora_A\.weight' \(expected shape \[8, 160\]\)/);
  });

  it('reports keys the config does not call for', async () => {
    const spec = specOf('llama');
    const a = await readFixture('llama');
    // a config listing fewer targets than the file holds
    const cfg = JSON.parse(fixtureConfigText('llama')) as Record<string, unknown>;
    cfg.target_modules = ['q_proj', 'v_proj'];
    const b = await readPeftAdapter(JSON.stringify(cfg), bytesSource(writePeftAdapter(spec, a.config, a.tensors).adapterSafetensors), spec);
    expect(b.tensors.size).toBe(2 * 2 * spec.layers);
    expect(b.unknownKeys).toHaveLength(2 * 5 * spec.layers);
    expect(b.unknownKeys).toContain('base_model.model.model.layers.0.mlp.up_proj.lora_B.weight');
  });
});

describe('PEFT config parsing', () => {
  const spec = specOf('llama');
  const base = () => JSON.parse(fixtureConfigText('llama')) as Record<string, unknown>;
  const parse = (c: Record<string, unknown>) => parsePeftConfig(JSON.stringify(c), spec).config;
  it('resolves target_modules as PEFT matches them: suffixes, regex, all-linear, layers_to_transform', () => {
    expect(parse({ ...base(), target_modules: ['self_attn.q_proj', 'down_proj'] }).targetModules).toEqual(['q_proj', 'down_proj']);
    expect(parse({ ...base(), target_modules: '.*\\.(q|v)_proj' }).targetModules).toEqual(['q_proj', 'v_proj']);
    expect(parse({ ...base(), target_modules: 'all-linear' }).targetModules).toEqual(loraModules('llama'));
    const c = parse({ ...base(), target_modules: ['o_proj'], layers_to_transform: 1, lora_alpha: 32.5, use_rslora: true });
    expect(c.layersToTransform).toEqual([1]);
    expect(expectedLoraTensors(spec, c).map((e) => e.key)).toEqual([peftKey('llama', 1, 'o_proj', 'A'), peftKey('llama', 1, 'o_proj', 'B')]);
    expect(loraScale(c)).toBeCloseTo(32.5 / Math.sqrt(8), 12);
  });
  it.each([
    [{ peft_type: 'IA3' }, 'only "LORA"'],
    [{ r: 0 }, 'r is 0'],
    [{ lora_dropout: 1.5 }, 'lora_dropout'],
    [{ use_dora: true }, 'DoRA'],
    [{ bias: 'all' }, 'training biases'],
    [{ modules_to_save: ['lm_head'] }, 'modules_to_save'],
    [{ rank_pattern: { q_proj: 4 } }, 'per-module rank'],
    [{ target_modules: ['q_proj', 'lm_head'] }, '"lm_head" match no LoRA-capable module'],
    [{ target_modules: 'model\\.layers\\.0\\..*q_proj' }, 'per-layer targets'],
    [{ target_modules: [] }, 'non-empty list'],
    [{ layers_to_transform: [5] }, 'layer 5'],
    [{ task_type: 'SEQ_CLS' }, 'CAUSAL_LM'],
  ])('%j → error mentioning %s', (patch, needle) => {
    expect(() => parse({ ...base(), ...patch })).toThrow(needle);
  });
});

describe('PEFT adapters for InternLM2 (wqkv, wo, w1, w2, w3)', () => {
  const spec = specOf('internlm2');
  it('keys and shapes: one LoRA pair on the packed wqkv', () => {
    expect(loraModules('internlm2')).toEqual(['wqkv', 'wo', 'w1', 'w3', 'w2']);
    const config: PeftLoraConfig = { r: 4, loraAlpha: 8, loraDropout: 0.05, targetModules: loraModules('internlm2'), baseModelNameOrPath: 'internlm/internlm2-chat-1_8b' };
    const exp = expectedLoraTensors(spec, config);
    const byKey = Object.fromEntries(exp.map((e) => [e.key, e.shape]));
    expect(byKey['base_model.model.model.layers.0.attention.wqkv.lora_A.weight']).toEqual([4, 64]);
    expect(byKey['base_model.model.model.layers.0.attention.wqkv.lora_B.weight']).toEqual([128, 4]);
    expect(byKey['base_model.model.model.layers.1.feed_forward.w2.lora_A.weight']).toEqual([4, 160]);
    expect(byKey['base_model.model.model.layers.1.attention.wo.lora_B.weight']).toEqual([64, 4]);
    expect(exp).toHaveLength(2 * 5 * 2);
  });
  it('write → read round trip with random tensors; config fields as PEFT writes them', async () => {
    const seed = freshSeed();
    const r = rng(seed);
    const config: PeftLoraConfig = { r: 4, loraAlpha: 8, loraDropout: 0.05, targetModules: loraModules('internlm2'), baseModelNameOrPath: 'internlm/internlm2-chat-1_8b' };
    const tensors = new Map<string, PeftTensor>();
    for (const e of expectedLoraTensors(spec, config)) tensors.set(e.key, { shape: e.shape, data: randn(e.shape[0] * e.shape[1], r, 0.05) });
    const { adapterConfigJson, adapterSafetensors } = writePeftAdapter(spec, config, tensors);
    expect(adapterConfigJson).toContain('"lora_alpha": 8,');
    expect(adapterConfigJson).toContain('"lora_dropout": 0.05,');
    expect(adapterConfigJson).toContain('"base_model_name_or_path": "internlm/internlm2-chat-1_8b",');
    expect(adapterConfigJson).toContain('"target_modules": [\n    "wqkv",\n    "wo",\n    "w1",\n    "w3",\n    "w2"\n  ],');
    const f = await SafetensorsFile.open(bytesSource(adapterSafetensors));
    expect(f.metadata).toEqual({ format: 'pt' });
    expect(f.names).toEqual([...f.names].sort());
    const back = await readPeftAdapter(adapterConfigJson, bytesSource(adapterSafetensors), spec);
    expect(back.config).toMatchObject(config);
    for (const [k, t] of tensors) expect(back.tensors.get(k)!.data, `${k} seed ${seed}`).toEqual(t.data);
  });
  it('wqkv lora_B rows follow the packed layout: B·A unpacks to the q/k/v deltas', () => {
    const seed = freshSeed();
    const rand = rng(seed);
    const r = 3;
    const { hidden: h } = spec;
    const qRows = spec.nHeads * spec.headDim;
    const kvRows = spec.nKvHeads * spec.headDim;
    const A = randn(r * h, rand);
    const Bq = randn(qRows * r, rand);
    const Bk = randn(kvRows * r, rand);
    const Bv = randn(kvRows * r, rand);
    const B = packWqkvLoraB(spec, Bq, Bk, Bv, r);
    const matmul = (X: Float32Array, Y: Float32Array, m: number, k: number, n: number) => {
      const out = new Float32Array(m * n);
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += X[i * k + t]! * Y[t * n + j]!;
        out[i * n + j] = s;
      }
      return out;
    };
    const delta = unpackWqkv(matmul(B, A, B.length / r, r, h), spec, h);
    expect(delta.q, `seed ${seed}`).toEqual(matmul(Bq, A, qRows, r, h));
    expect(delta.k).toEqual(matmul(Bk, A, kvRows, r, h));
    expect(delta.v).toEqual(matmul(Bv, A, kvRows, r, h));
    expect(splitWqkvLoraB(spec, B, r)).toEqual({ q: Bq, k: Bk, v: Bv });
    expect(B).toEqual(packWqkv(Bq, Bk, Bv, spec, r));
  });

  it('writing refuses partial, extra or misshapen tensor sets', () => {
    const config: PeftLoraConfig = { r: 2, loraAlpha: 4, loraDropout: 0, targetModules: ['wo'], baseModelNameOrPath: null };
    const good = new Map<string, PeftTensor>(expectedLoraTensors(spec, config).map((e) => [e.key, { shape: e.shape, data: new Float32Array(e.shape[0] * e.shape[1]) }]));
    expect(() => writePeftAdapter(spec, config, good)).not.toThrow();
    const missing = new Map(good);
    missing.delete(peftKey('internlm2', 1, 'wo', 'B'));
    expect(() => writePeftAdapter(spec, config, missing)).toThrow(/missing 'base_model\.model\.model\.layers\.1\.attention\.wo\.lora_B\.weight' \[64, 2\]/);
    const extra = new Map(good).set('base_model.model.output.lora_A.weight', { shape: [2, 64], data: new Float32Array(128) });
    expect(() => writePeftAdapter(spec, config, extra)).toThrow(/unexpected tensor 'base_model\.model\.output\.lora_A\.weight'/);
    const bad = new Map(good).set(peftKey('internlm2', 0, 'wo', 'A'), { shape: [2, 32], data: new Float32Array(64) });
    expect(() => writePeftAdapter(spec, config, bad)).toThrow(/has shape \[2, 32\] \(64 values\), expected \[2, 64\]/);
    expect(() => writePeftAdapter(spec, { ...config, targetModules: ['q_proj'] as never }, good)).toThrow(/'q_proj' is not a LoRA target of internlm2/);
  });
});

describe('Python float formatting', () => {
  it.each([
    [0, '0.0'],
    [16, '16.0'],
    [0.05, '0.05'],
    [0.1, '0.1'],
    [1e-5, '1e-05'],
    [1.5e-5, '1.5e-05'],
    [0.0001, '0.0001'],
    [123456.75, '123456.75'],
    [1e16, '1e+16'],
    [1.2345e20, '1.2345e+20'],
    [-2.5, '-2.5'],
    [1 / 3, '0.3333333333333333'],
  ])('%s → %s', (x, s) => {
    expect(pythonFloatRepr(x)).toBe(s);
  });
});
