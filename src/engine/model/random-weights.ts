/**
 * A base model of any shape with seeded random weights, built directly on the GPU (no checkpoint):
 * benchmarks at the real 1.8B shapes where no download is possible, and the offline demo model.
 * Projections ~ N(0, 0.02) like HF's initializer_range, norms 1.
 */
import type { GpuContext } from '../gpu/context.ts';
import { seededGaussian } from '../random.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { allocQ4Weight, prepareQuantizeQ4, Q4_GROUP } from '../kernels/quant4.ts';
import { cacheInt8Bounds } from '../kernels/quant4-mma.ts';
import { int8MatmulSupport } from '../gpu/features.ts';
import { PROJECTIONS, rowsPerBinding, type BaseWeights, type LayerWeights, type Projection, type ProjectionKind, type RowBlock } from './base-weights.ts';
import type { ModelSpec } from './config.ts';
import { layerParamShape } from './weights.ts';


export interface RandomWeightsOptions {
  seed: number;
  quantize: boolean;
  std?: number;
  /**
   * Random values generated once and tiled over every tensor (large models: generating 1.8B values on
   * the CPU takes minutes; the benchmark needs the shapes, not independence). 0 = every value fresh.
   */
  poolValues?: number;
}

export async function randomBaseWeights(ctx: GpuContext, spec: ModelSpec, o: RandomWeightsOptions): Promise<BaseWeights> {
  const std = o.std ?? 0.02;
  // An odd pool length, so the tiling never lines up with rows: a row-aligned pool (2^22 = 2048 rows of
  // 2048) made whole lm_head rows repeat, every logit tied with another, and sampling then took its exact
  // tie path on every token — the decode benchmark measured that instead of the common case.
  const pool = o.poolValues ? seededGaussian(o.poolValues | 1, o.seed, std) : null;
  let seed = o.seed;
  const values = (n: number): Float32Array => {
    seed = (seed * 1664525 + 1013904223) >>> 0;
    if (!pool) return seededGaussian(n, seed, std);
    const out = new Float32Array(n);
    const start = seed % pool.length;
    for (let i = 0; i < n; i++) out[i] = pool[(start + i) % pool.length]!;
    return out;
  };
  const table = (label: string, rows: number): RowBlock[] => {
    const per = rowsPerBinding(ctx, spec.hidden);
    const blocks: RowBlock[] = [];
    for (let row0 = 0; row0 < rows; row0 += per) {
      const n = Math.min(per, rows - row0);
      blocks.push({ tensor: ctx.upload(`${label}[${row0}:${row0 + n}]`, [n, spec.hidden], values(n * spec.hidden)), row0, rows: n });
    }
    return blocks;
  };
  const ones = (label: string, n: number): Tensor => ctx.upload(label, [n], new Float32Array(n).fill(1));
  const projection = async (label: string, out: number, inF: number): Promise<Projection> => {
    if (!o.quantize || inF % Q4_GROUP !== 0) return { kind: 'f32', w: ctx.upload(label, [out, inF], values(out * inF)), out, in: inF };
    const w = allocQ4Weight(ctx, label, out, inF);
    const rows = Math.max(1, Math.min(out, Math.floor((16 << 20) / (inF * 4))));
    const staging = ctx.tensor(`${label} staging`, [rows, inF]);
    for (let r0 = 0; r0 < out; r0 += rows) {
      const n = Math.min(rows, out - r0);
      ctx.write(staging, values(n * inF));
      await ctx.run(await prepareQuantizeQ4(ctx, staging, w, r0, n, 'f32'));
    }
    ctx.release(staging);
    if (int8MatmulSupport(ctx.features).ok) await cacheInt8Bounds(ctx, w);
    return { kind: 'q4', w, out, in: inF };
  };
  const embed = table('embed', spec.vocabSize);
  const lmHead = spec.tieWordEmbeddings ? embed : table('lm_head', spec.vocabSize);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < spec.layers; l++) {
    const proj = {} as Record<ProjectionKind, Projection>;
    for (const kind of PROJECTIONS) {
      const [out, inF] = layerParamShape(spec, kind) as [number, number];
      proj[kind] = await projection(`layers.${l}.${kind}`, out, inF);
    }
    const bias: Partial<Record<ProjectionKind, Tensor>> = {};
    if (spec.qkvBias) for (const k of ['q', 'k', 'v'] as const) bias[k] = ctx.upload(`layers.${l}.${k}_bias`, [proj[k].out], values(proj[k].out));
    layers.push({
      attnNorm: ones(`layers.${l}.attn_norm`, spec.hidden),
      mlpNorm: ones(`layers.${l}.mlp_norm`, spec.hidden),
      qNorm: spec.qkNorm ? ones(`layers.${l}.q_norm`, spec.headDim) : null,
      kNorm: spec.qkNorm ? ones(`layers.${l}.k_norm`, spec.headDim) : null,
      proj,
      bias,
    });
  }
  return { spec, embed, lmHead, finalNorm: ones('final_norm', spec.hidden), layers, quantized: o.quantize };
}
