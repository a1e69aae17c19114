import loraWgsl from '../../../shaders/lora.wgsl';
import { tensorBinding } from '../gpu/context.ts';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { prepareMatmul } from './matmul.ts';
import { registerDropoutInclude } from './dropout.ts';
import { prepareQ4Matmul, prepareQ4MatmulDx, q4DxCanFuseLora, Q4_SEED_FIELD, type Q4Weight } from './quant4.ts';

/**
 * A LoRA adapter on a linear layer: Y = X·Wᵀ + s·dropout(X)·Aᵀ·Bᵀ, s = alpha / rank, W frozen (4-bit or
 * f32). Forward: U = dropout(X)·Aᵀ [M, rank] once (kept for the backward), then the base matmul with
 * +s·U·Bᵀ fused into its epilogue (4-bit base; the f32 base adds it with a second accumulate matmul).
 * Backward: dX = dY·W + s·mask⊙((dY·B)·A), dB += s·dYᵀ·U, dA += s·(dY·B)ᵀ·dropout(X).
 * The rank-r products with long reductions run split-K with an ordered reduce (deterministic).
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

const TILE = 64;
/** The barrier-free kernel's tile: 8×8 invocations of 4×4 outputs (lora.wgsl, SOFTWARE). */
const SOFTWARE_TILE = 32;
const TILE_R = 16;
/**
 * Split-K aims for about this many workgroups of 256 threads (a large GPU has ~132 SMs). With register-staged
 * loads, 768 and 1536 measured slower on the H100 (the extra slices cost more in the reduce than they win).
 */
const SPLIT_TARGET_WORKGROUPS = 384;
/** Shortest slice of a split reduction. */
const MIN_CHUNK = 64;

type Mode = 'XA' | 'GB' | 'DX' | 'DB' | 'DA';

interface SmallShape {
  rows: number;
  cols: number;
  red: number;
}

/** How a product is split: `slices` of `chunk` reduction steps (1 slice = no split, no scratch). */
function splitOf({ rows, cols, red }: SmallShape): { slices: number; chunk: number } {
  const tiles = Math.ceil(rows / TILE) * Math.ceil(cols / TILE);
  const want = Math.min(Math.ceil(red / MIN_CHUNK), Math.max(1, Math.ceil(SPLIT_TARGET_WORKGROUPS / tiles)));
  const chunk = Math.ceil(Math.ceil(red / want) / TILE_R) * TILE_R;
  return { slices: Math.ceil(red / chunk), chunk };
}

function loraShapes(M: number, inF: number, out: number, r: number): Record<Exclude<Mode, 'DX'>, SmallShape> {
  return {
    XA: { rows: M, cols: r, red: inF },
    GB: { rows: M, cols: r, red: out },
    DB: { rows: out, cols: r, red: M },
    DA: { rows: r, cols: inF, red: M },
  };
}

/**
 * f32 elements of split-K scratch the forward and backward of one LoRA layer need (0 when nothing is
 * split). One scratch tensor can serve every layer: the products run in order.
 */
export function loraScratchElems(M: number, inF: number, out: number, rank: number): number {
  return Math.max(0, ...Object.values(loraShapes(M, inF, out, rank)).map(scratchElemsOf));
}

/** Split-K scratch one product needs: its slices' partial outputs (0 when it is not split). */
function scratchElemsOf(sh: SmallShape): number {
  const { slices } = splitOf(sh);
  return slices > 1 ? slices * sh.rows * sh.cols : 0;
}

function need(kernel: string, what: string, t: Tensor, elems: number): void {
  if (t.dtype !== 'f32') throw new Error(`${kernel}: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  if (t.byteSize < elems * 4) throw new Error(`${kernel}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${t.byteSize / 4} elements, needs ${elems}`);
}

interface Prepared {
  dispatches: KernelDispatch[];
  /** Uniform buffers holding the dropout seed (field `seedField`, else 6: lora.wgsl's). */
  seeded: { uniforms: GPUBuffer; fields: UniformField[]; seedField?: number }[];
}

interface SmallArgs {
  mode: Mode;
  a: Tensor;
  b: Tensor;
  c: Tensor;
  shape: SmallShape;
  K: number;
  N: number;
  R: number;
  scale: number;
  p: number;
  seed: number;
  scratch: () => Tensor;
  /** GB only: G += dY·B (outputs sharing one A) instead of G = dY·B. */
  accumulate?: boolean;
  /** Barrier-free variant (default: on CPU adapters, where barriers are the expensive part). */
  software?: boolean;
  /** lora.wgsl's lora_panel (one dispatch, the reduction split within each workgroup) instead of split-K + reduce. */
  panel?: boolean;
}

/** Whether the product reads dropout(X) (the mask on X: XA's left operand, DA's right one, DX's output). */
function takesDropout(x: SmallArgs): boolean {
  return x.p > 0 && (x.mode === 'XA' || x.mode === 'DX' || x.mode === 'DA');
}

/** lora.wgsl's Params for one product: chunk (split-K slice length) and slices (the reduce's) where they apply. */
function smallFields(x: SmallArgs, dropout: boolean, chunk: number, slices: number): UniformField[] {
  return [
    ['u32', x.shape.rows],
    ['u32', x.shape.cols],
    ['u32', x.shape.red],
    ['u32', x.K],
    ['u32', x.R],
    ['f32', x.scale],
    ['u32', x.seed >>> 0],
    ['u32', dropout ? loraDropoutThreshold(x.p) : 0],
    ['f32', dropout ? 1 / (1 - x.p) : 1],
    ['u32', chunk],
    ['u32', x.N],
    ['u32', slices],
  ];
}

/** One rank-r product of lora.wgsl: a single tiled dispatch, or split-K slices plus an ordered reduce. */
async function prepareSmall(ctx: GpuContext, x: SmallArgs): Promise<Prepared> {
  registerDropoutInclude(ctx);
  const { rows, cols, red } = x.shape;
  const software = x.software ?? ctx.features.software;
  // Panels where asked (CPU adapters included, unless the barrier-free kernels are asked for as well).
  if (x.panel && x.software !== true && x.mode !== 'DX') return preparePanel(ctx, x);
  // A CPU adapter runs a few invocations at a time: split-K would only add the reduce pass.
  const { slices, chunk } = x.mode === 'DX' || software ? { slices: 1, chunk: red } : splitOf(x.shape);
  const tile = software ? SOFTWARE_TILE : TILE;
  const split = slices > 1;
  const dropout = takesDropout(x);
  const fields = (extra: { slices?: number } = {}): UniformField[] => smallFields(x, dropout, chunk, extra.slices ?? 0);
  const gbAccumulate = x.mode === 'GB' && !!x.accumulate;
  const pipeline = await ctx.pipeline({ shader: LORA_SHADER, entryPoint: 'lora_mm', defines: { MODE: x.mode, DROPOUT: dropout, SPLIT: split, ACCUMULATE: gbAccumulate && !split, SOFTWARE: software } });
  const label = `lora ${x.mode} ${rows}×${cols} (red ${red}${split ? ` in ${slices} slices` : ''})${dropout ? ` dropout ${x.p}` : ''}`;
  const f = fields();
  const uniforms = ctx.uniforms(`${label} params`, f);
  const target = split ? x.scratch() : x.c;
  const dispatches: KernelDispatch[] = [
    { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, x.a, x.b, target]), workgroups: [Math.ceil(cols / tile), Math.ceil(rows / tile), slices] },
  ];
  const seeded = dropout ? [{ uniforms, fields: f }] : [];
  if (split) {
    const accumulate = x.mode === 'DA' || x.mode === 'DB' || gbAccumulate;
    const rp = await ctx.pipeline({ shader: LORA_SHADER, entryPoint: 'lora_reduce', defines: { MODE: 'REDUCE', ACCUMULATE: accumulate } });
    const rl = `lora reduce ${x.mode} ${rows}×${cols} (${slices} slices)`;
    const rf = fields({ slices });
    // The reduce's accumulate is c += s·Σ: G carries no scale.
    if (gbAccumulate) rf[5] = ['f32', 1];
    const ru = ctx.uniforms(`${rl} params`, rf);
    // lora_reduce binds 0, 1 and 3 (no B operand), so the bind group names its bindings.
    const bindGroup = ctx.device.createBindGroup({
      label: rl,
      layout: rp.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: ru } },
        { binding: 1, resource: tensorBinding(target) },
        { binding: 3, resource: tensorBinding(x.c) },
      ],
    });
    const groups = Math.ceil((rows * cols) / 256);
    const max = ctx.limits.maxComputeWorkgroupsPerDimension;
    dispatches.push({ label: rl, pipeline: rp, bindGroup, workgroups: [Math.min(groups, max), Math.ceil(groups / max), 1] });
  }
  return { dispatches, seeded };
}

/** lora_panel's output panel: rows × columns of C per workgroup. */
const PANEL_ROWS = 16;
const PANEL_COLS = 64;

/** One rank-r product (not DX) as lora_panel: one dispatch, no partials, no reduce. */
async function preparePanel(ctx: GpuContext, x: SmallArgs): Promise<Prepared> {
  const { rows, cols, red } = x.shape;
  const dropout = takesDropout(x);
  const fields = smallFields(x, dropout, 0, 0);
  const accumulate = x.mode === 'GB' && !!x.accumulate;
  const pipeline = await ctx.pipeline({ shader: LORA_SHADER, entryPoint: 'lora_panel', defines: { MODE: x.mode, DROPOUT: dropout, PANEL: true, ACCUMULATE: accumulate } });
  const label = `lora ${x.mode} ${rows}×${cols} (red ${red}, panels)${dropout ? ` dropout ${x.p}` : ''}`;
  const uniforms = ctx.uniforms(`${label} params`, fields);
  const workgroups: [number, number, number] = [Math.ceil(cols / PANEL_COLS), Math.ceil(rows / PANEL_ROWS), 1];
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  if (workgroups[1] > max) throw new Error(`${label}: ${workgroups[1]} row panels exceed this adapter's ${max} workgroups per dimension`);
  return { dispatches: [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, x.a, x.b, x.c]), workgroups }], seeded: dropout ? [{ uniforms, fields }] : [] };
}

function seedSetter(ctx: GpuContext, seeded: Prepared['seeded']): (seed: number) => void {
  return (seed) => {
    for (const u of seeded) {
      u.fields[u.seedField ?? 6] = ['u32', seed >>> 0];
      ctx.writeUniforms(u.uniforms, u.fields);
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

/** The split-K scratch: the caller's (checked), or one allocated on first need and owned by the pass. */
function scratchFor(ctx: GpuContext, kernel: string, given: Tensor | undefined, elems: number): () => Tensor {
  let t = given;
  if (t) need(kernel, 'scratch', t, elems);
  return () => (t ??= ctx.tensor(`${kernel} split-K scratch`, [elems]));
}

/** What every rank-r product of one adapter pass shares (everything of SmallArgs but the operands and shape). */
function passArgs(ctx: GpuContext, kern: string, ad: LoraAdapter, M: number, { out, inF }: { out: number; inF: number }, opts: LoraPassOptions) {
  const r = ad.rank;
  return { K: inF, N: out, R: r, scale: ad.alpha / r, p: ad.dropout ?? 0, seed: opts.seed ?? 0, scratch: scratchFor(ctx, kern, opts.scratch, loraScratchElems(M, inF, out, r)), ...(opts.software !== undefined ? { software: opts.software } : {}), ...(opts.panel ? { panel: true } : {}) };
}

export interface LoraPassOptions {
  /** Dropout seed (the backward must use the forward's); can be changed later with setSeed. */
  seed?: number;
  /** Split-K scratch of at least loraScratchElems(M, in, out, rank) f32 (shared across layers). */
  scratch?: Tensor;
  /** Force the barrier-free (true) or the tiled (false) rank-r kernels; default: barrier-free on CPU adapters. */
  software?: boolean;
  /**
   * The rank-r products (XA, GB, DB, DA) as lora.wgsl's lora_panel, one dispatch each, instead of split-K
   * slices and a reduce pass (default off until measured; on CPU adapters too when asked, unless `software`
   * is asked for as well).
   */
  panel?: boolean;
  /**
   * Backward with a 4-bit base and lora_dropout: the masked adapter term inside the q4 dX kernel (default)
   * instead of lora.wgsl's separate DX pass over dX. Benchmarks compare the two.
   */
  fuseMaskedDx?: boolean;
  /**
   * Forward with a 4-bit base: the adapter term s·U·Bᵀ as extra reduction steps of the dequant matmul
   * (default) or as a separate accumulating matmul after the bare one. Benchmarks compare the two: on the H100
   * the fused forward measured 22.6–25.1% over the bare k-contiguous kernel at 2048 tokens (session 9), far
   * more than its R extra steps explain.
   */
  fuseForwardEpilogue?: boolean;
}

/**
 * Forward: U = dropout(X)·Aᵀ (written, [M, rank], keep it for the backward), Y = X·Wᵀ + s·U·Bᵀ (written,
 * [M, out]). X [M, in]. With a 4-bit base the adapter term is the epilogue of the dequant matmul (Y is
 * written once); with an f32 base it is a second, accumulating matmul.
 */
export async function prepareLoraForward(ctx: GpuContext, base: LoraBase, ad: LoraAdapter, X: Tensor, U: Tensor, Y: Tensor, M: number, opts: LoraPassOptions = {}): Promise<LoraPass> {
  const { out, inF } = baseShape(base);
  const kern = 'lora forward';
  checkAdapter(kern, base, ad);
  need(kern, 'X', X, M * inF);
  need(kern, 'U', U, M * ad.rank);
  need(kern, 'Y', Y, M * out);
  const s = ad.alpha / ad.rank;
  const r = ad.rank;
  const common = passArgs(ctx, kern, ad, M, { out, inF }, opts);
  const xa = await prepareSmall(ctx, { mode: 'XA', a: X, b: ad.A, c: U, shape: loraShapes(M, inF, out, r).XA, ...common });
  const dispatches: KernelDispatch[] = [...xa.dispatches];
  if (base.kind === 'q4' && (opts.fuseForwardEpilogue ?? true)) {
    dispatches.push(...(await prepareQ4Matmul(ctx, X, base.W, Y, M, { lora: { U, B: ad.B, rank: r, scale: s } })));
  } else if (base.kind === 'q4') {
    dispatches.push(...(await prepareQ4Matmul(ctx, X, base.W, Y, M)));
    dispatches.push(await prepareMatmul(ctx, U, ad.B, Y, { M, N: out, K: r }, { transB: true, accumulate: true, alpha: s }));
  } else {
    dispatches.push(await prepareMatmul(ctx, X, base.W, Y, { M, N: out, K: inF }, { transB: true }));
    dispatches.push(await prepareMatmul(ctx, U, ad.B, Y, { M, N: out, K: r }, { transB: true, accumulate: true, alpha: s }));
  }
  return { dispatches, setSeed: seedSetter(ctx, xa.seeded) };
}

/**
 * Backward given dY [M, out]: dX (written, [M, in]) = dY·W + s·mask⊙(G·A); dB += s·dYᵀ·U; dA += s·Gᵀ·dropout(X),
 * where G = dY·B is written to `G` [M, rank]. U is the forward's; the seed must be the forward's.
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
  opts: LoraPassOptions = {},
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
  const r = ad.rank;
  const sh = loraShapes(M, inF, out, r);
  const common = passArgs(ctx, kern, ad, M, { out, inF }, opts);
  const dispatches: KernelDispatch[] = [];
  const gb = await prepareSmall(ctx, { mode: 'GB', a: dY, b: ad.B, c: G, shape: sh.GB, ...common });
  const parts: Prepared[] = [];
  if (base.kind === 'q4' && q4DxCanFuseLora(base.W) && ((opts.fuseMaskedDx ?? true) || !(ad.dropout ?? 0))) {
    // G first, then one q4 dX kernel that starts from s·mask⊙(G·A) and adds dY·W: dX is written once
    // (the separate DX pass read and rewrote all of dX).
    const fused = await prepareQ4DxPrologue(ctx, base.W, { dY, G, A: ad.A, dX }, { M, rank: r, scale: s, dropout: ad.dropout ?? 0, seed: common.seed });
    parts.push(gb, fused);
  } else {
    dispatches.push(...(base.kind === 'q4' ? await prepareQ4MatmulDx(ctx, dY, base.W, dX, M) : [await prepareMatmul(ctx, dY, base.W, dX, { M, N: inF, K: out })]));
    parts.push(gb, await prepareSmall(ctx, { mode: 'DX', a: G, b: ad.A, c: dX, shape: { rows: M, cols: inF, red: r }, ...common }));
  }
  parts.push(
    await prepareSmall(ctx, { mode: 'DB', a: dY, b: U, c: grads.dB, shape: sh.DB, ...common }),
    await prepareSmall(ctx, { mode: 'DA', a: G, b: X, c: grads.dA, shape: sh.DA, ...common }),
  );
  for (const p of parts) dispatches.push(...p.dispatches);
  return { dispatches, setSeed: seedSetter(ctx, parts.flatMap((p) => p.seeded)) };
}

/** Convenience for tools and tests: prepare, run once, wait. */
export async function loraForward(ctx: GpuContext, base: LoraBase, ad: LoraAdapter, X: Tensor, U: Tensor, Y: Tensor, M: number, opts: LoraPassOptions = {}): Promise<void> {
  await ctx.run((await prepareLoraForward(ctx, base, ad, X, U, Y, M, opts)).dispatches);
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
  opts: LoraPassOptions = {},
): Promise<void> {
  await ctx.run((await prepareLoraBackward(ctx, base, ad, X, U, dY, dX, grads, G, M, opts)).dispatches);
}

/**
 * One dropout-carrying product of lora.wgsl on its own, for engines that compose LoRA themselves (an A
 * shared by several outputs, as InternLM2's packed wqkv needs):
 *   XA: U = dropout(X)·Aᵀ (a = X, b = A, c = U, written)
 *   DX: dX += s·mask⊙(G·A) (a = G, b = A, c = dX)
 *   DA: dA += s·Gᵀ·dropout(X) (a = G, b = X, c = dA)
 * The seed must be the same for a step's XA and its backward's DX/DA; change it with setSeed.
 */
export async function prepareLoraProduct(
  ctx: GpuContext,
  mode: 'XA' | 'DX' | 'DA' | 'GB' | 'DB',
  t: { a: Tensor; b: Tensor; c: Tensor },
  d: { M: number; inF: number; rank: number; scale: number; dropout: number; seed?: number; scratch?: Tensor; out?: number; accumulate?: boolean; panel?: boolean; software?: boolean },
): Promise<LoraPass> {
  const kern = `lora ${mode}`;
  if ((mode === 'GB' || mode === 'DB') && !d.out) throw new Error(`${kern}: needs the out features (dY's row length)`);
  const shapes = loraShapes(d.M, d.inF, d.out ?? 0, d.rank);
  const shape = mode === 'DX' ? { rows: d.M, cols: d.inF, red: d.rank } : shapes[mode];
  const common = { K: d.inF, N: d.out ?? 0, R: d.rank, scale: d.scale, p: d.dropout, seed: d.seed ?? 0, scratch: scratchFor(ctx, kern, d.scratch, scratchElemsOf(shape)) };
  const prepared = await prepareSmall(ctx, { mode, a: t.a, b: t.b, c: t.c, shape, ...common, accumulate: d.accumulate, ...(d.panel ? { panel: true } : {}), ...(d.software !== undefined ? { software: d.software } : {}) });
  return { dispatches: prepared.dispatches, setSeed: seedSetter(ctx, prepared.seeded) };
}

/**
 * dX (=, or += with accumulate) = s·mask⊙(G·A) + dY·W for a 4-bit W in one kernel (q4DxCanFuseLora(W)):
 * the adapter's DX product fused into the base dX, G = dY·B computed beforehand, the mask lora_dropout's
 * on X (the seed must be the forward XA's; change it with setSeed).
 */
export async function prepareLoraQ4Dx(
  ctx: GpuContext,
  W: Q4Weight,
  t: { dY: Tensor; G: Tensor; A: Tensor; dX: Tensor },
  d: { M: number; rank: number; scale: number; dropout: number; seed?: number; accumulate?: boolean },
): Promise<LoraPass> {
  const prepared = await prepareQ4DxPrologue(ctx, W, t, { ...d, seed: d.seed ?? 0 });
  return { dispatches: prepared.dispatches, setSeed: seedSetter(ctx, prepared.seeded) };
}

async function prepareQ4DxPrologue(
  ctx: GpuContext,
  W: Q4Weight,
  t: { dY: Tensor; G: Tensor; A: Tensor; dX: Tensor },
  d: { M: number; rank: number; scale: number; dropout: number; seed: number; accumulate?: boolean },
): Promise<Prepared> {
  const seeded: Prepared['seeded'] = [];
  const dropout = d.dropout > 0 ? { seed: d.seed, threshold: loraDropoutThreshold(d.dropout), keepScale: 1 / (1 - d.dropout) } : undefined;
  const dispatches = await prepareQ4MatmulDx(ctx, t.dY, W, t.dX, d.M, !!d.accumulate, {
    lora: { G: t.G, A: t.A, rank: d.rank, scale: d.scale, ...(dropout ? { dropout, onSeeded: (uniforms, fields) => seeded.push({ uniforms, fields, seedField: Q4_SEED_FIELD }) } : {}) },
  });
  return { dispatches, seeded };
}
