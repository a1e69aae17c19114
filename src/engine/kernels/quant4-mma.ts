import quant4MmaWgsl from '../../../shaders/quant4_mma.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { int8MatmulSupport } from '../gpu/features.ts';

export { int8MatmulSupport };
import type { Defines } from '../gpu/preprocess.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { f16BitsToF32, need, Q4_GROUP, registerQ4FormatInclude, type Q4Block, type Q4Weight } from './quant4.ts';
import { grid1d } from './grid.ts';

/**
 * The tensor-core path for the frozen 4-bit base (quant4_mma.wgsl): Y = X·Wᵀ and dX = dY·W as int8 × int8
 * → int32 subgroup-matrix products, activations quantized per token, W re-quantized to int8 per row
 * (forward) or per 64-column group (backward) by a pass of its own, one row block of W at a time, into a
 * scratch the matrix kernel stages as it is. See the .wgsl header for the maths.
 */
export const QUANT4_MMA_SHADER = { name: 'quant4_mma.wgsl', code: quant4MmaWgsl };

/**
 * How matmuls against the frozen 4-bit base are computed: exact f32 dequant-matmuls, or int8 tensor cores
 * (training's default where supported; the engine-level Transformer defaults to f32).
 */
export type MatmulPrecision = 'f32' | 'int8';

const TILE = 128;
const ROW_ALIGN = 64; // bytes: one reduction stage
/** |Σ| ≤ 127² · depth must stay below 2³¹. */
export const INT8_MAX_REDUCTION = 131072;

/** Bytes per row of a quantized activation with `cols` columns (zero-padded to whole 64-deep stages). */
export function int8RowBytes(cols: number): number {
  return Math.ceil(cols / ROW_ALIGN) * ROW_ALIGN;
}

/**
 * A quantized activation: int8 rows (4 per u32 word) and one f32 scale per row. Each row holds `levels`
 * blocks of rowBytes: the codes, and with 2 levels the rounding residual on a 254× finer grid after them.
 */
export interface Int8Rows {
  q: Tensor;
  scale: Tensor;
  rows: number;
  cols: number;
  rowBytes: number;
  levels: 1 | 2;
}

/**
 * Scratch for the int8 path, sized for activations up to [rows, maxCols] and row blocks of W up to
 * maxWeight weights (rows × in features).
 */
export interface Int8Scratch {
  q: Tensor;
  scale: Tensor;
  /** The weights' int8 grid bounds: per row of W (forward) or per 64-column group (backward). */
  wbound: Tensor;
  /** One row block of W on its int8 grid (q4_to_i8), one byte a weight. */
  w: Tensor;
  rows: number;
  maxCols: number;
  maxWeight: number;
}

export function allocInt8Scratch(ctx: GpuContext, rows: number, maxCols: number, maxWeight: number): Int8Scratch {
  const rowBytes = int8RowBytes(maxCols);
  return {
    q: ctx.rawTensor('int8 activations', [rows, 2 * rowBytes], 'u32', 2 * rows * rowBytes),
    scale: ctx.tensor('int8 activation scales', [rows]),
    wbound: ctx.tensor('int8 weight grid bounds', [maxCols]),
    w: ctx.rawTensor('int8 weights', [maxWeight], 'u32', Math.ceil(maxWeight / 16) * 16),
    rows,
    maxCols,
    maxWeight,
  };
}

/** The largest row block of any of these weights, in weights: what allocInt8Scratch's `maxWeight` must hold. */
export function largestQ4Block(weights: Iterable<Q4Weight>): number {
  let most = 0;
  for (const w of weights) for (const b of w.blocks) most = Math.max(most, b.rows * w.in);
  return most;
}

export function releaseInt8Scratch(ctx: GpuContext, s: Int8Scratch): void {
  ctx.release(s.q);
  ctx.release(s.scale);
  ctx.release(s.wbound);
  ctx.release(s.w);
}

interface Uniforms {
  M: number;
  N?: number;
  K?: number;
  ld?: number;
  off?: number;
  lda?: number;
  cols?: number;
  lo?: number;
}

function fields(u: Uniforms): UniformField[] {
  return [
    ['u32', u.M],
    ['u32', u.N ?? 0],
    ['u32', u.K ?? 0],
    ['u32', u.ld ?? 0],
    ['u32', u.off ?? 0],
    ['u32', u.lda ?? 0],
    ['u32', u.cols ?? 0],
    ['u32', u.lo ?? 0],
  ];
}

function shader(ctx: GpuContext): typeof QUANT4_MMA_SHADER {
  registerQ4FormatInclude(ctx);
  return QUANT4_MMA_SHADER;
}

/**
 * Quantizes rows of `src` (columns [off, off + cols) of rows with stride `ld`) to int8 with one absmax
 * scale per row, into the scratch. Runs on every device (SwiftShader included).
 */
export async function prepareQuantizeRows(
  ctx: GpuContext,
  src: Tensor,
  scratch: Int8Scratch,
  d: { rows: number; cols: number; ld?: number; off?: number; residual?: boolean },
): Promise<{ dispatch: KernelDispatch; rows: Int8Rows }> {
  const ld = d.ld ?? d.cols;
  const off = d.off ?? 0;
  const rowBytes = int8RowBytes(d.cols);
  const kern = 'quantize rows int8';
  if (d.rows > scratch.rows || d.cols > scratch.maxCols) throw new Error(`${kern}: [${d.rows}, ${d.cols}] exceeds the scratch [${scratch.rows}, ${scratch.maxCols}]`);
  need(kern, 'source', src, ((d.rows - 1) * ld + off + d.cols) * 4);
  const levels = d.residual ? 2 : 1;
  const pipeline = await ctx.pipeline({ shader: shader(ctx), entryPoint: 'quantize_rows', defines: { OP: 'quantize_rows', RESIDUAL: levels === 2 } });
  const label = `quantize rows int8${levels === 2 ? '×2' : ''} ${d.rows}×${d.cols} of ${src.label}`;
  const uniforms = ctx.uniforms(`${label} params`, fields({ M: d.rows, ld, off, lda: levels * rowBytes, cols: d.cols, lo: levels === 2 ? rowBytes : 0 }));
  return {
    dispatch: { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, src, scratch.q, scratch.scale]), workgroups: grid1d(ctx, d.rows, label) },
    rows: { q: scratch.q, scale: scratch.scale, rows: d.rows, cols: d.cols, rowBytes, levels },
  };
}

/**
 * Layout choices of the matrix kernels, as measured (bench/int8-matmul.bench.ts, `VARIANT=NAME,NAME=0` overrides
 * them; lent H100, 2026-12-07, 2048 tokens, one run each way on one machine):
 *  - EPI_VEC4, the epilogue's vec4 writes: the one-level forward 9–11% faster on wqkv, wo and w1/w3 (0.315 →
 *    0.282, 0.151 → 0.138, 0.596 → 0.531 ms), w2 1%; the two-level forward 1–5% and dX 0–16% slower, so
 *    only the one-level forward takes it (and keeps scalar writes where Y's blocks are not vec4-aligned).
 * (A rotated word order in the staging's stores, conflict-free on paper, measured 2.5× slower and was removed.)
 */
export function int8Layout(kernel: 'forward' | 'forward two levels' | 'dx', variant: Defines = {}): Defines {
  return { EPI_VEC4: kernel === 'forward', ...variant };
}

/**
 * Y[:, block columns] = Xq·Wᵀ with X already quantized (prepareQuantizeRows over its K columns), one
 * dispatch per row block of W. Y [M, W.out] is written.
 */
export async function prepareInt8Q4Matmul(ctx: GpuContext, X: Int8Rows, W: Q4Weight, Y: Tensor, scratch: Int8Scratch, opts: { variant?: Defines } = {}): Promise<KernelDispatch[]> {
  const kern = `int8 q4 matmul ${W.label}`;
  const M = X.rows;
  if (X.cols !== W.in) throw new Error(`${kern}: X has ${X.cols} columns, W has ${W.in} in features`);
  if (W.in > INT8_MAX_REDUCTION) throw new Error(`${kern}: reduction ${W.in} exceeds ${INT8_MAX_REDUCTION} (int32 sums could overflow)`);
  need(kern, 'Y', Y, M * W.out * 4);
  const residual = X.levels === 2;
  // EPI_VEC4 writes Y as vec4: only where every block's columns start and end on whole vec4 of Y's rows.
  const vec4Rows = W.out % 4 === 0 && W.blocks.every((b) => b.row0 % 4 === 0 && b.rows % 4 === 0);
  const layout = int8Layout(residual ? 'forward two levels' : 'forward', opts.variant);
  const variant = { ...layout, EPI_VEC4: !!layout.EPI_VEC4 && vec4Rows };
  const pipeline = await ctx.pipeline({ shader: shader(ctx), entryPoint: 'q4_mma_fwd', defines: { OP: 'fwd', RESIDUAL: residual, ...variant } });
  const out: KernelDispatch[] = [];
  for (const b of W.blocks) {
    // The weight grid: cached with the weights (cacheInt8Bounds), else bound here every time.
    const bound = b.bounds?.rowmax ?? scratch.wbound;
    if (!b.bounds) out.push(await prepareQ4RowAbsmax(ctx, b, W.in, bound));
    out.push(await prepareQ4ToInt8(ctx, b, W.in, bound, 'row', scratch));
    const label = `int8${residual ? '×2' : ''} q4 matmul ${M}×${W.in}·${b.q.label}ᵀ`;
    const uniforms = ctx.uniforms(`${label} params`, fields({ M, N: b.rows, K: W.in, ld: W.out, off: b.row0, lda: X.levels * X.rowBytes, lo: residual ? X.rowBytes : 0 }));
    out.push({
      label,
      pipeline,
      bindGroup: ctx.bindGroup(label, pipeline, [uniforms, X.q, X.scale, scratch.w, Y, bound]),
      workgroups: [Math.ceil(b.rows / TILE), Math.ceil(M / (residual ? TILE / 2 : TILE)), 1],
    });
  }
  return out;
}

/**
 * Computes each block's int8 weight grid once and keeps it with the weight (Q4Block.bounds): the frozen
 * base's bounds never change, so the step's int8 matmuls skip two small passes per projection (336 + 168
 * dispatches a step for a 24-layer model). Call once the codes are final; writing codes drops them.
 */
export async function cacheInt8Bounds(ctx: GpuContext, W: Q4Weight): Promise<void> {
  for (const b of W.blocks) {
    if (b.bounds) continue;
    const rowmax = ctx.tensor(`${b.q.label} int8 row bounds`, [b.rows]);
    const colmax = ctx.tensor(`${b.q.label} int8 column bounds`, [W.in / Q4_GROUP]);
    await ctx.run([await prepareQ4RowAbsmax(ctx, b, W.in, rowmax), await prepareQ4ColAbsmax(ctx, b, W.in, colmax)]);
    b.bounds = { rowmax, colmax };
  }
}

/**
 * One row block of W on its int8 grid into scratch.w (byte n·in + k = weight [n, k]): per row ('row', the
 * forward's, from rowmax) or per 64-column group ('colgroup', the backward's, from colmax).
 */
export async function prepareQ4ToInt8(ctx: GpuContext, b: Q4Block, inFeatures: number, bound: Tensor, grid: 'row' | 'colgroup', scratch: Int8Scratch): Promise<KernelDispatch> {
  const kern = 'q4 to int8';
  if (b.rows * inFeatures > scratch.maxWeight) throw new Error(`${kern}: ${b.q.label} [${b.rows}, ${inFeatures}] exceeds the int8 weight scratch (${scratch.maxWeight} weights)`);
  need(kern, 'bounds', bound, (grid === 'row' ? b.rows : inFeatures / Q4_GROUP) * 4);
  const pipeline = await ctx.pipeline({ shader: shader(ctx), entryPoint: 'q4_to_i8', defines: { OP: 'to_i8', ROW_GRID: grid === 'row' } });
  const label = `q4 to int8 (${grid} grid) ${b.q.label}`;
  const uniforms = ctx.uniforms(`${label} params`, fields({ M: 0, N: b.rows, K: inFeatures }));
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, b.q, b.sm, bound, scratch.w]), workgroups: grid1d(ctx, Math.ceil((b.rows * inFeatures) / 32 / 64), label) };
}

/** rowmax[n] = the largest |w| any code of row n can take (the forward's int8 grid), for one block. */
export async function prepareQ4RowAbsmax(ctx: GpuContext, b: Q4Block, inFeatures: number, rowmax: Tensor): Promise<KernelDispatch> {
  need('q4 row absmax', 'output', rowmax, b.rows * 4);
  const pipeline = await ctx.pipeline({ shader: shader(ctx), entryPoint: 'q4_row_absmax', defines: { OP: 'row_absmax' } });
  const label = `q4 row absmax ${b.q.label}`;
  const uniforms = ctx.uniforms(`${label} params`, fields({ M: 0, N: b.rows, K: inFeatures }));
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, b.sm, rowmax]), workgroups: [Math.ceil(b.rows / 64), 1, 1] };
}

/** colmax[g] = the largest |w| any code of column group g can take in this block (the backward's int8 grid). */
export async function prepareQ4ColAbsmax(ctx: GpuContext, b: Q4Block, inFeatures: number, colmax: Tensor): Promise<KernelDispatch> {
  const G = inFeatures / Q4_GROUP;
  need('q4 column absmax', 'output', colmax, G * 4);
  const pipeline = await ctx.pipeline({ shader: shader(ctx), entryPoint: 'q4_col_absmax', defines: { OP: 'col_absmax' } });
  const label = `q4 column absmax ${b.q.label}`;
  const uniforms = ctx.uniforms(`${label} params`, fields({ M: 0, N: b.rows, K: inFeatures }));
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, b.sm, colmax]), workgroups: [G, 1, 1] };
}

/**
 * dX (=, or += with accumulate) = dY·W through the tensor cores: per row block of W, quantize dY's
 * columns of that block, bound the block's column groups, put the block on its int8 grid, multiply (later
 * blocks add).
 */
export async function prepareInt8Q4MatmulDx(ctx: GpuContext, dY: Tensor, W: Q4Weight, dX: Tensor, M: number, scratch: Int8Scratch, accumulate = false, opts: { variant?: Defines } = {}): Promise<KernelDispatch[]> {
  const kern = `int8 q4 dX ${W.label}`;
  need(kern, 'dY', dY, M * W.out * 4);
  need(kern, 'dX', dX, M * W.in * 4);
  const out: KernelDispatch[] = [];
  for (const [i, b] of W.blocks.entries()) {
    if (b.rows > INT8_MAX_REDUCTION) throw new Error(`${kern}: reduction ${b.rows} exceeds ${INT8_MAX_REDUCTION} (int32 sums could overflow)`);
    const acc = accumulate || i > 0;
    const quant = await prepareQuantizeRows(ctx, dY, scratch, { rows: M, cols: b.rows, ld: W.out, off: b.row0 });
    out.push(quant.dispatch);
    const bound = b.bounds?.colmax ?? scratch.wbound;
    if (!b.bounds) out.push(await prepareQ4ColAbsmax(ctx, b, W.in, bound));
    out.push(await prepareQ4ToInt8(ctx, b, W.in, bound, 'colgroup', scratch));
    const pipeline = await ctx.pipeline({ shader: shader(ctx), entryPoint: 'q4_mma_dx', defines: { OP: 'dx', ACCUMULATE: acc, ...int8Layout('dx', opts.variant) } });
    const label = `int8 q4 dX ${M}×${b.rows}·${b.q.label}${acc ? ' +=' : ''}`;
    const uniforms = ctx.uniforms(`${label} params`, fields({ M, N: b.rows, K: W.in, ld: W.out, off: b.row0, lda: quant.rows.rowBytes }));
    out.push({
      label,
      pipeline,
      bindGroup: ctx.bindGroup(label, pipeline, [uniforms, quant.rows.q, quant.rows.scale, scratch.w, dX, bound]),
      workgroups: [Math.ceil(W.in / TILE), Math.ceil(M / TILE), 1],
    });
  }
  return out;
}

// ---- CPU references (tests, the device bench) ------------------------------------------------------

/** Round half to even, as WGSL's round(). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** quantize_rows on the CPU in f32 arithmetic: codes [rows, cols], the residual level's codes, and scales. */
export function quantizeRowsCpu(src: ArrayLike<number>, rows: number, cols: number, ld = cols, off = 0): { codes: Int8Array; lo: Int8Array; scale: Float32Array } {
  const codes = new Int8Array(rows * cols);
  const lo = new Int8Array(rows * cols);
  const scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let mx = 0;
    for (let c = 0; c < cols; c++) mx = Math.max(mx, Math.abs(src[r * ld + off + c]!));
    mx = Math.fround(mx);
    const inv = mx > 0 ? Math.fround(127 / mx) : 0;
    scale[r] = Math.fround(mx * Math.fround(1 / 127));
    for (let c = 0; c < cols; c++) {
      const t = Math.fround(src[r * ld + off + c]! * inv);
      const hi = Math.max(-127, Math.min(127, roundHalfEven(t)));
      codes[r * cols + c] = hi;
      lo[r * cols + c] = Math.max(-127, Math.min(127, roundHalfEven(Math.fround(Math.fround(t - hi) * 254))));
    }
  }
  return { codes, lo, scale };
}

/** Unpacks scratch words (rows of `levels` × rowBytes) into the int8 codes [rows, cols] of one level. */
export function unpackInt8Rows(words: Uint32Array, rows: number, cols: number, rowBytes: number, levels = 1, level = 0): Int8Array {
  const stride = levels * rowBytes;
  const bytes = new Int8Array(words.buffer, words.byteOffset, rows * stride);
  const out = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(bytes.subarray(r * stride + level * rowBytes, r * stride + level * rowBytes + cols), r * cols);
  return out;
}

/**
 * The int8 grid the kernels put W on, computed on the CPU from the 4-bit host form: per row (`'row'`, the
 * forward) or per 64-column group over all rows (`'colgroup'`, the backward). Returns codes [rows, cols]
 * and the dequantizing scale of each row / group (bound / 127).
 */
export function requantizeQ4Cpu(host: { q: Uint32Array; sm: Uint32Array }, rows: number, cols: number, axis: 'row' | 'colgroup'): { codes: Int8Array; scale: Float32Array; grid: Float32Array } {
  const G = cols / Q4_GROUP;
  const bound = (word: number) => {
    const step = f16BitsToF32(word & 0xffff);
    const mn = f16BitsToF32(word >>> 16);
    return Math.max(Math.abs(mn), Math.abs(Math.fround(mn + Math.fround(15 * step))));
  };
  const nScales = axis === 'row' ? rows : G;
  const mx = new Float32Array(nScales);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < G; g++) {
      const i = axis === 'row' ? r : g;
      mx[i] = Math.max(mx[i]!, bound(host.sm[r * G + g]!));
    }
  const scale = new Float32Array(nScales);
  const inv = new Float32Array(nScales);
  for (let i = 0; i < nScales; i++) {
    scale[i] = Math.fround(mx[i]! * Math.fround(1 / 127));
    inv[i] = mx[i]! > 0 ? Math.fround(127 / mx[i]!) : 0;
  }
  const codes = new Int8Array(rows * cols);
  // Each weight's position on the int8 grid before rounding (tests tell rounding ties from errors by it).
  const grid = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const word = host.sm[r * G + ((c / Q4_GROUP) | 0)]!;
      const s = inv[axis === 'row' ? r : (c / Q4_GROUP) | 0]!;
      const a = Math.fround(f16BitsToF32(word & 0xffff) * s);
      const b = Math.fround(f16BitsToF32(word >>> 16) * s);
      const i = r * cols + c;
      const code = (host.q[i >>> 3]! >>> (4 * (i & 7))) & 15;
      grid[i] = Math.fround(code * a + b); // the kernel's fma: one rounding
      codes[i] = roundHalfEven(grid[i]!);
    }
  return { codes, scale, grid };
}

/**
 * Y [M, N] = (a ⊗ c) ∘ (Aq · Wqᵀ) in float64: the forward as the kernel defines it (Aq [M, K], Wq [N, K]);
 * with `aLo` (the residual level) Aq · Wqᵀ + (aLo · Wqᵀ)/254.
 */
export function int8MatmulCpu(aq: Int8Array, aScale: Float32Array, wq: Int8Array, wScale: Float32Array, M: number, N: number, K: number, aLo?: Int8Array): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      let sLo = 0;
      for (let k = 0; k < K; k++) {
        s += aq[m * K + k]! * wq[n * K + k]!;
        if (aLo) sLo += aLo[m * K + k]! * wq[n * K + k]!;
      }
      y[m * N + n] = (s + sLo / 254) * aScale[m]! * wScale[n]!;
    }
  return y;
}

/** dX [M, K] = a[m] · c[g(k)] · Σ_n dYq[m, n] · Wq[n, k] in float64 (dYq [M, N], Wq [N, K] on the column-group grid). */
export function int8MatmulDxCpu(dq: Int8Array, dScale: Float32Array, wq: Int8Array, gScale: Float32Array, M: number, N: number, K: number): Float64Array {
  const x = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      const d = dq[m * N + n]!;
      if (d === 0) continue;
      for (let k = 0; k < K; k++) x[m * K + k] = x[m * K + k]! + d * wq[n * K + k]!;
    }
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) x[m * K + k] = x[m * K + k]! * dScale[m]! * gScale[(k / Q4_GROUP) | 0]!;
  return x;
}

/** The exact product the int8 scheme is measured against, in float64: X·Wᵀ (transW, W [N, K]) or X·W (W [K, N]). */
export function denseMatmulF64(x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number, transW: boolean): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let k = 0; k < K; k++) {
      const xv = x[m * K + k]!;
      if (xv === 0) continue;
      for (let n = 0; n < N; n++) y[m * N + n] = y[m * N + n]! + xv * w[transW ? n * K + k : k * N + n]!;
    }
  return y;
}
