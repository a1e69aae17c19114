import elementwiseWgsl from '../../../shaders/elementwise.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { withColsum } from './colsum.ts';
import { grid1d } from './grid.ts';

export const ELEMENTWISE_SHADER = { name: 'elementwise.wgsl', code: elementwiseWgsl };

const WG = 256;
/** bias_backward tiling: COLS columns (units) × LANES row lanes per workgroup, CHUNK_ROWS rows per partial. */
const BIAS_BWD = { COLS: 32, LANES: 8 };
const CHUNK_ROWS = 64;

function check(op: string, what: string, t: Tensor, need: number): void {
  if (t.dtype !== 'f32') throw new Error(`${op}: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  const have = t.byteSize / 4;
  if (have < need) throw new Error(`${op}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${need}`);
}

type Entry = 'add' | 'add_inplace' | 'scale_inplace' | 'copy' | 'bias_add';

function params(ctx: GpuContext, label: string, p: { n: number; start?: number; dim?: number; rows?: number; scale?: number; chunkRows?: number; chunks?: number }): GPUBuffer {
  return ctx.uniforms(`${label} params`, [
    ['u32', p.n],
    ['u32', p.start ?? 0],
    ['u32', p.dim ?? 0],
    ['u32', p.rows ?? 0],
    ['f32', p.scale ?? 1],
    ['u32', p.chunkRows ?? 0],
    ['u32', p.chunks ?? 0],
    ['u32', 0],
  ]);
}

/**
 * A flat op over n elements: vec4 over the first 4·⌊n/4⌋, then (if n is not a multiple of 4) a scalar
 * dispatch over the tail. Tensors start at offset 0 of their buffers, so the vec4 view is aligned.
 */
async function prepareFlat(ctx: GpuContext, entry: Entry, label: string, n: number, tensors: readonly Tensor[], scale = 1): Promise<KernelDispatch[]> {
  const out: KernelDispatch[] = [];
  const n4 = Math.floor(n / 4);
  if (n4 > 0) {
    const pipeline = await ctx.pipeline({ shader: withColsum(ctx, ELEMENTWISE_SHADER), entryPoint: entry, defines: { VEC4: true }, constants: { WG } });
    const l = `${label} (vec4)`;
    out.push({ label: l, pipeline, bindGroup: ctx.bindGroup(l, pipeline, [params(ctx, l, { n: n4, scale }), ...tensors]), workgroups: grid1d(ctx, Math.ceil(n4 / WG), l) });
  }
  const tail = n - 4 * n4;
  if (tail > 0) {
    const pipeline = await ctx.pipeline({ shader: withColsum(ctx, ELEMENTWISE_SHADER), entryPoint: entry, defines: { VEC4: false }, constants: { WG } });
    const l = `${label} (tail)`;
    out.push({ label: l, pipeline, bindGroup: ctx.bindGroup(l, pipeline, [params(ctx, l, { n, start: 4 * n4, scale }), ...tensors]), workgroups: grid1d(ctx, Math.ceil(tail / WG), l) });
  }
  return out;
}

/** out = a + b over the first n elements (default: all of out). */
export async function prepareAdd(ctx: GpuContext, a: Tensor, b: Tensor, out: Tensor, n = out.byteSize / 4): Promise<KernelDispatch[]> {
  for (const [w, t] of [['a', a], ['b', b], ['out', out]] as const) check('add', w, t, n);
  return prepareFlat(ctx, 'add', `add ${n}`, n, [a, b, out]);
}

/** acc += b (residual stream update). */
export async function prepareAddInPlace(ctx: GpuContext, acc: Tensor, b: Tensor, n = acc.byteSize / 4): Promise<KernelDispatch[]> {
  check('add_inplace', 'acc', acc, n);
  check('add_inplace', 'b', b, n);
  return prepareFlat(ctx, 'add_inplace', `add_inplace ${n}`, n, [acc, b]);
}

/** acc *= scale. */
export async function prepareScaleInPlace(ctx: GpuContext, acc: Tensor, scale: number, n = acc.byteSize / 4): Promise<KernelDispatch[]> {
  check('scale_inplace', 'acc', acc, n);
  return prepareFlat(ctx, 'scale_inplace', `scale_inplace ${n}`, n, [acc], scale);
}

/** dst = src (a kernel, so it can sit inside a compute pass; copyBufferToBuffer is the alternative outside one). */
export async function prepareCopy(ctx: GpuContext, src: Tensor, dst: Tensor, n = dst.byteSize / 4): Promise<KernelDispatch[]> {
  check('copy', 'src', src, n);
  check('copy', 'dst', dst, n);
  return prepareFlat(ctx, 'copy', `copy ${n}`, n, [src, dst]);
}

export interface RowsShape {
  rows: number;
  dim: number;
}

/** y[t, :] += bias for y [rows, dim] (vec4 when dim is a multiple of 4, else scalar). */
export async function prepareBiasAdd(ctx: GpuContext, y: Tensor, bias: Tensor, { rows, dim }: RowsShape): Promise<KernelDispatch[]> {
  check('bias_add', 'y', y, rows * dim);
  check('bias_add', 'bias', bias, dim);
  const vec4 = dim % 4 === 0;
  const w = vec4 ? 4 : 1;
  const n = (rows * dim) / w;
  const label = `bias_add ${rows}×${dim}`;
  const pipeline = await ctx.pipeline({ shader: withColsum(ctx, ELEMENTWISE_SHADER), entryPoint: 'bias_add', defines: { VEC4: vec4 }, constants: { WG } });
  return [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [params(ctx, label, { n, dim: dim / w }), y, bias]), workgroups: grid1d(ctx, Math.ceil(n / WG), label) }];
}

/** f32 elements of scratch that prepareBiasBackward needs for this shape (the engine allocates and reuses it). */
export function biasBackwardScratchElems({ rows, dim }: RowsShape): number {
  return Math.max(1, Math.ceil(rows / CHUNK_ROWS)) * dim;
}

/** dbias += Σ_t dy[t, :] (parameter grad, accumulated), deterministic: row-chunk partials into scratch, then an ordered sum. */
export async function prepareBiasBackward(ctx: GpuContext, dy: Tensor, dbias: Tensor, scratch: Tensor, shape: RowsShape): Promise<KernelDispatch[]> {
  const { rows, dim } = shape;
  check('bias_backward', 'dy', dy, rows * dim);
  check('bias_backward', 'dbias', dbias, dim);
  check('bias_backward', 'scratch', scratch, biasBackwardScratchElems(shape));
  const vec4 = dim % 4 === 0;
  const units = vec4 ? dim / 4 : dim;
  const chunks = Math.max(1, Math.ceil(rows / CHUNK_ROWS));
  const label = `bias_backward ${rows}×${dim}`;
  const defines = { VEC4: vec4 };
  const p = params(ctx, label, { n: 0, dim: units, rows, chunkRows: CHUNK_ROWS, chunks });
  const partial = await ctx.pipeline({ shader: withColsum(ctx, ELEMENTWISE_SHADER), entryPoint: 'bias_backward_partial', defines, constants: BIAS_BWD });
  const reduce = await ctx.pipeline({ shader: withColsum(ctx, ELEMENTWISE_SHADER), entryPoint: 'bias_backward_reduce', defines, constants: BIAS_BWD });
  const colBlocks = Math.ceil(units / BIAS_BWD.COLS);
  if (colBlocks > ctx.limits.maxComputeWorkgroupsPerDimension || chunks > ctx.limits.maxComputeWorkgroupsPerDimension) throw new Error(`${label}: too many workgroups`);
  return [
    { label: `${label} partial`, pipeline: partial, bindGroup: ctx.bindGroup(`${label} partial`, partial, [p, dy, scratch]), workgroups: [colBlocks, chunks, 1] },
    { label: `${label} reduce`, pipeline: reduce, bindGroup: ctx.bindGroup(`${label} reduce`, reduce, [p, scratch, dbias]), workgroups: [colBlocks, 1, 1] },
  ];
}

// ---- convenience wrappers (tools and tests: prepare, run once, wait) ----------------------------------

export async function add(ctx: GpuContext, a: Tensor, b: Tensor, out: Tensor, n?: number): Promise<void> {
  await ctx.run(await prepareAdd(ctx, a, b, out, n));
}
export async function addInPlace(ctx: GpuContext, acc: Tensor, b: Tensor, n?: number): Promise<void> {
  await ctx.run(await prepareAddInPlace(ctx, acc, b, n));
}
export async function scaleInPlace(ctx: GpuContext, acc: Tensor, scale: number, n?: number): Promise<void> {
  await ctx.run(await prepareScaleInPlace(ctx, acc, scale, n));
}
export async function copy(ctx: GpuContext, src: Tensor, dst: Tensor, n?: number): Promise<void> {
  await ctx.run(await prepareCopy(ctx, src, dst, n));
}
export async function biasAdd(ctx: GpuContext, y: Tensor, bias: Tensor, shape: RowsShape): Promise<void> {
  await ctx.run(await prepareBiasAdd(ctx, y, bias, shape));
}
export async function biasBackward(ctx: GpuContext, dy: Tensor, dbias: Tensor, shape: RowsShape): Promise<void> {
  const scratch = ctx.tensor('bias_backward scratch', [biasBackwardScratchElems(shape)]);
  try {
    await ctx.run(await prepareBiasBackward(ctx, dy, dbias, scratch, shape));
  } finally {
    ctx.release(scratch);
  }
}
