import matmulWgsl from '../../../shaders/matmul.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';

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
  // On CPU adapters the untiled kernel computes a 4×4 block per invocation (loads, not fmas, cost there).
  const block4 = small && software;
  return { small, block4, wide, vec4A, vec4B, prefetch, tileK, kcA, kcB, tile: small ? SMALL_EDGE * (block4 ? 4 : 1) : wide ? TILE_EDGE.wide : TILE_EDGE.narrow };
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
  const v = matmulVariant({ M, N, K }, opts, { sa, sb }, ctx.features.software);
  const base = { TRANS_A: !!opts.transA, TRANS_B: !!opts.transB, ACCUMULATE: !!opts.accumulate };
  const pipeline = v.small
    ? await ctx.pipeline({ shader: MATMUL_SHADER, entryPoint: 'matmul_small', defines: { ...base, SMALL: true, BLOCK4: v.block4 } })
    : await ctx.pipeline({ shader: MATMUL_SHADER, entryPoint: 'matmul', defines: { ...base, WIDE: v.wide, VEC4_A: v.vec4A, VEC4_B: v.vec4B, PREFETCH: v.prefetch, KC_A: v.kcA, KC_B: v.kcB }, constants: { TILE_K: v.tileK } });
  const label = `matmul${opts.transA ? 'ᵀ' : ''}·${opts.transB ? 'ᵀ' : ''} ${M}×${K}·${K}×${N}${batch > 1 ? ` ×${batch}` : ''}`;
  const uniforms = ctx.uniforms(`${label} params`, [
    ['u32', M],
    ['u32', N],
    ['u32', K],
    ['f32', opts.alpha ?? 1],
    ['u32', sa],
    ['u32', sb],
    ['u32', sc],
    ['u32', 0],
  ]);
  const wx = Math.ceil(N / v.tile);
  const wy = Math.ceil(M / v.tile);
  const maxWg = ctx.limits.maxComputeWorkgroupsPerDimension;
  if (wx > maxWg || wy > maxWg || batch > maxWg) throw new Error(`${label}: needs more workgroups than this adapter allows per dimension (${maxWg})`);
  return {
    label,
    pipeline,
    bindGroup: ctx.bindGroup(label, pipeline, [uniforms, A, B, C]),
    workgroups: [wx, wy, batch],
  };
}

/** Convenience for tools and tests: prepare, run once, wait. */
export async function matmul(ctx: GpuContext, A: Tensor, B: Tensor, C: Tensor, shape: MatmulShape, opts: MatmulOptions = {}): Promise<void> {
  await ctx.run([await prepareMatmul(ctx, A, B, C, shape, opts)]);
}
