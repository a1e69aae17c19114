/**
 * The frozen base model on the GPU: each projection either f32 (LoRA) or 4-bit (QLoRA, quantized on the
 * GPU from row chunks as they stream from the checkpoint, so no full-precision copy of the model ever
 * sits in GPU memory), norms and biases in f32, and the embedding / lm_head tables split into row blocks
 * that each fit one storage binding.
 */
import type { GpuContext } from '../gpu/context.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { allocQ4Weight, prepareQuantizeQ4, Q4_GROUP, releaseQ4Weight, type Q4Weight } from '../kernels/quant4.ts';
import { cacheInt8Bounds } from '../kernels/quant4-mma.ts';
import { int8MatmulSupport } from '../gpu/features.ts';
import type { ModelSpec } from './config.ts';
import { layerParamName, type CheckpointIndex, type LayerParamKind } from './weights.ts';

export type Projection = { kind: 'f32'; w: Tensor; out: number; in: number } | { kind: 'q4'; w: Q4Weight; out: number; in: number };

export const PROJECTIONS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type ProjectionKind = (typeof PROJECTIONS)[number];

export interface LayerWeights {
  attnNorm: Tensor;
  mlpNorm: Tensor;
  qNorm: Tensor | null;
  kNorm: Tensor | null;
  proj: Record<ProjectionKind, Projection>;
  bias: Partial<Record<ProjectionKind, Tensor>>;
}

/** A table [rows, hidden] split into row blocks (vocab order). */
export interface RowBlock {
  tensor: Tensor;
  row0: number;
  rows: number;
}

export interface BaseWeights {
  spec: ModelSpec;
  embed: RowBlock[];
  /** The embedding's blocks when tied. */
  lmHead: RowBlock[];
  finalNorm: Tensor;
  layers: LayerWeights[];
  quantized: boolean;
}

export interface LoadProgress {
  status: 'loading';
  param: string;
  done: number;
  total: number;
}

export interface LoadOptions {
  /** 4-bit base (QLoRA). Projections whose input size is not a multiple of the 4-bit group stay f32. */
  quantize: boolean;
  onProgress?: (p: LoadProgress) => void;
  /** Rows streamed per quantizer chunk (bounds the f32 staging tensor). */
  chunkBytes?: number;
}

/** Rows per block so that a [rows, cols] f32 block fits one binding (and one buffer). */
export function rowsPerBinding(ctx: GpuContext, cols: number): number {
  const limit = Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
  return Math.max(1, Math.floor(limit / (cols * 4)));
}

async function loadTable(ctx: GpuContext, index: CheckpointIndex, name: string): Promise<RowBlock[]> {
  const p = index.param(name);
  const [rows, cols] = p.shape as [number, number];
  const per = rowsPerBinding(ctx, cols);
  const blocks: RowBlock[] = [];
  for (let row0 = 0; row0 < rows; row0 += per) {
    const n = Math.min(per, rows - row0);
    const data = await index.readRows(name, row0, n);
    blocks.push({ tensor: ctx.upload(n === rows ? name : `${name}[${row0}:${row0 + n}]`, [n, cols], data), row0, rows: n });
  }
  return blocks;
}

async function loadProjection(ctx: GpuContext, index: CheckpointIndex, name: string, quantize: boolean, chunkBytes: number): Promise<Projection> {
  const p = index.param(name);
  const [out, inF] = p.shape as [number, number];
  if (!quantize || inF % Q4_GROUP !== 0) return { kind: 'f32', w: ctx.upload(name, [out, inF], await index.read(name)), out, in: inF };
  const w = allocQ4Weight(ctx, name, out, inF);
  const rowsPerChunk = Math.max(1, Math.min(out, Math.floor(chunkBytes / (inF * 4))));
  const staging = ctx.tensor(`${name} f32 staging`, [rowsPerChunk, inF]);
  try {
    for (let row0 = 0; row0 < out; row0 += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, out - row0);
      ctx.write(staging, await index.readRows(name, row0, n));
      await ctx.run(await prepareQuantizeQ4(ctx, staging, w, row0, n, 'f32'));
    }
  } finally {
    ctx.release(staging);
  }
  // Where training will run the base on tensor cores, its int8 weight grid is computed once, here.
  if (int8MatmulSupport(ctx.features).ok) await cacheInt8Bounds(ctx, w);
  return { kind: 'q4', w, out, in: inF };
}

export async function loadBaseWeights(ctx: GpuContext, index: CheckpointIndex, opts: LoadOptions): Promise<BaseWeights> {
  const spec = index.spec;
  const chunkBytes = opts.chunkBytes ?? 32 << 20;
  const total = index.params.length;
  let done = 0;
  const tick = (param: string) => opts.onProgress?.({ status: 'loading', param, done: ++done, total });
  const has = (name: string) => index.params.some((p) => p.name === name);

  const embed = await loadTable(ctx, index, 'embed');
  tick('embed');
  const lmParam = index.param('lm_head');
  const lmHead = lmParam.tied ? embed : await loadTable(ctx, index, 'lm_head');
  tick('lm_head');
  const finalNorm = ctx.upload('final_norm', [spec.hidden], await index.read('final_norm'));
  tick('final_norm');
  const layers: LayerWeights[] = [];
  for (let l = 0; l < spec.layers; l++) {
    const vec = async (kind: LayerParamKind): Promise<Tensor | null> => {
      const name = layerParamName(l, kind);
      if (!has(name)) return null;
      const p = index.param(name);
      const t = ctx.upload(name, p.shape, await index.read(name));
      tick(name);
      return t;
    };
    const proj = {} as Record<ProjectionKind, Projection>;
    const bias: Partial<Record<ProjectionKind, Tensor>> = {};
    for (const kind of PROJECTIONS) {
      const name = layerParamName(l, kind);
      proj[kind] = await loadProjection(ctx, index, name, opts.quantize, chunkBytes);
      tick(name);
      const b = await vec(`${kind}_bias` as LayerParamKind);
      if (b) bias[kind] = b;
    }
    layers.push({ attnNorm: (await vec('attn_norm'))!, mlpNorm: (await vec('mlp_norm'))!, qNorm: await vec('q_norm'), kNorm: await vec('k_norm'), proj, bias });
  }
  return { spec, embed, lmHead, finalNorm, layers, quantized: opts.quantize };
}

export function releaseBaseWeights(ctx: GpuContext, w: BaseWeights): void {
  const seen = new Set<Tensor>();
  const rel = (t: Tensor | null | undefined) => {
    if (t && !seen.has(t)) {
      seen.add(t);
      ctx.release(t);
    }
  };
  for (const b of [...w.embed, ...w.lmHead]) rel(b.tensor);
  rel(w.finalNorm);
  for (const l of w.layers) {
    for (const t of [l.attnNorm, l.mlpNorm, l.qNorm, l.kNorm, ...Object.values(l.bias)]) rel(t);
    for (const p of Object.values(l.proj)) (p.kind === 'f32' ? rel(p.w) : releaseQ4Weight(ctx, p.w));
  }
}
