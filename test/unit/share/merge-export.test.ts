import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bytesSource } from '../../../src/formats/bytes.ts';
import { f16ToF32, SafetensorsFile } from '../../../src/formats/safetensors.ts';
import { fileSource } from '../../../src/node/files.ts';
import { parseModelConfig } from '../../../src/engine/model/config.ts';
import { expectedLoraTensors, loraModules, loraScale, readPeftAdapter, type PeftLoraConfig, type PeftTensor } from '../../../src/engine/model/peft.ts';
import { LoraLayout } from '../../../src/engine/model/lora-layout.ts';
import { CheckpointIndex, layerParamName } from '../../../src/engine/model/weights.ts';
import { f32ToBf16Bits, f32ToF16Bits } from '../../../src/engine/share/dtype.ts';
import { mergeExport } from '../../../src/engine/share/merge-export.ts';
import { memorySinks } from '../../../src/engine/share/sinks.ts';
import { fixturesDir } from '../../helpers/fixtures.ts';
import { freshSeed, randn, relError, rng } from '../../helpers/numeric.ts';

const memOpen = (files: Map<string, Uint8Array>) => async (n: string) => {
  const f = files.get(n);
  if (!f) throw new Error(`no ${n}`);
  return bytesSource(f, n);
};

async function mergeFixture(family: string, dtype: 'f32' | 'bf16' | 'f16') {
  const dir = fixturesDir(family);
  const configJson = readFileSync(`${dir}/config.json`, 'utf8');
  const spec = parseModelConfig(configJson);
  const base = await CheckpointIndex.open(spec, (n) => fileSource(`${dir}/${n}`), ['model.safetensors']);
  const ad = `${dir}/adapter_after_5_steps`;
  const adapter = await readPeftAdapter(readFileSync(`${ad}/adapter_config.json`, 'utf8'), await fileSource(`${ad}/adapter_model.safetensors`), spec);
  const out = memorySinks();
  await mergeExport(base, adapter, out.open, { dtype, configJson, stopTokenIds: [7] });
  return { spec, out, merged: await CheckpointIndex.open(spec, memOpen(out.files), [...out.files.keys()]) };
}

describe('merged export', () => {
  it('bf16 and f16 exports equal the f32 export rounded (single file, dtype in config.json, stop ids in generation_config)', async () => {
    const f32 = await mergeFixture('qwen2', 'f32');
    for (const dtype of ['bf16', 'f16'] as const) {
      const low = await mergeFixture('qwen2', dtype);
      expect([...low.out.files.keys()].sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors']);
      expect(JSON.parse(new TextDecoder().decode(low.out.files.get('config.json')!)).dtype).toBe(dtype === 'bf16' ? 'bfloat16' : 'float16');
      expect(JSON.parse(new TextDecoder().decode(low.out.files.get('generation_config.json')!)).eos_token_id).toEqual([...low.spec.eosTokenIds, 7]);
      const st = await SafetensorsFile.open(bytesSource(low.out.files.get('model.safetensors')!));
      expect(st.entry('model.layers.0.self_attn.q_proj.weight').dtype).toBe(dtype === 'bf16' ? 'BF16' : 'F16');
      for (const p of f32.merged.params) {
        const ref = await f32.merged.read(p.name);
        const got = await low.merged.read(p.name);
        // every element is the f32 value rounded to nearest even
        const conv = dtype === 'bf16' ? (x: number) => new Float32Array(new Uint32Array([f32ToBf16Bits(x) << 16]).buffer)[0]! : (x: number) => f16ToF32(f32ToF16Bits(x));
        expect(got, p.name).toEqual(Float32Array.from(ref, conv));
        expect(relError(got, ref), p.name).toBeLessThan(dtype === 'bf16' ? 4e-3 : 5e-4);
      }
    }
  });

  it('f16 conversion rounds to nearest even across normal, subnormal, overflow and special values', () => {
    const seed = freshSeed();
    const random = rng(seed);
    const cases = [0, -0, 1, -2.5, 65504, 65520, 1e6, 6e-8, 2.98e-8, 5.96e-8, 1e-5, Infinity, -Infinity, 1 + 2 ** -11, 1 + 3 * 2 ** -11];
    for (let i = 0; i < 2000; i++) cases.push((random() - 0.5) * 2 ** Math.floor(random() * 40 - 28));
    for (const x of cases) {
      const h = f16ToF32(f32ToF16Bits(x));
      // the nearest f16 neighbours of x bracket it; h is one of them and no f16 is closer
      let best = Infinity;
      for (let b = 0; b < 0x7c00; b++) {
        const v = f16ToF32(b) * Math.sign(x || 1);
        best = Math.min(best, Math.abs(v - Math.fround(x)));
        if (best === 0) break;
      }
      if (Math.abs(x) >= 65520) expect(Math.abs(h), `${x}`).toBe(Infinity);
      else expect(Math.abs(h - Math.fround(x)), `${x} seed ${seed}`).toBe(best);
    }
    expect(Number.isNaN(f16ToF32(f32ToF16Bits(NaN)))).toBe(true);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
  });

  it('internlm2: the merged wqkv holds q/k/v + s·B·A in its packed row order (random adapter)', async () => {
    const seed = freshSeed();
    const dir = fixturesDir('internlm2');
    const configJson = readFileSync(`${dir}/config.json`, 'utf8');
    const spec = parseModelConfig(configJson);
    const base = await CheckpointIndex.open(spec, (n) => fileSource(`${dir}/${n}`), ['model.safetensors']);
    const config: PeftLoraConfig = { r: 4, loraAlpha: 16, loraDropout: 0, targetModules: loraModules('internlm2'), baseModelNameOrPath: null };
    const random = rng(seed);
    const tensors = new Map<string, PeftTensor>();
    for (const e of expectedLoraTensors(spec, config)) tensors.set(e.key, { shape: e.shape, data: randn(e.shape[0] * e.shape[1], random, 0.1) });
    const out = memorySinks();
    await mergeExport(base, { config, tensors }, out.open, { dtype: 'f32', configJson });
    const merged = await CheckpointIndex.open(spec, memOpen(out.files), [...out.files.keys()]);
    // Reference through LoraLayout: member rows of B (q/k/v in our order) times the shared A.
    const layout = new LoraLayout(spec, config);
    const flat = layout.packPeft(tensors);
    const s = loraScale(config);
    for (let l = 0; l < spec.layers; l++) {
      for (const kind of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) {
        const { group, member } = layout.groupFor(l, kind)!;
        const m = group.members[member]!;
        const A = flat.subarray(layout.optimizer.slot(group.aName).offset);
        const B = flat.subarray(layout.optimizer.slot(m.bName).offset);
        const w = await base.read(layerParamName(l, kind));
        const ref = new Float32Array(w.length);
        for (let o = 0; o < m.out; o++) for (let i = 0; i < group.in; i++) {
          let acc = 0;
          for (let k = 0; k < config.r; k++) acc += B[o * config.r + k]! * A[k * group.in + i]!;
          ref[o * group.in + i] = w[o * group.in + i]! + s * acc;
        }
        expect(relError(await merged.read(layerParamName(l, kind)), ref), `layer ${l} ${kind} seed ${seed}`).toBeLessThan(1e-6);
      }
    }
  });
});
