import ropeWgsl from '../../../shaders/rope.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { ropeInvFreq as modelRopeInvFreq, type RopeSpec } from '../model/config.ts';
import { grid1d } from './grid.ts';

export const ROPE_SHADER = { name: 'rope.wgsl', code: ropeWgsl };

const WG = 256;

// ---- inverse frequencies (CPU, float64) --------------------------------------------------------------

/**
 * inv_freq[i] for i < headDim/2, in float64, following transformers' modeling_rope_utils:
 * - default: theta^(−2i/d)                                        (_compute_default_rope_parameters)
 * - linear: default / factor                                       (_compute_linear_scaling_rope_parameters)
 * - dynamic NTK: base = theta · ((factor·seqLen/maxPos) − (factor − 1))^(d/(d−2)) when seqLen > maxPos,
 *   else theta; then default with that base                        (_compute_dynamic_ntk_parameters)
 * - llama3: wavelen = 2π/inv; wavelen < orig/high: unchanged; wavelen > orig/low: inv/factor; between:
 *   (1 − s)·inv/factor + s·inv with s = (orig/wavelen − low)/(high − low)   (_compute_llama3_parameters)
 * HF evaluates these in float32 (torch tensors); this evaluates them in float64 and the upload rounds once,
 * so an entry can differ from HF's by an ulp or so of float32.
 * `seqLen` only matters for dynamic scaling: the current sequence length (HF uses max(position_ids) + 1).
 */
export function ropeInvFreq(rope: RopeSpec, headDim: number, seqLen?: number): Float64Array {
  return modelRopeInvFreq({ rope, headDim }, seqLen ?? 0);
}

export function uploadInvFreq(ctx: GpuContext, invFreq: Float64Array, label = 'rope inv_freq'): Tensor {
  return ctx.upload(label, [invFreq.length], Float32Array.from(invFreq));
}

// ---- kernel ------------------------------------------------------------------------------------------

export interface RopeShape {
  tokens: number;
  heads: number;
  headDim: number;
}

/** Where the [tokens, heads, headDim] tensor sits: rows of `stride` elements (default heads·headDim), starting at `offset` (default 0). */
export interface RopeLayout {
  stride?: number;
  offset?: number;
}

export interface RopeOptions {
  /** Write here instead of rotating x in place. */
  out?: Tensor;
  /** Rotate by −θ: the backward (dx from dy). */
  inverse?: boolean;
  xLayout?: RopeLayout;
  outLayout?: RopeLayout;
  /**
   * Generation: write token t at row positions[t] of `out` (the KV cache, `outRows` rows) instead of row t,
   * and copy `storeV.src` (laid out as x) to the same rows of `storeV.out`. Positions must be < outRows.
   */
  outRowsByPosition?: { outRows: number; storeV?: { src: Tensor; out: Tensor } };
}

function check(op: string, what: string, t: Tensor, need: number, dtype: 'f32' | 'i32' = 'f32'): void {
  if (t.dtype !== dtype) throw new Error(`${op}: ${what} '${t.label}' must be ${dtype}, is ${t.dtype}`);
  const have = t.byteSize / 4;
  if (have < need) throw new Error(`${op}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${need}`);
}

/**
 * Rotates x [tokens, heads, headDim] (in place, or into opts.out) by θ = positions[t]·invFreq[i]
 * (or by −θ with opts.inverse, the backward). positions: i32 [tokens]; invFreq: f32 [headDim/2].
 */
export async function prepareRope(ctx: GpuContext, x: Tensor, positions: Tensor, invFreq: Tensor, shape: RopeShape, opts: RopeOptions = {}): Promise<KernelDispatch[]> {
  const { tokens, heads, headDim } = shape;
  const op = opts.inverse ? 'rope_backward' : 'rope';
  if (headDim % 2 !== 0) throw new Error(`${op}: head_dim must be even, got ${headDim}`);
  const half = headDim / 2;
  const xs = opts.xLayout?.stride ?? heads * headDim;
  const xo = opts.xLayout?.offset ?? 0;
  const out = opts.out;
  const os = opts.outLayout?.stride ?? heads * headDim;
  const oo = opts.outLayout?.offset ?? 0;
  if (xs < heads * headDim || (out && os < heads * headDim)) throw new Error(`${op}: a row stride is shorter than heads·head_dim (${heads * headDim})`);
  const extent = (s: number, o: number, rows = tokens) => (rows > 0 ? (rows - 1) * s + o + heads * headDim : 0);
  check(op, 'x', x, extent(xs, xo));
  const byPos = opts.outRowsByPosition;
  if (byPos && !out) throw new Error(`${op}: rows by position need an out tensor`);
  if (out) check(op, 'out', out, extent(os, oo, byPos ? byPos.outRows : tokens));
  const storeV = byPos?.storeV;
  if (storeV) {
    check(op, 'v source', storeV.src, extent(xs, xo));
    check(op, 'v out', storeV.out, extent(os, oo, byPos.outRows));
  }
  check(op, 'positions', positions, tokens, 'i32');
  check(op, 'inv_freq', invFreq, half);
  const vec4 = [half, xs, xo, ...(out ? [os, oo] : [])].every((v) => v % 4 === 0);
  const w = vec4 ? 4 : 1;
  const n = (tokens * heads * half) / w;
  const label = `${op}${out ? '' : ' (in place)'}${byPos ? ` into rows by position${storeV ? ' (+ v)' : ''}` : ''} ${tokens}×${heads}×${headDim}`;
  const params = ctx.uniforms(`${label} params`, [
    ['u32', tokens],
    ['u32', heads],
    ['u32', headDim / w],
    ['u32', half / w],
    ['u32', xs / w],
    ['u32', xo / w],
    ['u32', os / w],
    ['u32', oo / w],
    ['u32', n],
    ['f32', opts.inverse ? -1 : 1],
    ['u32', 0],
    ['u32', 0],
  ]);
  const pipeline = await ctx.pipeline({ shader: ROPE_SHADER, entryPoint: 'rope', defines: { VEC4: vec4, INPLACE: !out, OUT_ROW_POS: !!byPos, STORE_V: !!storeV }, constants: { WG } });
  const resources = [params, positions, invFreq, x, ...(out ? [out] : []), ...(storeV ? [storeV.src, storeV.out] : [])];
  return [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, resources), workgroups: grid1d(ctx, Math.ceil(n / WG), label) }];
}

/** The backward: dx = R(−θ)·dy (in place in dy, or into opts.out). */
export function prepareRopeBackward(ctx: GpuContext, dy: Tensor, positions: Tensor, invFreq: Tensor, shape: RopeShape, opts: Omit<RopeOptions, 'inverse'> = {}): Promise<KernelDispatch[]> {
  return prepareRope(ctx, dy, positions, invFreq, shape, { ...opts, inverse: true });
}

// ---- convenience wrappers (tools and tests: prepare, run once, wait) ----------------------------------

export async function rope(ctx: GpuContext, x: Tensor, positions: Tensor, invFreq: Tensor, shape: RopeShape, opts: RopeOptions = {}): Promise<void> {
  await ctx.run(await prepareRope(ctx, x, positions, invFreq, shape, opts));
}

export async function ropeBackward(ctx: GpuContext, dy: Tensor, positions: Tensor, invFreq: Tensor, shape: RopeShape, opts: Omit<RopeOptions, 'inverse'> = {}): Promise<void> {
  await ctx.run(await prepareRopeBackward(ctx, dy, positions, invFreq, shape, opts));
}
