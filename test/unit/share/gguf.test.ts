import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { fileSource } from '../../../src/node/files.ts';
import { parseModelConfig, type ModelSpec } from '../../../src/engine/model/config.ts';
import { expectedLoraTensors, loraModules, peftKey, readPeftAdapter, type PeftLoraConfig, type PeftTensor } from '../../../src/engine/model/peft.ts';
import { unpackWqkv } from '../../../src/engine/model/weights.ts';
import { GgmlType, GgufValueType, ggufPermuteRows, loraToGguf, readGguf, writeGguf } from '../../../src/engine/share/gguf.ts';
import { fixturesDir } from '../../helpers/fixtures.ts';
import { freshSeed, randn, relError, rng } from '../../helpers/numeric.ts';

const specOf = (family: string): ModelSpec => parseModelConfig(readFileSync(fixturesDir(family, 'config.json'), 'utf8'));

/** B [out, r] · A [r, in]. */
function product(B: Float32Array, A: Float32Array, out: number, r: number, inF: number): Float32Array {
  const w = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) for (let k = 0; k < r; k++) for (let i = 0; i < inF; i++) w[o * inF + i]! += B[o * r + k]! * A[k * inF + i]!;
  return w;
}

/** numpy: w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols), by explicit index arithmetic. */
function npPermute(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  const half = rows / nHead / 2;
  const out = new Float32Array(w.length);
  // out[h, i, p, :] = in[h, p, i, :]
  for (let h = 0; h < nHead; h++) for (let i = 0; i < half; i++) for (let p = 0; p < 2; p++) {
    const dst = ((h * half + i) * 2 + p) * cols;
    const src = ((h * 2 + p) * half + i) * cols;
    for (let c = 0; c < cols; c++) out[dst + c] = w[src + c]!;
  }
  return out;
}

function pairOf(g: ReturnType<typeof readGguf>, target: string) {
  const a = g.tensors.get(`${target}.lora_a`)!;
  const b = g.tensors.get(`${target}.lora_b`)!;
  return { a, b, delta: product(b.data, a.data, b.shape[0]!, a.shape[0]!, a.shape[1]!) };
}

describe('GGUF', () => {
  it('writer → reader round trip: metadata of every type, F32 and F16 tensors, 32-byte alignment', () => {
    const md = new Map([
      ['general.architecture', { type: GgufValueType.STRING, value: 'llama' }],
      ['x.u32', { type: GgufValueType.UINT32, value: 7 }],
      ['x.f32', { type: GgufValueType.FLOAT32, value: 0.5 }],
      ['x.bool', { type: GgufValueType.BOOL, value: true }],
      ['x.u64', { type: GgufValueType.UINT64, value: 1n << 40n }],
      ['x.arr', { type: GgufValueType.ARRAY, itemType: GgufValueType.STRING, value: ['a', 'bc'] }],
    ] as const);
    const t1 = { name: 't1', shape: [3, 5], type: GgmlType.F32, data: Float32Array.from({ length: 15 }, (_, i) => i / 3) };
    const t2 = { name: 't2', shape: [7], type: GgmlType.F16, data: Float32Array.from({ length: 7 }, (_, i) => i - 3.5) };
    const bytes = writeGguf(new Map(md as unknown as Map<string, never>), [t1, t2]);
    const g = readGguf(bytes);
    expect(g.version).toBe(3);
    expect(g.metadata.get('x.u64')).toEqual({ type: GgufValueType.UINT64, value: 1n << 40n });
    expect(g.metadata.get('x.arr')).toEqual({ type: GgufValueType.ARRAY, itemType: GgufValueType.STRING, value: ['a', 'bc'] });
    expect(g.tensors.get('t1')!.shape).toEqual([3, 5]);
    expect(g.tensors.get('t1')!.data).toEqual(t1.data);
    expect(g.tensors.get('t2')!.data).toEqual(t2.data); // exact in f16
    expect(new TextDecoder().decode(bytes.subarray(0, 4))).toBe('GGUF');
  });

  it('llama fixture adapter: names, metadata, and B·A of every target equals the PEFT delta after convert_hf_to_gguf\'s transform (q/k permuted)', async () => {
    const spec = specOf('llama');
    const dir = fixturesDir('llama', 'adapter_after_5_steps');
    const ad = await readPeftAdapter(readFileSync(`${dir}/adapter_config.json`, 'utf8'), await fileSource(`${dir}/adapter_model.safetensors`), spec);
    const g = readGguf(loraToGguf(spec, ad.config, ad.tensors));
    expect(g.metadata.get('general.type')).toEqual({ type: GgufValueType.STRING, value: 'adapter' });
    expect(g.metadata.get('adapter.type')).toEqual({ type: GgufValueType.STRING, value: 'lora' });
    expect(g.metadata.get('adapter.lora.alpha')).toEqual({ type: GgufValueType.FLOAT32, value: 16 });
    expect(g.metadata.get('general.architecture')).toEqual({ type: GgufValueType.STRING, value: 'llama' });
    expect(g.tensors.size).toBe(2 * 7 * spec.layers);
    const names: Record<string, string> = { q_proj: 'attn_q', k_proj: 'attn_k', v_proj: 'attn_v', o_proj: 'attn_output', gate_proj: 'ffn_gate', up_proj: 'ffn_up', down_proj: 'ffn_down' };
    for (let l = 0; l < spec.layers; l++) {
      for (const [m, gname] of Object.entries(names)) {
        const A = ad.tensors.get(peftKey('llama', l, m as 'q_proj', 'A'))!;
        const B = ad.tensors.get(peftKey('llama', l, m as 'q_proj', 'B'))!;
        const [out, r] = B.shape as [number, number];
        let ref = product(B.data, A.data, out, r, A.shape[1]!);
        if (m === 'q_proj') ref = npPermute(ref, out, A.shape[1]!, spec.nHeads);
        if (m === 'k_proj') ref = npPermute(ref, out, A.shape[1]!, spec.nKvHeads);
        const { a, b, delta } = pairOf(g, `blk.${l}.${gname}.weight`);
        expect(a.shape).toEqual([r, A.shape[1]]);
        expect(b.shape).toEqual([out, r]);
        expect(relError(delta, ref), `${l} ${m}`).toBeLessThan(1e-6);
      }
    }
    // the permutation is not the identity (the check above would miss a skipped permute otherwise)
    const q = ad.tensors.get(peftKey('llama', 0, 'q_proj', 'B'))!;
    expect(relError(ggufPermuteRows(q.data, 64, 8, 4), q.data)).toBeGreaterThan(0.5);
  });

  it('qwen2: names only, no permutation', async () => {
    const spec = specOf('qwen2');
    const dir = fixturesDir('qwen2', 'adapter_init');
    const ad = await readPeftAdapter(readFileSync(`${dir}/adapter_config.json`, 'utf8'), await fileSource(`${dir}/adapter_model.safetensors`), spec);
    const g = readGguf(loraToGguf(spec, ad.config, ad.tensors, { type: GgmlType.F16 }));
    const B = ad.tensors.get(peftKey('qwen2', 1, 'q_proj', 'B'))!;
    expect(relError(g.tensors.get('blk.1.attn_q.weight.lora_b')!.data, B.data)).toBeLessThan(1e-3); // f16
  });

  it('internlm2: wqkv split into attn_q/attn_k/attn_v sharing lora_a; q and k permuted', () => {
    const seed = freshSeed();
    const spec = specOf('internlm2');
    const config: PeftLoraConfig = { r: 4, loraAlpha: 8, loraDropout: 0, targetModules: loraModules('internlm2'), baseModelNameOrPath: null };
    const random = rng(seed);
    const tensors = new Map<string, PeftTensor>();
    for (const e of expectedLoraTensors(spec, config)) tensors.set(e.key, { shape: e.shape, data: randn(e.shape[0] * e.shape[1], random) });
    const g = readGguf(loraToGguf(spec, config, tensors));
    expect(g.tensors.size).toBe(2 * 7 * spec.layers);
    const h = spec.hidden;
    for (let l = 0; l < spec.layers; l++) {
      const A = tensors.get(peftKey('internlm2', l, 'wqkv', 'A'))!;
      const B = tensors.get(peftKey('internlm2', l, 'wqkv', 'B'))!;
      // convert_hf_to_gguf's InternLM2 transform on the full packed delta: split per KV group, permute q and k.
      const parts = unpackWqkv(product(B.data, A.data, B.shape[0]!, 4, h), spec, h);
      const qRows = spec.nHeads * spec.headDim;
      const kvRows = spec.nKvHeads * spec.headDim;
      expect(relError(pairOf(g, `blk.${l}.attn_q.weight`).delta, npPermute(parts.q, qRows, h, spec.nHeads)), `seed ${seed}`).toBeLessThan(1e-6);
      expect(relError(pairOf(g, `blk.${l}.attn_k.weight`).delta, npPermute(parts.k, kvRows, h, spec.nKvHeads))).toBeLessThan(1e-6);
      expect(relError(pairOf(g, `blk.${l}.attn_v.weight`).delta, parts.v)).toBeLessThan(1e-6);
      expect(g.tensors.get(`blk.${l}.attn_q.weight.lora_a`)!.data).toEqual(A.data);
      const w2 = tensors.get(peftKey('internlm2', l, 'w2', 'B'))!;
      expect(g.tensors.get(`blk.${l}.ffn_down.weight.lora_b`)!.data).toEqual(w2.data);
    }
  });
});
