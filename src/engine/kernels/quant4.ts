import quant4Wgsl from '../../../shaders/quant4.wgsl';
import q4FormatWgsl from '../../../shaders/q4_format.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { grid1d } from './grid.ts';
import { registerDropoutInclude } from './dropout.ts';

/**
 * 4-bit frozen base weights ("q4a64", docs/quant4.md): asymmetric int4, groups of 64 along `in`, one u32
 * per group holding f16 step (low half) and f16 min (high half); w = code·step + min. Codes are packed
 * 8 per u32, 32 per 16-byte vec4, row-major [out, in/32]; scales are a separate u32 array [out, in/64].
 *
 * A weight may be split into row blocks (several tensors, each a range of output rows) so that a huge
 * lm_head fits the storage-binding limit; the matmuls dispatch once per block.
 */
export const QUANT4_SHADER = { name: 'quant4.wgsl', code: quant4Wgsl };
/** The format's decoding helpers, `#include`d by quant4.wgsl and quant4_mma.wgsl. */
export const Q4_FORMAT_SHADER = { name: 'q4_format.wgsl', code: q4FormatWgsl };

/** Makes `#include "q4_format.wgsl"` resolvable in this context (idempotent). */
export function registerQ4FormatInclude(ctx: GpuContext): void {
  ctx.pipelines.registerInclude(Q4_FORMAT_SHADER);
}

function q4Shader(ctx: GpuContext): typeof QUANT4_SHADER {
  registerQ4FormatInclude(ctx);
  return QUANT4_SHADER;
}
export const Q4_GROUP = 64;
/** Tokens up to which the decode GEMV is used instead of the tiled kernel. */
export const Q4_GEMV_MAX_M = 8;

export interface Q4Block {
  /** First output row (row of W) this block holds. */
  readonly row0: number;
  readonly rows: number;
  /** Codes: rows · in/2 bytes ('q4'). */
  readonly q: Tensor;
  /** Scales: rows · in/64 u32. */
  readonly sm: Tensor;
  /**
   * The int8 tensor-core path's weight grid (quant4-mma.ts cacheInt8Bounds), kept because the base is frozen;
   * dropped whenever codes are written again.
   */
  bounds?: Q4Bounds;
}

/** Per row of W (the forward's int8 grid) and per 64-column group (the backward's). */
export interface Q4Bounds {
  readonly rowmax: Tensor;
  readonly colmax: Tensor;
}

/** Forgets a block's cached int8 bounds (its codes are about to change). */
export function dropQ4Bounds(ctx: GpuContext, b: Q4Block): void {
  if (!b.bounds) return;
  ctx.release(b.bounds.rowmax);
  ctx.release(b.bounds.colmax);
  delete b.bounds;
}

export interface Q4Weight {
  readonly label: string;
  /** Output features (rows of W, HF [out, in] layout). */
  readonly out: number;
  /** Input features; a multiple of 64. */
  readonly in: number;
  readonly blocks: readonly Q4Block[];
}

export type Q4Source = 'f32' | 'f16' | 'bf16';

export interface Q4Host {
  /** Codes, 8 per word, [rows, in/8] words. */
  q: Uint32Array;
  /** Scale words, [rows, in/64]. */
  sm: Uint32Array;
}

// ---- f16 bits on the CPU (the shader does the same integer work) --------------------------------

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

function bitsOf(x: number): number {
  f32buf[0] = x;
  return u32buf[0]!;
}

/** f16 bits → value (exact). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** f16 bits of f32 x rounded toward +inf (up) or -inf; exact when x is representable. Mirrors the WGSL. */
export function f32ToF16Directed(x: number, up: boolean): number {
  const b = bitsOf(x);
  const sign = b >>> 31;
  const a = b & 0x7fffffff;
  const away = (sign === 0) === up;
  if (a >= 0x7f800000) return (sign << 15) | 0x7c00 | (a > 0x7f800000 ? 0x200 : 0);
  const e = (a >>> 23) - 112;
  let h = 0;
  let rem = false;
  if (e >= 31) {
    h = away ? 0x7c00 : 0x7bff;
  } else if (e >= 1) {
    h = (e << 10) | ((a >>> 13) & 0x3ff);
    rem = (a & 0x1fff) !== 0;
  } else {
    const m = a >>> 23 !== 0 ? (a & 0x7fffff) | 0x800000 : a & 0x7fffff;
    const shift = 14 - e;
    if (shift >= 32) rem = m !== 0;
    else {
      h = m >>> shift;
      rem = (m & ((1 << shift) - 1)) !== 0;
    }
  }
  if (away && rem) h += 1;
  return ((sign << 15) | h) >>> 0;
}

/** (step, min) of one scale word. */
export function q4Scale(word: number): [number, number] {
  return [f16BitsToF32(word & 0xffff), f16BitsToF32(word >>> 16)];
}

const fr = Math.fround;
const INV15 = fr(1 / 15);

/**
 * The reference quantizer (bit-identical to the GPU kernel), also usable by a loader that quantizes on
 * the CPU. `w` is [rows, cols] row-major, cols % 64 == 0.
 */
export function quantizeQ4Cpu(w: ArrayLike<number>, rows: number, cols: number): Q4Host {
  checkCols(cols);
  const groups = (rows * cols) / Q4_GROUP;
  const q = new Uint32Array((rows * cols) / 8);
  const sm = new Uint32Array(groups);
  for (let g = 0; g < groups; g++) {
    const base = g * Q4_GROUP;
    let lo = fr(w[base]!);
    let hi = lo;
    for (let j = 1; j < Q4_GROUP; j++) {
      const v = fr(w[base + j]!);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const mnBits = f32ToF16Directed(lo, false);
    const mn = f16BitsToF32(mnBits);
    const stepBits = f32ToF16Directed(fr(fr(hi - mn) * INV15), true);
    const step = f16BitsToF32(stepBits);
    sm[g] = (stepBits | (mnBits << 16)) >>> 0;
    for (let wi = 0; wi < 8; wi++) {
      let word = 0;
      for (let j = 0; j < 8; j++) {
        const d = fr(fr(w[base + wi * 8 + j]!) - mn);
        let code = 0;
        for (let c = 0; c < 15; c++) if (d > fr((c + 0.5) * step)) code++;
        word |= code << (4 * j);
      }
      q[g * 8 + wi] = word >>> 0;
    }
  }
  return { q, sm };
}

/** Dequantized weights [rows, cols] in float64 (code·step + min, as the reference for the matmuls). */
export function dequantizeQ4Cpu({ q, sm }: Q4Host, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows * cols; i++) {
    const [step, mn] = q4Scale(sm[(i / Q4_GROUP) | 0]!);
    const code = (q[i >>> 3]! >>> (4 * (i & 7))) & 15;
    out[i] = code * step + mn;
  }
  return out;
}

/** f32 values → bf16 (round to nearest even) or f16 words, two per u32, as a checkpoint holds them. */
export function packHalfWords(values: ArrayLike<number>, kind: 'f16' | 'bf16'): Uint32Array {
  const out = new Uint32Array(Math.ceil(values.length / 2));
  for (let i = 0; i < values.length; i++) {
    let h: number;
    if (kind === 'bf16') {
      const b = bitsOf(values[i]!);
      h = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
    } else {
      // nearest of the two directed roundings (ties: either; only used to make test data)
      const d = f32ToF16Directed(values[i]!, false);
      const u = f32ToF16Directed(values[i]!, true);
      h = Math.abs(f16BitsToF32(u) - values[i]!) < Math.abs(values[i]! - f16BitsToF32(d)) ? u : d;
    }
    out[i >>> 1] = (out[i >>> 1]! | (h << (16 * (i & 1)))) >>> 0;
  }
  return out;
}

/** Values of 16-bit words as f32 numbers (what the shader reads from an f16/bf16 source). */
export function unpackHalfWords(words: Uint32Array, n: number, kind: 'f16' | 'bf16'): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const h = (words[i >>> 1]! >>> (16 * (i & 1))) & 0xffff;
    if (kind === 'bf16') {
      u32buf[0] = h << 16;
      out[i] = f32buf[0]!;
    } else out[i] = f16BitsToF32(h);
  }
  return out;
}

// ---- GPU tensors ----------------------------------------------------------------------------------

function checkCols(cols: number): void {
  if (cols % Q4_GROUP !== 0 || cols <= 0) {
    throw new Error(`q4: in features (${cols}) must be a positive multiple of ${Q4_GROUP} (true of every target model's projections)`);
  }
}

/**
 * Allocates an empty 4-bit weight [out, in], split into row blocks of at most `rowsPerBlock` rows (by
 * default as many as the device's storage-binding limit allows, so a 92544×2048 lm_head is one block on
 * a desktop GPU and several in a 128 MiB-binding browser).
 */
export function allocQ4Weight(ctx: GpuContext, label: string, out: number, inFeatures: number, rowsPerBlock?: number): Q4Weight {
  checkCols(inFeatures);
  const maxRows = Math.floor(ctx.limits.maxStorageBufferBindingSize / (inFeatures / 2));
  const per = Math.max(1, Math.min(rowsPerBlock ?? maxRows, maxRows));
  const blocks: Q4Block[] = [];
  for (let row0 = 0; row0 < out; row0 += per) {
    const rows = Math.min(per, out - row0);
    const name = blocks.length === 0 && row0 + rows >= out ? label : `${label}[${row0}:${row0 + rows}]`;
    blocks.push({
      row0,
      rows,
      q: ctx.rawTensor(`${name}.q`, [rows, inFeatures], 'q4', (rows * inFeatures) / 2),
      sm: ctx.rawTensor(`${name}.scales`, [rows, inFeatures / Q4_GROUP], 'u32', (rows * inFeatures) / 16),
    });
  }
  return { label, out, in: inFeatures, blocks };
}

export function releaseQ4Weight(ctx: GpuContext, w: Q4Weight): void {
  for (const b of w.blocks) {
    dropQ4Bounds(ctx, b);
    ctx.release(b.q);
    ctx.release(b.sm);
  }
}

/** Uploads CPU-quantized rows [row0, row0 + rows) (e.g. from quantizeQ4Cpu) into the weight's blocks. */
export function writeQ4Rows(ctx: GpuContext, w: Q4Weight, row0: number, host: Q4Host): void {
  const wordsPerRow = w.in / 8;
  const gpr = w.in / Q4_GROUP;
  const rows = host.sm.length / gpr;
  for (const b of w.blocks) {
    const lo = Math.max(row0, b.row0);
    const hi = Math.min(row0 + rows, b.row0 + b.rows);
    if (lo >= hi) continue;
    dropQ4Bounds(ctx, b);
    ctx.write(b.q, host.q.subarray((lo - row0) * wordsPerRow, (hi - row0) * wordsPerRow), (lo - b.row0) * wordsPerRow * 4);
    ctx.write(b.sm, host.sm.subarray((lo - row0) * gpr, (hi - row0) * gpr), (lo - b.row0) * gpr * 4);
  }
}

interface Q4Uniforms {
  M?: number;
  N: number;
  K: number;
  ldy?: number;
  off?: number;
  R?: number;
  s?: number;
  srcOff?: number;
  bRow0?: number;
  seed?: number;
  threshold?: number;
  keepScale?: number;
}

/** Index of the dropout seed among quant4.wgsl's uniform fields (rewritten per step). */
export const Q4_SEED_FIELD = 9;

function uniformFields(u: Q4Uniforms): UniformField[] {
  return [
    ['u32', u.M ?? 0],
    ['u32', u.N],
    ['u32', u.K],
    ['u32', u.ldy ?? 0],
    ['u32', u.off ?? 0],
    ['u32', u.R ?? 0],
    ['f32', u.s ?? 0],
    ['u32', u.srcOff ?? 0],
    ['u32', u.bRow0 ?? 0],
    ['u32', (u.seed ?? 0) >>> 0],
    ['u32', u.threshold ?? 0],
    ['f32', u.keepScale ?? 1],
  ];
}

/** Throws, naming kernel, operand, shape and both sizes, when `t` holds fewer than `bytes` bytes. */
export function need(kernel: string, what: string, t: Tensor, bytes: number): void {
  if (t.byteSize < bytes) throw new Error(`${kernel}: ${what} '${t.label}' ${shapeString(t.shape)} has ${t.byteSize} bytes, needs ${bytes}`);
}

/**
 * Quantizes rows [row0, row0 + rows) of W from a source chunk on the GPU (the loader streams a checkpoint
 * through a small staging tensor; no full-precision copy of the model is needed). `src` holds exactly
 * those rows, [rows, in], as f32, or as u32 words of two f16/bf16 values (low half first). Returns one
 * dispatch per row block the chunk touches.
 */
export async function prepareQuantizeQ4(ctx: GpuContext, src: Tensor, dst: Q4Weight, row0: number, rows: number, source: Q4Source = 'f32'): Promise<KernelDispatch[]> {
  const K = dst.in;
  if (row0 < 0 || rows < 1 || row0 + rows > dst.out) throw new Error(`quantize ${dst.label}: rows [${row0}, ${row0 + rows}) outside [0, ${dst.out})`);
  need(`quantize ${dst.label}`, 'source', src, rows * K * (source === 'f32' ? 4 : 2));
  const pipeline = await ctx.pipeline({ shader: q4Shader(ctx), entryPoint: 'quantize', defines: { OP: 'quantize', SRC: source } });
  const out: KernelDispatch[] = [];
  for (const b of dst.blocks) {
    const lo = Math.max(row0, b.row0);
    const hi = Math.min(row0 + rows, b.row0 + b.rows);
    if (lo >= hi) continue;
    dropQ4Bounds(ctx, b); // these rows' codes are rewritten when the dispatch runs
    const label = `quantize4 ${source} ${dst.label} rows ${lo}:${hi}`;
    const uniforms = ctx.uniforms(`${label} params`, uniformFields({ N: hi - lo, K, off: lo - b.row0, srcOff: (lo - row0) * K }));
    out.push({ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, src, b.q, b.sm]), workgroups: grid1d(ctx, Math.ceil(((hi - lo) * K) / Q4_GROUP / 64), label) });
  }
  return out;
}

export async function quantizeQ4(ctx: GpuContext, src: Tensor, dst: Q4Weight, row0: number, rows: number, source: Q4Source = 'f32'): Promise<void> {
  await ctx.run(await prepareQuantizeQ4(ctx, src, dst, row0, rows, source));
}

/** Dequantizes the whole weight into f32 `out` [out, in] (merging an adapter, tests). */
export async function prepareDequantizeQ4(ctx: GpuContext, w: Q4Weight, out: Tensor): Promise<KernelDispatch[]> {
  need(`dequantize ${w.label}`, 'output', out, w.out * w.in * 4);
  const pipeline = await ctx.pipeline({ shader: q4Shader(ctx), entryPoint: 'dequantize', defines: { OP: 'dequantize' } });
  return w.blocks.map((b) => {
    const label = `dequantize4 ${b.q.label}`;
    const uniforms = ctx.uniforms(`${label} params`, uniformFields({ N: b.rows, K: w.in }));
    const binding: GPUBufferBinding = { buffer: out.buffer, offset: b.row0 * w.in * 4, size: b.rows * w.in * 4 };
    return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, b.q, b.sm, binding]), workgroups: grid1d(ctx, Math.ceil((b.rows * w.in) / 8 / 64), label) };
  });
}

export async function dequantizeQ4(ctx: GpuContext, w: Q4Weight, out: Tensor): Promise<void> {
  await ctx.run(await prepareDequantizeQ4(ctx, w, out));
}

/** The LoRA epilogue of the forward: Y += scale · U · Bᵀ (U [M, rank], B [out, rank]). */
export interface Q4LoraEpilogue {
  U: Tensor;
  B: Tensor;
  rank: number;
  scale: number;
}

export interface Q4MatmulOptions {
  lora?: Q4LoraEpilogue;
  /** Force the tiled kernel (or the GEMV) regardless of M; default: GEMV for M ≤ 8. */
  path?: 'tiled' | 'gemv';
  /** Force the 128×128 (wide) or 64×64 (narrow) tile; default: wide when both output dims are ≥ 256. */
  tile?: 'wide' | 'narrow';
  /**
   * The k-contiguous-tile forward (q4_matmul_kc: no transposes, register-staged loads; 128×128 tiles only).
   * Default on: 11–15% faster than the k-major kernel and than the f32 matmul at every 1.8B shape on the H100.
   */
  kcontig?: boolean;
  /** q4_matmul_kc: every thread dequantises one code word per step (default) instead of half the threads two. */
  splitW?: boolean;
  /** q4_matmul_kc: two buffers of each tile, one barrier per k-step instead of two (32 KiB of workgroup memory). */
  doubleBuffer?: boolean;
  /** q4_matmul_kc with doubleBuffer and splitW: codes fetched two steps ahead, dequantised one step ahead. */
  earlyDequant?: boolean;
  /** q4_matmul_kc: codes turned into floats by their exponent bits instead of int-to-float conversions (same results). */
  expCodes?: boolean;
  /** The one-row GEMV's row groups per workgroup (GEMV_ROWS; 4 rows each). Benchmarks try others. */
  gemvRowGroups?: number;
}

/** W rows per workgroup of the general (M ≤ 8) GEMV. */
const GEMV_ROWS = 8;
/** The one-row GEMV (decode): rows per invocation (RPT in quant4.wgsl) and default row groups per workgroup. */
const GEMV1_ROWS_PER_THREAD = 4;
const GEMV1_ROW_GROUPS = 4;

/** Tile choice as in matmul.ts: 128×128 (8×8 per thread) where there are enough tiles, else 64×64. */
function tileEdge(rows: number, cols: number, tile?: 'wide' | 'narrow', minWideGroups = 0): { wide: boolean; edge: number } {
  const wide = tile ? tile === 'wide' : rows >= 256 && cols >= 256 && Math.ceil(rows / 128) * Math.ceil(cols / 128) >= minWideGroups;
  return { wide, edge: wide ? 128 : 64 };
}

/** The double-buffered 4-bit kernels declare four 8 KiB tiles (128×16 f32 each); elsewhere they run single-buffered. */
const Q4_DBUF_WORKGROUP_BYTES = 32768;
function fitsDoubleBuffer(ctx: GpuContext): boolean {
  return ctx.limits.maxComputeWorkgroupStorageSize >= Q4_DBUF_WORKGROUP_BYTES;
}

/**
 * The forward takes the 64×64 tile when 128×128 tiles would make fewer workgroups than this. Measured on the
 * H100 (132 SMs) at 512 tokens (`Q4_TOKENS=512 node dist-bench/bench.mjs quant4-lora`): wo and w2 (64 wide
 * tiles) 25–31% faster with 64×64 tiles; wqkv (128) and w1/w3 (256) 50% and 30% slower with them.
 */
const Q4_FWD_MIN_WIDE_GROUPS = 128;

/**
 * Y = X·Wᵀ (+ scale·U·Bᵀ), X [M, in] f32, W 4-bit [out, in], Y [M, out]. One dispatch per row block, each
 * writing its column range of Y. M ≤ 8 (decode) uses the GEMV kernel, which reads each weight once.
 */
export async function prepareQ4Matmul(ctx: GpuContext, X: Tensor, W: Q4Weight, Y: Tensor, M: number, opts: Q4MatmulOptions = {}): Promise<KernelDispatch[]> {
  const K = W.in;
  const kern = `q4 matmul ${W.label}`;
  need(kern, 'X', X, M * K * 4);
  need(kern, 'Y', Y, M * W.out * 4);
  const lora = opts.lora;
  if (lora) {
    need(kern, 'U', lora.U, M * lora.rank * 4);
    need(kern, 'B', lora.B, W.out * lora.rank * 4);
  }
  const gemv = opts.path ? opts.path === 'gemv' : M <= Q4_GEMV_MAX_M;
  if (gemv && M > Q4_GEMV_MAX_M) throw new Error(`${kern}: the GEMV path takes at most ${Q4_GEMV_MAX_M} rows, got ${M}`);
  const { wide, edge } = tileEdge(M, W.out, opts.tile, Q4_FWD_MIN_WIDE_GROUPS);
  const kc = (opts.kcontig ?? true) && wide && !gemv;
  const splitW = kc && (opts.splitW ?? true);
  const dbuf = kc && !!opts.doubleBuffer && fitsDoubleBuffer(ctx);
  const early = splitW && dbuf && !!opts.earlyDequant;
  const oneRow = gemv && M === 1;
  const rowGroups = opts.gemvRowGroups ?? GEMV1_ROW_GROUPS;
  const gemvRows = oneRow ? rowGroups * GEMV1_ROWS_PER_THREAD : GEMV_ROWS;
  const pipeline = await ctx.pipeline(
    gemv
      ? { shader: q4Shader(ctx), entryPoint: 'q4_gemv', defines: { OP: 'gemv', ONE_ROW: oneRow, LORA: !!lora }, constants: { GEMV_ROWS: oneRow ? rowGroups : GEMV_ROWS } }
      : { shader: q4Shader(ctx), entryPoint: kc ? 'q4_matmul_kc' : 'q4_matmul', defines: { OP: 'matmul', LORA: !!lora, WIDE: wide, KC: kc, KC_SPLIT_W: splitW, KC_DBUF: dbuf, KC_EARLY: early, KC_EXP_CODES: kc && !!opts.expCodes } },
  );
  return W.blocks.map((b) => {
    const label = `${gemv ? `q4 gemv${oneRow ? '1' : ''}` : `q4 matmul${wide ? ' wide' : ''}${kc ? ' kc' : ''}`}${lora ? '+lora' : ''} ${M}×${K}·${b.q.label}ᵀ`;
    const uniforms = ctx.uniforms(`${label} params`, uniformFields({ M, N: b.rows, K, ldy: W.out, off: b.row0, R: lora?.rank ?? 0, s: lora?.scale ?? 0, bRow0: b.row0 }));
    const res = [uniforms, X, b.q, b.sm, Y, ...(lora ? [lora.U, lora.B] : [])];
    const workgroups: [number, number, number] = gemv ? grid1d(ctx, Math.ceil(b.rows / gemvRows), label) : [Math.ceil(b.rows / edge), Math.ceil(M / edge), 1];
    return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, res), workgroups };
  });
}

/** Whether prepareQ4GemvSwiglu takes this gate/up pair: the same shape, each in one block. */
export function q4GemvSwigluFits(gate: Q4Weight, up: Q4Weight): boolean {
  return gate.out === up.out && gate.in === up.in && gate.blocks.length === 1 && up.blocks.length === 1;
}

/**
 * Decode's MLP input in one dispatch: y = silu(x·Wgateᵀ) ⊙ (x·Wupᵀ) for one row x [in] (the one-row GEMV
 * over both weights, its SwiGLU in the epilogue), y [out]. Instead of three dispatches (gate, up, swiglu):
 * decode is bound by the dispatches of a token.
 */
export async function prepareQ4GemvSwiglu(ctx: GpuContext, X: Tensor, gate: Q4Weight, up: Q4Weight, Y: Tensor): Promise<KernelDispatch> {
  const kern = `q4 gemv swiglu ${gate.label}, ${up.label}`;
  if (!q4GemvSwigluFits(gate, up)) throw new Error(`${kern}: gate and up must have the same shape in one block each`);
  need(kern, 'X', X, gate.in * 4);
  need(kern, 'Y', Y, gate.out * 4);
  const g = gate.blocks[0]!;
  const u = up.blocks[0]!;
  const pipeline = await ctx.pipeline({ shader: q4Shader(ctx), entryPoint: 'q4_gemv', defines: { OP: 'gemv', ONE_ROW: true, GLU: true }, constants: { GEMV_ROWS: GEMV1_ROW_GROUPS } });
  const label = `q4 gemv1 swiglu 1×${gate.in}·[${g.q.label}, ${u.q.label}]ᵀ`;
  const uniforms = ctx.uniforms(`${label} params`, uniformFields({ M: 1, N: gate.out, K: gate.in, ldy: gate.out, off: 0, R: 0, s: 0, bRow0: 0 }));
  const workgroups = grid1d(ctx, Math.ceil(gate.out / (GEMV1_ROW_GROUPS * GEMV1_ROWS_PER_THREAD)), label);
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, X, g.q, g.sm, Y, u.q, u.sm]), workgroups };
}

export async function q4Matmul(ctx: GpuContext, X: Tensor, W: Q4Weight, Y: Tensor, M: number, opts: Q4MatmulOptions = {}): Promise<void> {
  await ctx.run(await prepareQ4Matmul(ctx, X, W, Y, M, opts));
}

/**
 * The adapter's share of dX fused into the q4 dX kernel (first row block): dX = s·mask⊙(G·A) + dY·W, with
 * G = dY·B already computed and A [rank, in]; the mask is lora_dropout's on X (`dropout`, as the forward's
 * XA drew it; none without).
 */
export interface Q4DxLoraPrologue {
  G: Tensor;
  A: Tensor;
  rank: number;
  scale: number;
  /** lora_dropout: element (m, k) kept where dropout_hash(seed, m·in + k) ≥ threshold, then × keepScale. */
  dropout?: { seed: number; threshold: number; keepScale: number };
  /** Receives the uniforms that hold the seed (field Q4_SEED_FIELD), so a new step can rewrite it. */
  onSeeded?: (uniforms: GPUBuffer, fields: UniformField[]) => void;
}

export interface Q4DxOptions {
  tile?: 'wide' | 'narrow';
  /** Register-staged loads (default where dY loads as 16 bytes). */
  prefetch?: boolean;
  /** With prefetch: two buffers of each tile, one barrier per step instead of two (32 KiB of workgroup memory). */
  doubleBuffer?: boolean;
  lora?: Q4DxLoraPrologue;
}

/** Whether prepareQ4MatmulDx can fuse a LoRA prologue for this weight (the register-staged path: 16-byte dY rows). */
export function q4DxCanFuseLora(W: Q4Weight): boolean {
  return W.out % 4 === 0;
}

/**
 * dX = dY·W (activation grad: written), dY [M, out], W 4-bit [out, in], dX [M, in]. With row blocks the
 * first block writes dX and later blocks add to it (in dispatch order, so deterministic).
 * `accumulate` makes the first block add as well (dX += dY·W, e.g. to add onto another path's gradient).
 * `lora` folds the adapter's s·(G·A) into the first block (see Q4DxLoraPrologue).
 */
export async function prepareQ4MatmulDx(
  ctx: GpuContext,
  dY: Tensor,
  W: Q4Weight,
  dX: Tensor,
  M: number,
  accumulate = false,
  opts: Q4DxOptions = {},
): Promise<KernelDispatch[]> {
  const K = W.in;
  const kern = `q4 dX ${W.label}`;
  need(kern, 'dY', dY, M * W.out * 4);
  need(kern, 'dX', dX, M * K * 4);
  const lora = opts.lora;
  if (lora) {
    if (!q4DxCanFuseLora(W)) throw new Error(`${kern}: the fused LoRA prologue needs out features divisible by 4 (got ${W.out})`);
    need(kern, 'G', lora.G, M * lora.rank * 4);
    need(kern, 'A', lora.A, lora.rank * K * 4);
  }
  const { wide, edge } = tileEdge(M, K, opts.tile);
  const out: KernelDispatch[] = [];
  for (const [i, b] of W.blocks.entries()) {
    const acc = accumulate || i > 0;
    // 16-byte loads of dY when its rows and this block's first column are 16-byte aligned.
    const vec4 = W.out % 4 === 0 && b.row0 % 4 === 0;
    // Register-staged loads (dY as whole 4×4 blocks) need the 16-byte dY loads.
    const withLora = !!lora && i === 0;
    const prefetch = ((opts.prefetch ?? true) && vec4) || withLora;
    const dropout = withLora ? lora.dropout : undefined;
    if (dropout) registerDropoutInclude(ctx);
    const defines = { OP: 'dx', ACCUMULATE: acc, WIDE: wide, VEC4: vec4, PREFETCH: prefetch, DX_DBUF: prefetch && !!opts.doubleBuffer && fitsDoubleBuffer(ctx), LORA: withLora, DROPOUT: !!dropout };
    const pipeline = await ctx.pipeline({ shader: q4Shader(ctx), entryPoint: 'q4_matmul_dx', defines });
    const label = `q4 dX${wide ? ' wide' : ''}${prefetch ? ' pref' : ''}${withLora ? `+lora${dropout ? ' dropout' : ''}` : ''} ${M}×${b.rows}·${b.q.label}${acc ? ' +=' : ''}`;
    const fields = uniformFields({ M, N: b.rows, K, ldy: W.out, off: b.row0, ...(withLora ? { R: lora.rank, s: lora.scale } : {}), ...(dropout ?? {}) });
    const uniforms = ctx.uniforms(`${label} params`, fields);
    if (dropout) lora?.onSeeded?.(uniforms, fields);
    const res = [uniforms, dY, b.q, b.sm, dX, ...(withLora ? [lora.G, lora.A] : [])];
    out.push({ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, res), workgroups: [Math.ceil(K / edge), Math.ceil(M / edge), 1] });
  }
  return out;
}

export async function q4MatmulDx(ctx: GpuContext, dY: Tensor, W: Q4Weight, dX: Tensor, M: number, accumulate = false, opts: Q4DxOptions = {}): Promise<void> {
  await ctx.run(await prepareQ4MatmulDx(ctx, dY, W, dX, M, accumulate, opts));
}
