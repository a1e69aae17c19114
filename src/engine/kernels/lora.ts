import loraWgsl from '../../../shaders/lora.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { prepareMatmul } from './matmul.ts';
import { prepareQ4Matmul, prepareQ4MatmulDx, type Q4Weight } from './quant4.ts';

/**
 * A LoRA adapter on a linear layer: Y = X·Wᵀ + s·dropout(X)·Aᵀ·Bᵀ, s = alpha / rank, W frozen (4-bit or
 * f32). Forward: U = dropout(X)·Aᵀ [M, rank] once (kept for the backward), then the base matmul with
 * +s·U·Bᵀ fused into its epilogue (4-bit base; the f32 base adds it with a second accumulate matmul).
 * Backward: dX = dY·W + s·mask⊙((dY·B)·A), dB += s·dYᵀ·U, dA += s·(dY·B)ᵀ·dropout(X).
 */
export const LORA_SHADER = { name: 'lora.wgsl', code: loraWgsl };

export interface LoraAdapter {
  /** [rank, in] */
  A: Tensor;
  /** [out, rank] */
  B: Tensor;
  rank: number;
  alpha: number;
  /** lora_dropout probability p in [0, 1); 0 = none. */
  dropout?: number;
}

/** The frozen base weight: 4-bit (row blocks allowed) or f32 [out, in]. */
export type LoraBase = { kind: 'q4'; W: Q4Weight } | { kind: 'f32'; W: Tensor; out: number; in: number };

export interface LoraGrads {
  /** [rank, in], accumulated (+=). */
  dA: Tensor;
  /** [out, rank], accumulated (+=). */
  dB: Tensor;
}

/** Prepared dispatches; the dropout seed lives in a uniform, so a new step only rewrites it. */
export interface LoraPass {
  readonly dispatches: readonly KernelDispatch[];
  setSeed(seed: number): void;
}

// ---- dropout mask (mirrors lora.wgsl) --------------------------------------------------------------

function lowbias32(v: number): number {
  let x = v >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** The counter-based hash of (seed, element index m·in + k) that decides dropout. */
export function loraDropoutHash(seed: number, index: number): number {
  const s = lowbias32(seed);
  return lowbias32((lowbias32((index ^ s) >>> 0) + s) >>> 0);
}

/** Elements whose hash is below this are dropped. */
export function loraDropoutThreshold(p: number): number {
  if (!(p >= 0 && p < 1)) throw new Error(`lora dropout must be in [0, 1), got ${p}`);
  return Math.min(0xffffffff, Math.round(p * 2 ** 32));
}

/** The factor dropout applies to X[m, k] (index = m·in + k): 0, or 1/(1-p) as the GPU's f32. */
export function loraDropoutFactor(seed: number, index: number, p: number): number {
  if (p === 0) return 1;
  return loraDropoutHash(seed, index) < loraDropoutThreshold(p) ? 0 : Math.fround(1 / (1 - p));
}

// ---- kernels ---------------------------------------------------------------------------------------

const TILE = 32;

function need(kernel: string, what: string, t: Tensor, elems: number): void {
  if (t.dtype !== 'f32') throw new Error(`${kernel}: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  if (t.byteSize < elems * 4) throw new Error(`${kernel}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${t.byteSize / 4} elements, needs ${elems}`);
}

interface LoraMm {
  dispatch: KernelDispatch;
  uniforms: GPUBuffer;
  fields: UniformField[];
}

async function prepareLoraMm(
  ctx: GpuContext,
  mode: 'XA' | 'DA' | 'DX',
  a: Tensor,
  b: Tensor,
  c: Tensor,
  shape: { rows: number; cols: number; red: number; K: number; R: number },
  scale: number,
  p: number,
  seed: number,
): Promise<LoraMm> {
  const pipeline = await ctx.pipeline({ shader: LORA_SHADER, entryPoint: 'lora_mm', defines: { MODE: mode, DROPOUT: p > 0 }, constants: { TILE, TILE_R: 16 } });
  const label = `lora ${mode} ${shape.rows}×${shape.cols} (red ${shape.red})${p > 0 ? ` dropout ${p}` : ''}`;
  const fields: UniformField[] = [
    ['u32', shape.rows],
    ['u32', shape.cols],
    ['u32', shape.red],
    ['u32', shape.K],
    ['u32', shape.R],
    ['f32', scale],
    ['u32', seed >>> 0],
    ['u32', p > 0 ? loraDropoutThreshold(p) : 0],
    ['f32', p > 0 ? 1 / (1 - p) : 1],
    ['u32', 0],
    ['u32', 0],
    ['u32', 0],
  ];
  const uniforms = ctx.uniforms(`${label} params`, fields);
  const workgroups: [number, number, number] = [Math.ceil(shape.cols / TILE), Math.ceil(shape.rows / TILE), 1];
  return { dispatch: { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, a, b, c]), workgroups }, uniforms, fields };
}

function seedSetter(ctx: GpuContext, mms: LoraMm[]): (seed: number) => void {
  return (seed) => {
    for (const mm of mms) {
      mm.fields[6] = ['u32', seed >>> 0];
      ctx.writeUniforms(mm.uniforms, mm.fields);
    }
  };
}

function baseShape(base: LoraBase): { out: number; inF: number } {
  return base.kind === 'q4' ? { out: base.W.out, inF: base.W.in } : { out: base.out, inF: base.in };
}

function checkAdapter(kernel: string, base: LoraBase, ad: LoraAdapter): void {
  const { out, inF } = baseShape(base);
  need(kernel, 'A', ad.A, ad.rank * inF);
  need(kernel, 'B', ad.B, out * ad.rank);
  if (base.kind === 'f32') need(kernel, 'W', base.W, out * inF);
}

/**
 * Forward: U = dropout(X)·Aᵀ (written, [M, rank], keep it for the backward), Y = X·Wᵀ + s·U·Bᵀ (written,
 * [M, out]). X [M, in]. With a 4-bit base the adapter term is the epilogue of the dequant matmul (Y is
 * written once); with an f32 base it is a second, accumulating matmul.
 */
export async function prepareLoraForward(ctx: GpuContext, base: LoraBase, ad: LoraAdapter, X: Tensor, U: Tensor, Y: Tensor, M: number, seed = 0): Promise<LoraPass> {
  const { out, inF } = baseShape(base);
  const kern = 'lora forward';
  checkAdapter(kern, base, ad);
  need(kern, 'X', X, M * inF);
  need(kern, 'U', U, M * ad.rank);
  need(kern, 'Y', Y, M * out);
  const s = ad.alpha / ad.rank;
  const p = ad.dropout ?? 0;
  const xa = await prepareLoraMm(ctx, 'XA', X, ad.A, U, { rows: M, cols: ad.rank, red: inF, K: inF, R: ad.rank }, s, p, seed);
  const dispatches: KernelDispatch[] = [xa.dispatch];
  if (base.kind === 'q4') {
    dispatches.push(...(await prepareQ4Matmul(ctx, X, base.W, Y, M, { lora: { U, B: ad.B, rank: ad.rank, scale: s } })));
  } else {
    dispatches.push(await prepareMatmul(ctx, X, base.W, Y, { M, N: out, K: inF }, { transB: true }));
    dispatches.push(await prepareMatmul(ctx, U, ad.B, Y, { M, N: out, K: ad.rank }, { transB: true, accumulate: true, alpha: s }));
  }
  return { dispatches, setSeed: seedSetter(ctx, [xa]) };
}

/**
 * Backward given dY [M, out]: dX (written, [M, in]) = dY·W + s·mask⊙(G·A); dB += s·dYᵀ·U; dA += s·Gᵀ·dropout(X),
 * where G = dY·B is written to the scratch `G` [M, rank]. U is the forward's; `seed` must be the forward's.
 */
export async function prepareLoraBackward(
  ctx: GpuContext,
  base: LoraBase,
  ad: LoraAdapter,
  X: Tensor,
  U: Tensor,
  dY: Tensor,
  dX: Tensor,
  grads: LoraGrads,
  G: Tensor,
  M: number,
  seed = 0,
): Promise<LoraPass> {
  const { out, inF } = baseShape(base);
  const kern = 'lora backward';
  checkAdapter(kern, base, ad);
  need(kern, 'X', X, M * inF);
  need(kern, 'U', U, M * ad.rank);
  need(kern, 'dY', dY, M * out);
  need(kern, 'dX', dX, M * inF);
  need(kern, 'G', G, M * ad.rank);
  need(kern, 'dA', grads.dA, ad.rank * inF);
  need(kern, 'dB', grads.dB, out * ad.rank);
  const s = ad.alpha / ad.rank;
  const p = ad.dropout ?? 0;
  const r = ad.rank;
  const dispatches: KernelDispatch[] = [];
  if (base.kind === 'q4') dispatches.push(...(await prepareQ4MatmulDx(ctx, dY, base.W, dX, M)));
  else dispatches.push(await prepareMatmul(ctx, dY, base.W, dX, { M, N: inF, K: out }));
  dispatches.push(await prepareMatmul(ctx, dY, ad.B, G, { M, N: r, K: out }));
  const dx = await prepareLoraMm(ctx, 'DX', G, ad.A, dX, { rows: M, cols: inF, red: r, K: inF, R: r }, s, p, seed);
  dispatches.push(dx.dispatch);
  dispatches.push(await prepareMatmul(ctx, dY, U, grads.dB, { M: out, N: r, K: M }, { transA: true, accumulate: true, alpha: s }));
  const da = await prepareLoraMm(ctx, 'DA', G, X, grads.dA, { rows: r, cols: inF, red: M, K: inF, R: r }, s, p, seed);
  dispatches.push(da.dispatch);
  return { dispatches, setSeed: seedSetter(ctx, [dx, da]) };
}

/** Convenience for tools and tests: prepare, run once, wait. */
export async function loraForward(ctx: GpuContext, base: LoraBase, ad: LoraAdapter, X: Tensor, U: Tensor, Y: Tensor, M: number, seed = 0): Promise<void> {
  await ctx.run((await prepareLoraForward(ctx, base, ad, X, U, Y, M, seed)).dispatches);
}

export async function loraBackward(
  ctx: GpuContext,
  base: LoraBase,
  ad: LoraAdapter,
  X: Tensor,
  U: Tensor,
  dY: Tensor,
  dX: Tensor,
  grads: LoraGrads,
  G: Tensor,
  M: number,
  seed = 0,
): Promise<void> {
  await ctx.run((await prepareLoraBackward(ctx, base, ad, X, U, dY, dX, grads, G, M, seed)).dispatches);
}
