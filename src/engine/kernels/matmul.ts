import matmulWgsl from '../../../shaders/matmul.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { grid1d } from './grid.ts';

export const MATMUL_SHADER = { name: 'matmul.wgsl', code: matmulWgsl };

export interface MatmulOptions {
  /** A is stored [K, M] (use Aᵀ). */
  transA?: boolean;
  /** B is stored [N, K] (use Bᵀ): the forward of a linear layer with HF weights [out, in]. */
  transB?: boolean;
  /** C += alpha·op(A)·op(B) instead of C = ... (gradient accumulation). */
  accumulate?: boolean;
  alpha?: number;
  /** Number of matrices; each operand's batch stride in elements (0 = shared by the whole batch). */
  batch?: number;
  batchStrideA?: number;
  batchStrideB?: number;
  batchStrideC?: number;
  /** Force the untiled kernel ('small'), the 64×64 ('narrow') or 128×128 ('wide') tile instead of choosing by shape. */
  tile?: 'small' | 'narrow' | 'wide';
  /** Tuning (benchmarks, tests): k-depth of the workgroup tile, and register-staged loads (on by default when both operands load as vec4). */
  tileK?: 8 | 16 | 32;
  prefetch?: boolean;
  /** Keep k-contiguous operands ([M, K] A, [N, K] B) k-contiguous in workgroup memory (no transpose on load; needs prefetch). */
  kcontig?: boolean;
  /** Two buffers of each workgroup tile, one barrier per k-step instead of two (needs prefetch). */
  doubleBuffer?: boolean;
}

export interface MatmulShape {
  M: number;
  N: number;
  K: number;
}

/** Workgroup tile edge for the two thread-tile variants (16×16 threads × 4×4 or 8×8 outputs). */
const TILE_EDGE = { narrow: 64, wide: 128 } as const;
const TILE_K = 16;
const SMALL_EDGE = 8;
const SMALL_WORK = 1 << 21;

/**
 * Variant choice: the 128×128 tile (8×8 per thread) wherever there are enough output tiles to fill a
 * large GPU and a long enough reduction, the 64×64 tile for small or short products (fewer wasted lanes on
 * ragged edges, more workgroups in flight); 16-byte loads when
 * the contiguous dimension of an operand and its batch stride are multiples of 4 elements.
 */
export function matmulVariant({ M, N, K }: MatmulShape, opts: MatmulOptions, strides: { sa: number; sb: number }, software = false) {
  // Below ~4 MFLOP (or with a degenerate side) a tile's shared loads do not repay its barriers.
  // On CPU adapters the untiled kernel wins at every size (barriers are the expensive part there).
  const small = opts.tile ? opts.tile === 'small' : software || M * N * K <= SMALL_WORK || M <= 4 || N <= 4;
  // A short reduction (a LoRA epilogue, K = rank) is bound by C's traffic, not by fmas: the 64×64 tile's
  // more, lighter workgroups ran tokens×64 → 8192 (C +=) 3× faster on the H100 (0.118 vs 0.354 ms).
  const wide = opts.tile ? opts.tile === 'wide' : M >= 256 && N >= 256 && K >= 256;
  const vec4A = (opts.transA ? M : K) % 4 === 0 && strides.sa % 4 === 0;
  const vec4B = (opts.transB ? K : N) % 4 === 0 && strides.sb % 4 === 0;
  // Register-staged loads with an 8-deep k-tile measured fastest on the H100 for A·B, Aᵀ·B (33.8 vs 27.1
  // TFLOP/s at 4096³, 36.9 vs 34.5 for dW).
  // X·Wᵀ (A [M, K], B [N, K], both k-contiguous) keeps both tiles k-contiguous, 16 deep: 36–37 TFLOP/s at
  // the 1.8B shapes on the H100 against 24–26 for the transposing tiles (8 deep: 26; 32 deep: 20–30).
  // A·B measured faster with the transposing tiles (34.0 vs 30.9 at 4096³), so it keeps them.
  const kcontigWanted = opts.kcontig ?? (!!opts.transB && !opts.transA);
  const prefetch = (opts.prefetch ?? (vec4A && vec4B && (!opts.transB || kcontigWanted))) && vec4A && vec4B;
  const tileK = opts.tileK ?? (prefetch ? (kcontigWanted && opts.transB ? 16 : 8) : TILE_K);
  // The k-contiguous tile of B is only read by the k-contiguous-A inner loop.
  const kcA = kcontigWanted && prefetch && !small && !opts.transA;
  const kcB = kcA && !!opts.transB;
  const dbuf = !!opts.doubleBuffer && prefetch && !small;
  // On CPU adapters the untiled kernel computes a 4×4 block per invocation (loads, not fmas, cost there).
  const block4 = small && software;
  return { small, block4, wide, vec4A, vec4B, prefetch, tileK, kcA, kcB, dbuf, tile: small ? SMALL_EDGE * (block4 ? 4 : 1) : wide ? TILE_EDGE.wide : TILE_EDGE.narrow };
}

function check(what: string, t: Tensor, needElems: number): void {
  const have = t.byteSize / 4;
  if (t.dtype !== 'f32') throw new Error(`matmul: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  if (have < needElems) throw new Error(`matmul: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${needElems}`);
}

/**
 * Prepares C = alpha·op(A)·op(B) (+C) as a dispatch that can be encoded many times.
 * Shapes go in a uniform buffer owned by the returned dispatch (freed with the GPU device).
 */
export async function prepareMatmul(
  ctx: GpuContext,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  { M, N, K }: MatmulShape,
  opts: MatmulOptions = {},
): Promise<KernelDispatch> {
  const batch = opts.batch ?? 1;
  const sa = opts.batchStrideA ?? (batch > 1 ? M * K : 0);
  const sb = opts.batchStrideB ?? (batch > 1 ? K * N : 0);
  const sc = opts.batchStrideC ?? M * N;
  check('A', A, (batch - 1) * sa + M * K);
  check('B', B, (batch - 1) * sb + K * N);
  check('C', C, (batch - 1) * sc + M * N);
  const v = fitWorkgroupMemory(ctx, matmulVariant({ M, N, K }, opts, { sa, sb }, ctx.features.software));
  const base = { TRANS_A: !!opts.transA, TRANS_B: !!opts.transB, ACCUMULATE: !!opts.accumulate };
  const pipeline = v.small
    ? await ctx.pipeline({ shader: MATMUL_SHADER, entryPoint: 'matmul_small', defines: { ...base, SMALL: true, BLOCK4: v.block4 } })
    : await tiledPipeline(ctx, v, base);
  const label = `matmul${opts.transA ? 'ᵀ' : ''}·${opts.transB ? 'ᵀ' : ''} ${M}×${K}·${K}×${N}${batch > 1 ? ` ×${batch}` : ''}`;
  const uniforms = ctx.uniforms(`${label} params`, params({ M, N, K, alpha: opts.alpha ?? 1, sa, sb, sc }));
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, A, B, C]), workgroups: tiledGrid(ctx, label, v.tile, M, N, batch) };
}

/** Bytes of workgroup memory the tiled kernel declares for this variant (matmul.wgsl's tile_a, tile_b). */
export function matmulWorkgroupBytes(v: ReturnType<typeof matmulVariant>): number {
  const edge = v.tile;
  const kcRow = v.tileK / 4 + (v.dbuf || v.tileK >= 32 ? 0 : 1);
  const a = v.kcA ? edge * kcRow * 16 : v.tileK * edge * 4;
  const b = v.kcB ? edge * kcRow * 16 : v.tileK * edge * 4;
  return (a + b) * (v.dbuf ? 2 : 1);
}

/** Double buffering where the tiles fit the device's workgroup memory, else the single-buffered kernel. */
function fitWorkgroupMemory(ctx: GpuContext, v: ReturnType<typeof matmulVariant>): ReturnType<typeof matmulVariant> {
  if (v.dbuf && matmulWorkgroupBytes(v) > ctx.limits.maxComputeWorkgroupStorageSize) return { ...v, dbuf: false };
  return v;
}

function tiledPipeline(ctx: GpuContext, v: ReturnType<typeof matmulVariant>, defines: Record<string, boolean>): Promise<GPUComputePipeline> {
  return ctx.pipeline({ shader: MATMUL_SHADER, entryPoint: 'matmul', defines: { ...defines, WIDE: v.wide, VEC4_A: v.vec4A, VEC4_B: v.vec4B, PREFETCH: v.prefetch, KC_A: v.kcA, KC_B: v.kcB, DBUF: v.dbuf }, constants: { TILE_K: v.tileK } });
}

function params(p: { M: number; N: number; K: number; alpha: number; sa: number; sb: number; sc: number; kSplit?: number }): UniformField[] {
  return [
    ['u32', p.M],
    ['u32', p.N],
    ['u32', p.K],
    ['f32', p.alpha],
    ['u32', p.sa],
    ['u32', p.sb],
    ['u32', p.sc],
    ['u32', p.kSplit ?? 0],
  ];
}

function tiledGrid(ctx: GpuContext, label: string, tile: number, M: number, N: number, z: number): [number, number, number] {
  const wx = Math.ceil(N / tile);
  const wy = Math.ceil(M / tile);
  const maxWg = ctx.limits.maxComputeWorkgroupsPerDimension;
  if (wx > maxWg || wy > maxWg || z > maxWg) throw new Error(`${label}: needs more workgroups than this adapter allows per dimension (${maxWg})`);
  return [wx, wy, z];
}

/**
 * Workgroups a split-K product aims for: the 128×128 tile gives dhidden = dlogits·lm_head of a 1024-token
 * loss chunk (2048 hidden) only 128 workgroups, one per SM of an H100, over a 92544-long reduction.
 */
export const SPLIT_K_TARGET_WORKGROUPS = 512;
/** Shortest k range a split-K slice gets (shorter ones spend more on partials than they gain). */
const SPLIT_K_MIN_DEPTH = 2048;

/**
 * How many k slices `prepareMatmulSplitK` should cut this product into: 1 (no split) on CPU adapters (the
 * untiled kernel), for batches, and where the output tiles already fill the GPU or the reduction is short.
 */
export function matmulSplits(shape: MatmulShape, opts: MatmulOptions, software = false, target = SPLIT_K_TARGET_WORKGROUPS): number {
  const v = matmulVariant(shape, opts, { sa: 0, sb: 0 }, software);
  if (v.small || (opts.batch ?? 1) > 1 || (shape.M * shape.N) % 4 !== 0) return 1;
  const tiles = Math.ceil(shape.M / v.tile) * Math.ceil(shape.N / v.tile);
  return Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(shape.K / SPLIT_K_MIN_DEPTH)));
}

/** Elements of the partials a split-K product of this shape needs (0 without a split). */
export function splitKPartialElems(shape: MatmulShape, splits: number): number {
  return splits > 1 ? splits * shape.M * shape.N : 0;
}

/**
 * C = alpha·op(A)·op(B) (+C) as split-K: the k range in `splits` slices (whole k-tiles), each slice's
 * product into its own partial [M, N] of `partials`, then one pass adds them in slice order (deterministic)
 * into C. For products whose output tiles are too few to fill the GPU; `splits` ≤ 1, or M·N not a
 * multiple of 4 (the sum runs on vec4), is the plain matmul. No batches.
 */
export async function prepareMatmulSplitK(ctx: GpuContext, A: Tensor, B: Tensor, C: Tensor, shape: MatmulShape, opts: MatmulOptions, split: { splits: number; partials: Tensor | null }): Promise<KernelDispatch[]> {
  const { M, N, K } = shape;
  if (split.splits <= 1 || (M * N) % 4 !== 0) return [await prepareMatmul(ctx, A, B, C, shape, opts)];
  if ((opts.batch ?? 1) > 1) throw new Error('matmul split-K: batches are not supported');
  check('A', A, M * K);
  check('B', B, K * N);
  check('C', C, M * N);
  // Slices need the tiled kernel: where the shape alone would take the untiled one, the 64×64 tile.
  const chosen = matmulVariant(shape, { ...opts, accumulate: false }, { sa: 0, sb: 0 }, ctx.features.software);
  const v = fitWorkgroupMemory(ctx, chosen.small ? matmulVariant(shape, { ...opts, accumulate: false, tile: 'narrow' }, { sa: 0, sb: 0 }, ctx.features.software) : chosen);
  const kSplit = Math.ceil(K / split.splits / v.tileK) * v.tileK;
  const slices = Math.ceil(K / kSplit);
  if (!split.partials) throw new Error('matmul split-K: no partials buffer');
  check('partials', split.partials, slices * M * N);
  const label = `matmul${opts.transA ? 'ᵀ' : ''}·${opts.transB ? 'ᵀ' : ''} ${M}×${K}·${K}×${N} split-K ${slices}`;
  const pipeline = await tiledPipeline(ctx, v, { TRANS_A: !!opts.transA, TRANS_B: !!opts.transB, ACCUMULATE: false, SPLIT_K: true });
  const uniforms = ctx.uniforms(`${label} params`, params({ M, N, K, alpha: 1, sa: 0, sb: 0, sc: M * N, kSplit }));
  const vec4s = (M * N) / 4;
  const sumLabel = `matmul split-K sum ${slices}×${M}×${N}${opts.accumulate ? ' +=' : ''}`;
  const sum = await ctx.pipeline({ shader: MATMUL_SHADER, entryPoint: 'matmul_split_sum', defines: { SPLIT_SUM: true, ACCUMULATE: !!opts.accumulate } });
  const sumUniforms = ctx.uniforms(`${sumLabel} params`, params({ M: vec4s, N: 0, K: 0, alpha: opts.alpha ?? 1, sa: 0, sb: 0, sc: vec4s, kSplit: slices }));
  return [
    { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [uniforms, A, B, split.partials]), workgroups: tiledGrid(ctx, label, v.tile, M, N, slices) },
    { label: sumLabel, pipeline: sum, bindGroup: ctx.bindGroup(sumLabel, sum, [sumUniforms, split.partials, C]), workgroups: grid1d(ctx, Math.ceil(vec4s / 256), sumLabel) },
  ];
}

/** Convenience for tools and tests: prepare, run once, wait. */
export async function matmul(ctx: GpuContext, A: Tensor, B: Tensor, C: Tensor, shape: MatmulShape, opts: MatmulOptions = {}): Promise<void> {
  await ctx.run([await prepareMatmul(ctx, A, B, C, shape, opts)]);
}
