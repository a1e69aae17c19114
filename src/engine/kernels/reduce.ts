import reduceWgsl from '../../../shaders/reduce.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';

/** The file as other kernel files `#include "reduce.wgsl"` it (for workgroup_sum / workgroup_max). */
export const REDUCE_SHADER = { name: 'reduce.wgsl', code: reduceWgsl };

/** Makes `#include "reduce.wgsl"` resolvable in this context's pipeline cache (idempotent). */
export function registerReduceInclude(ctx: GpuContext): void {
  ctx.pipelines.registerInclude(REDUCE_SHADER);
}

/** sum: Σx, sumsq: Σx², max: max x, norm2: sqrt(Σx²). The result is multiplied by `scale` (mean = sum with 1/n). */
export type ReduceOp = 'sum' | 'sumsq' | 'max' | 'norm2';

/** Threads per workgroup (a power of two that fits SwiftShader's 256 and every WebGPU device). */
export const REDUCE_WG = 256;
/** Upper bound on pass-1 workgroups (= partials) of a whole-buffer reduction. */
const MAX_PARTIALS = 2048;
/** Pass-1 workgroups get at least this many elements each (fewer, fuller workgroups on small inputs). */
const MIN_PER_WORKGROUP = REDUCE_WG * 4;

function defines(op: ReduceOp): Record<string, boolean> {
  return { REDUCE_KERNELS: true, SQUARE: op === 'sumsq' || op === 'norm2', MAX: op === 'max', SQRT: op === 'norm2' };
}

function checkF32(what: string, t: Tensor, needElems: number): void {
  if (t.dtype !== 'f32') throw new Error(`reduce: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  if (t.byteSize / 4 < needElems) throw new Error(`reduce: ${what} '${t.label}' ${shapeString(t.shape)} holds ${t.byteSize / 4} elements, needs ${needElems}`);
}

/** A workgroup grid of `n` workgroups folded into 2D when it exceeds the per-dimension limit. */
export function grid2d(ctx: GpuContext, n: number, what: string): [number, number, number] {
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  if (n <= max) return [Math.max(1, n), 1, 1];
  const y = Math.ceil(n / max);
  if (y > max) throw new Error(`${what}: ${n} workgroups exceed this adapter's grid`);
  return [max, y, 1];
}

export interface ReduceRowsOptions {
  rows: number;
  cols: number;
  op: ReduceOp;
  /** Elements between the starts of consecutive rows (default cols). */
  rowStride?: number;
  /** Element offset of row 0 in the input (default 0). */
  offset?: number;
  /** Element offset in `out` where row 0's result goes (default 0). */
  outIndex?: number;
  scale?: number;
}

/** Prepares out[outIndex + r] = scale · op over row r of `input` (one workgroup per row). */
export async function prepareReduceRows(ctx: GpuContext, input: Tensor, out: Tensor, o: ReduceRowsOptions): Promise<KernelDispatch> {
  const stride = o.rowStride ?? o.cols;
  const offset = o.offset ?? 0;
  const outIndex = o.outIndex ?? 0;
  if (o.rows < 1 || o.cols < 1) throw new Error(`reduce_rows: needs at least one row and one column (got ${o.rows}×${o.cols})`);
  checkF32('input', input, offset + (o.rows - 1) * stride + o.cols);
  checkF32('output', out, outIndex + o.rows);
  const pipeline = await ctx.pipeline({ shader: REDUCE_SHADER, entryPoint: 'reduce_rows', defines: defines(o.op), constants: { REDUCE_WG } });
  const label = `reduce_rows ${o.op} ${o.rows}×${o.cols}`;
  const uniforms = ctx.uniforms(`${label} params`, [
    ['u32', o.rows],
    ['u32', o.cols],
    ['u32', stride],
    ['u32', offset],
    ['u32', outIndex],
    ['f32', o.scale ?? 1],
    ['u32', 0],
    ['u32', 0],
  ]);
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, input, out]), workgroups: grid2d(ctx, o.rows, label) };
}

export interface ReduceAllOptions {
  op: ReduceOp;
  /** Elements to reduce, from `offset` (default 0). */
  length: number;
  offset?: number;
  /** Where in `out` the scalar goes (default 0). */
  outIndex?: number;
  scale?: number;
}

/** A two-pass whole-buffer reduction: its dispatches, its partials workspace, and a way to change the scale. */
export interface PreparedReduction {
  readonly dispatches: readonly KernelDispatch[];
  /** Pass-1 results, one per workgroup (a pool tensor owned by this reduction). */
  readonly partials: Tensor;
  /** Rewrites the final multiplier (e.g. 1/num_supervised for a mean) without re-preparing. */
  setScale(scale: number): void;
  /** Returns the partials workspace to the pool. */
  release(): void;
}

/** How a length is split over pass-1 workgroups: deterministic for a given length. */
export function partialLayout(length: number): { perWorkgroup: number; workgroups: number } {
  const per = Math.max(MIN_PER_WORKGROUP, Math.ceil(Math.ceil(length / MAX_PARTIALS) / REDUCE_WG) * REDUCE_WG);
  return { perWorkgroup: per, workgroups: Math.max(1, Math.ceil(length / per)) };
}

/**
 * Prepares out[outIndex] = scale · op(input[offset .. offset+length)) as two dispatches: pass 1 reduces
 * contiguous slices into partials (≤ 2048 workgroups), pass 2 reduces the partials in one workgroup.
 * Deterministic: the slicing depends only on the length. length 0 gives 0 (sum) or the lowest f32 (max).
 */
export async function prepareReduceAll(ctx: GpuContext, input: Tensor, out: Tensor, o: ReduceAllOptions): Promise<PreparedReduction> {
  const offset = o.offset ?? 0;
  const outIndex = o.outIndex ?? 0;
  checkF32('input', input, offset + o.length);
  checkF32('output', out, outIndex + 1);
  const { perWorkgroup, workgroups } = partialLayout(o.length);
  const [p1, p2] = await Promise.all([
    ctx.pipeline({ shader: REDUCE_SHADER, entryPoint: 'reduce_partial', defines: defines(o.op), constants: { REDUCE_WG } }),
    // Pass 2 combines partials that are already squared: only MAX and SQRT matter there.
    ctx.pipeline({ shader: REDUCE_SHADER, entryPoint: 'reduce_final', defines: defines(o.op), constants: { REDUCE_WG } }),
  ]);
  const label = `reduce ${o.op} ${o.length}`;
  const partials = ctx.tensor(`${label} partials`, [workgroups]);
  const u1 = ctx.uniforms(`${label} pass 1`, [
    ['u32', 0],
    ['u32', o.length],
    ['u32', perWorkgroup],
    ['u32', offset],
    ['u32', 0],
    ['f32', 1],
    ['u32', 0],
    ['u32', 0],
  ]);
  const pass2Fields = (scale: number) =>
    [
      ['u32', 0],
      ['u32', workgroups],
      ['u32', 0],
      ['u32', 0],
      ['u32', outIndex],
      ['f32', scale],
      ['u32', 0],
      ['u32', 0],
    ] as const;
  const u2 = ctx.uniforms(`${label} pass 2`, pass2Fields(o.scale ?? 1));
  const dispatches: KernelDispatch[] = [
    { label: `${label} pass 1`, pipeline: p1, bindGroup: ctx.bindGroup(`${label} pass 1`, p1, [u1, input, partials]), workgroups: [workgroups, 1, 1] },
    { label: `${label} pass 2`, pipeline: p2, bindGroup: ctx.bindGroup(`${label} pass 2`, p2, [u2, partials, out]), workgroups: [1, 1, 1] },
  ];
  return {
    dispatches,
    partials,
    setScale: (scale) => ctx.writeUniforms(u2, pass2Fields(scale)),
    release: () => ctx.release(partials),
  };
}

/** Convenience for tools and tests: reduce each row once and wait. */
export async function reduceRows(ctx: GpuContext, input: Tensor, out: Tensor, o: ReduceRowsOptions): Promise<void> {
  await ctx.run([await prepareReduceRows(ctx, input, out, o)]);
}

/** Convenience for tools and tests: reduce a whole range once and wait. */
export async function reduceAll(ctx: GpuContext, input: Tensor, out: Tensor, o: ReduceAllOptions): Promise<void> {
  const r = await prepareReduceAll(ctx, input, out, o);
  try {
    await ctx.run(r.dispatches);
  } finally {
    r.release();
  }
}
