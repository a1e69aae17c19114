import rmsnormWgsl from '../../../shaders/rmsnorm.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { withColsum } from './colsum.ts';
import { grid1d } from './grid.ts';

export const RMSNORM_SHADER = { name: 'rmsnorm.wgsl', code: rmsnormWgsl };

const WG = 256;
const SOFTWARE_WG = 64;
const DW_TILE = { COLS: 64, LANES: 4 };
const CHUNK_ROWS = 64;

export interface RmsNormShape {
  /** Rows: tokens, or tokens·heads for per-head q_norm/k_norm. */
  rows: number;
  /** Row length: hidden size, or head_dim. */
  dim: number;
  eps: number;
}

function check(op: string, what: string, t: Tensor, need: number): void {
  if (t.dtype !== 'f32') throw new Error(`${op}: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  const have = t.byteSize / 4;
  if (have < need) throw new Error(`${op}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${need}`);
}

/**
 * Layout for a row length: vec4 when dim % 4 == 0; T threads per row = the largest power of two ≤ units
 * (4 ≤ T ≤ WG), so 1-2 units per thread below 2·WG units. On CPU adapters one invocation per row (T = 1) in
 * workgroups of 64 rows: the per-row tree reduction's barriers are what costs there (22 → ~2 ms for 432
 * rows of 64 on SwiftShader), and a CPU core walks a row fastest on its own.
 */
function layout(dim: number, software: boolean): { vec4: boolean; units: number; T: number; WG: number } {
  const vec4 = dim % 4 === 0;
  const units = vec4 ? dim / 4 : dim;
  if (software) return { vec4, units, T: 1, WG: SOFTWARE_WG };
  let T = 4;
  while (T < WG && T * 2 < units + 1) T *= 2;
  return { vec4, units, T, WG };
}

function params(ctx: GpuContext, label: string, { rows, dim, eps }: RmsNormShape, units: number, chunks = 0): GPUBuffer {
  return ctx.uniforms(`${label} params`, [
    ['u32', rows],
    ['u32', units],
    ['u32', dim],
    ['f32', eps],
    ['u32', CHUNK_ROWS],
    ['u32', chunks],
    ['u32', 0],
    ['u32', 0],
  ]);
}

export interface RmsNormForwardOptions {
  /**
   * Fused residual add: `x` is the residual stream h, updated in place to h + delta before it is normed
   * (the engine's `h = h + attn; n = rmsnorm(h)` in one pass).
   */
  residualDelta?: Tensor;
  /**
   * With residualDelta: write the sum x + delta here instead of into x (x is left intact), and norm it.
   * Training wants this: each layer's input h is kept for the backward of the norm that read it.
   */
  residualOut?: Tensor;
  /** Force one invocation per row (true) or the per-row workgroup reduction (false); default: per row on CPU adapters. */
  software?: boolean;
}

/**
 * y = x · rstd · w over rows of x [rows, dim]; saves rstd [rows] for backward.
 * With opts.residualDelta, x += delta first (x is written), then normed; with opts.residualOut too, the
 * sum goes to residualOut and x is only read.
 */
export async function prepareRmsNormForward(ctx: GpuContext, x: Tensor, w: Tensor, y: Tensor, rstd: Tensor, shape: RmsNormShape, opts: RmsNormForwardOptions = {}): Promise<KernelDispatch[]> {
  const { rows, dim } = shape;
  const op = 'rmsnorm_forward';
  check(op, 'x', x, rows * dim);
  check(op, 'w', w, dim);
  check(op, 'y', y, rows * dim);
  check(op, 'rstd', rstd, rows);
  const delta = opts.residualDelta;
  const hout = opts.residualOut;
  if (delta) check(op, 'residual delta', delta, rows * dim);
  if (hout) {
    if (!delta) throw new Error(`${op}: residualOut '${hout.label}' needs residualDelta`);
    check(op, 'residual out', hout, rows * dim);
  }
  const { vec4, units, T, WG } = layout(dim, opts.software ?? ctx.features.software);
  const label = `rmsnorm${hout ? '+residual→out' : delta ? '+residual' : ''} ${rows}×${dim}`;
  const defines = { VEC4: vec4, RESIDUAL: !!delta && !hout, RESIDUAL_OUT: !!hout };
  const pipeline = await ctx.pipeline({ shader: withColsum(ctx, RMSNORM_SHADER), entryPoint: op, defines, constants: { WG, T } });
  const resources = [params(ctx, label, shape, units), x, w, y, rstd, ...(delta ? [delta] : []), ...(hout ? [hout] : [])];
  return [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, resources), workgroups: grid1d(ctx, Math.ceil(rows / (WG / T)), label) }];
}

export interface RmsNormBackwardOptions {
  /** dx += instead of dx = (the residual stream's gradient, which already holds the skip path's term). */
  accumulate?: boolean;
  /** As RmsNormForwardOptions.software. */
  software?: boolean;
}

/**
 * dx = rstd·w·dy − x·rstd³/dim·Σ dy·w·x (activation grad, written; added with opts.accumulate).
 * x is the normed input (h after a fused residual add).
 */
export async function prepareRmsNormBackward(ctx: GpuContext, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dx: Tensor, shape: RmsNormShape, opts: RmsNormBackwardOptions = {}): Promise<KernelDispatch[]> {
  const { rows, dim } = shape;
  const op = 'rmsnorm_backward';
  for (const [n, t, e] of [['dy', dy, rows * dim], ['x', x, rows * dim], ['w', w, dim], ['rstd', rstd, rows], ['dx', dx, rows * dim]] as const) check(op, n, t, e);
  const { vec4, units, T, WG } = layout(dim, opts.software ?? ctx.features.software);
  const label = `rmsnorm_backward${opts.accumulate ? ' (dx +=)' : ''} ${rows}×${dim}`;
  const pipeline = await ctx.pipeline({ shader: withColsum(ctx, RMSNORM_SHADER), entryPoint: op, defines: { VEC4: vec4, ACCUMULATE_DX: !!opts.accumulate }, constants: { WG, T } });
  const resources = [params(ctx, label, shape, units), dy, x, rstd, w, dx];
  return [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, resources), workgroups: grid1d(ctx, Math.ceil(rows / (WG / T)), label) }];
}

/** f32 elements of scratch that prepareRmsNormDw needs (the engine allocates and reuses it). */
export function rmsNormDwScratchElems({ rows, dim }: { rows: number; dim: number }): number {
  return Math.max(1, Math.ceil(rows / CHUNK_ROWS)) * dim;
}

/** dw += Σ_rows dy·x·rstd (parameter grad, accumulated), deterministic: row-chunk partials into scratch, then an ordered sum. */
export async function prepareRmsNormDw(ctx: GpuContext, dy: Tensor, x: Tensor, rstd: Tensor, dw: Tensor, scratch: Tensor, shape: RmsNormShape): Promise<KernelDispatch[]> {
  const { rows, dim } = shape;
  const op = 'rmsnorm_dw';
  for (const [n, t, e] of [['dy', dy, rows * dim], ['x', x, rows * dim], ['rstd', rstd, rows], ['dw', dw, dim], ['scratch', scratch, rmsNormDwScratchElems(shape)]] as const) check(op, n, t, e);
  const { vec4, units } = layout(dim, false);
  const chunks = Math.max(1, Math.ceil(rows / CHUNK_ROWS));
  const label = `rmsnorm_dw ${rows}×${dim}`;
  const p = params(ctx, label, shape, units, chunks);
  const partial = await ctx.pipeline({ shader: withColsum(ctx, RMSNORM_SHADER), entryPoint: 'rmsnorm_dw_partial', defines: { VEC4: vec4 }, constants: DW_TILE });
  const reduce = await ctx.pipeline({ shader: withColsum(ctx, RMSNORM_SHADER), entryPoint: 'rmsnorm_dw_reduce', defines: { VEC4: vec4 }, constants: DW_TILE });
  const colBlocks = Math.ceil(units / DW_TILE.COLS);
  if (chunks > ctx.limits.maxComputeWorkgroupsPerDimension) throw new Error(`${label}: ${chunks} row chunks exceed the workgroup grid`);
  return [
    { label: `${label} partial`, pipeline: partial, bindGroup: ctx.bindGroup(`${label} partial`, partial, [p, dy, x, rstd, scratch]), workgroups: [colBlocks, chunks, 1] },
    { label: `${label} reduce`, pipeline: reduce, bindGroup: ctx.bindGroup(`${label} reduce`, reduce, [p, scratch, dw]), workgroups: [colBlocks, 1, 1] },
  ];
}

// ---- convenience wrappers (tools and tests: prepare, run once, wait) ----------------------------------

export async function rmsNormForward(ctx: GpuContext, x: Tensor, w: Tensor, y: Tensor, rstd: Tensor, shape: RmsNormShape, opts: RmsNormForwardOptions = {}): Promise<void> {
  await ctx.run(await prepareRmsNormForward(ctx, x, w, y, rstd, shape, opts));
}

export async function rmsNormBackward(ctx: GpuContext, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dx: Tensor, shape: RmsNormShape, opts: RmsNormBackwardOptions = {}): Promise<void> {
  await ctx.run(await prepareRmsNormBackward(ctx, dy, x, w, rstd, dx, shape, opts));
}

export async function rmsNormDw(ctx: GpuContext, dy: Tensor, x: Tensor, rstd: Tensor, dw: Tensor, shape: RmsNormShape): Promise<void> {
  const scratch = ctx.tensor('rmsnorm_dw scratch', [rmsNormDwScratchElems(shape)]);
  try {
    await ctx.run(await prepareRmsNormDw(ctx, dy, x, rstd, dw, scratch, shape));
  } finally {
    ctx.release(scratch);
  }
}
