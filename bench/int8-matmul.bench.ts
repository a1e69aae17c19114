/**
 * The int8 tensor-core matmuls (quant4_mma.wgsl) on a device with subgroup matrices (the lent H100):
 *  1. correctness first: every kernel against the float64 CPU reference of the same int8 operands (the
 *     GPU's own quantized activations, W re-quantized on the CPU as the kernel does), on ragged shapes, with
 *     row blocks, outputs poisoned with NaN before each run; rel. error must be < 1e-4 or the run fails;
 *  2. accuracy of the scheme against the exact f32 dequant matmul, for random activations and for
 *     real-like ones (2% of the columns 50× larger);
 *  3. speed at the InternLM2-1.8B shapes: effective TOPS (2·M·N·K over the time of quantize + matmul)
 *     next to the f32 4-bit kernels on the same shapes.
 * `node bench/build.mjs bench/int8-matmul.bench.ts`, then on the GPU `node dist-bench/int8-matmul.bench.mjs`
 * (`probes`: one shape, with timing probes that leave out the staging or the matrix loads).
 */
import type { GpuContext, KernelDispatch } from '../src/engine/gpu/context.ts';
import type { Defines } from '../src/engine/gpu/preprocess.ts';
import type { Tensor } from '../src/engine/gpu/tensor.ts';
import { createNodeGpuContext } from '../src/node/gpu.ts';
import { seededGaussian, seededRandom } from '../src/engine/random.ts';
import { allocQ4Weight, dequantizeQ4Cpu, prepareQ4Matmul, prepareQ4MatmulDx, prepareQuantizeQ4, quantizeQ4Cpu, releaseQ4Weight, writeQ4Rows, type Q4Host, type Q4Weight } from '../src/engine/kernels/quant4.ts';
import {
  allocInt8Scratch,
  cacheInt8Bounds,
  int8Layout,
  denseMatmulF64,
  int8MatmulCpu,
  int8MatmulDxCpu,
  int8MatmulSupport,
  largestQ4Block,
  prepareInt8Q4Matmul,
  prepareInt8Q4MatmulDx,
  prepareQuantizeRows,
  quantizeRowsCpu,
  releaseInt8Scratch,
  requantizeQ4Cpu,
  unpackInt8Rows,
  type Int8Scratch,
} from '../src/engine/kernels/quant4-mma.ts';
import { formatTable, timeDispatches, type BenchRow } from './harness.ts';

/** Gaussian rows with `outlierCols` columns 50× larger (real activations have a few such channels). */
function randomMatrix(rows: number, cols: number, seed: number, scale = 1, outlierCols = 0): Float32Array {
  const a = seededGaussian(rows * cols, seed, scale);
  const rand = seededRandom(seed ^ 0x9e3779b9);
  const big = new Set<number>();
  while (big.size < outlierCols) big.add(Math.floor(rand() * cols));
  for (const c of big) for (let r = 0; r < rows; r++) a[r * cols + c] = a[r * cols + c]! * 50;
  return a;
}

/** ‖out − ref‖ / ‖ref‖, NaN when out holds a non-finite value (the tests' relError, without vitest). */
function relError(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = out[i]! - ref[i]!;
    if (!Number.isFinite(out[i]!)) return NaN;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  return Math.sqrt(num / den);
}

/**
 * The integer sums are exact, so the kernels should match the CPU definition to f32 rounding; what moves
 * them is the weight grid: 127/absmax is a GPU division (2.5 ulp allowed), and the dequantised weight may
 * be fused (fma) or not, so a weight sitting on a rounding tie lands one int8 step apart on the two sides.
 * One such flip in 10⁵ weights shows as ~1e-4 relative; an indexing or staging bug shows as O(1).
 */
const REF_TOL = 1e-3;

interface Case {
  name: string;
  M: number;
  K: number; // in features
  N: number; // out features
  rowsPerBlock?: number;
  outlierCols?: number;
}

async function correctness(ctx: GpuContext, c: Case, seed: number, variant: Defines): Promise<{ rows: BenchRow[]; ok: boolean }> {
  const { M, K, N } = c;
  const wHost: Q4Host = quantizeQ4Cpu(randomMatrix(N, K, seed, 0.02), N, K);
  const W = allocQ4Weight(ctx, `W ${c.name}`, N, K, c.rowsPerBlock);
  writeQ4Rows(ctx, W, 0, wHost);
  const wDeq = dequantizeQ4Cpu(wHost, N, K);
  const scratch = allocInt8Scratch(ctx, M, Math.max(K, N), largestQ4Block([W]));
  const rows: BenchRow[] = [];
  let ok = true;
  const poison = (t: Tensor) => ctx.write(t, new Float32Array(t.byteSize / 4).fill(NaN));
  // Forward, with one activation level and with the residual level.
  for (const residual of [false, true]) {
    const xs = randomMatrix(M, K, seed + 1, 1, c.outlierCols ?? 0);
    const X = ctx.upload('X', [M, K], xs);
    const Y = ctx.tensor('Y', [M, N]);
    poison(Y);
    const quant = await prepareQuantizeRows(ctx, X, scratch, { rows: M, cols: K, residual });
    await ctx.run([quant.dispatch, ...(await prepareInt8Q4Matmul(ctx, quant.rows, W, Y, scratch, { variant }))]);
    const y = await ctx.read(Y);
    const words = await ctx.read(scratch.q, 'u32');
    const levels = quant.rows.levels;
    const aq = unpackInt8Rows(words, M, K, quant.rows.rowBytes, levels, 0);
    const aLo = residual ? unpackInt8Rows(words, M, K, quant.rows.rowBytes, levels, 1) : undefined;
    const as = (await ctx.read(scratch.scale)).subarray(0, M);
    const wr = requantizeQ4Cpu(wHost, N, K, 'row');
    const ref = int8MatmulCpu(aq, as, wr.codes, wr.scale, M, N, K, aLo);
    const err = relError(y, ref);
    const exact = relError(y, denseMatmulF64(xs, wDeq, M, N, K, true));
    const pass = err < REF_TOL;
    ok &&= pass;
    rows.push({ name: `check fwd${residual ? ' ×2 levels' : ''} ${c.name}`, ms: 0, note: `vs int8 reference ${err.toExponential(2)} ${pass ? 'ok' : 'FAIL'}; vs f32 dequant matmul ${exact.toExponential(2)}` });
    ctx.release(X);
    ctx.release(Y);
  }
  // Backward for the input.
  {
    const ds = randomMatrix(M, N, seed + 2, 1e-3, c.outlierCols ?? 0);
    const dY = ctx.upload('dY', [M, N], ds);
    const dX = ctx.tensor('dX', [M, K]);
    poison(dX);
    await ctx.run(await prepareInt8Q4MatmulDx(ctx, dY, W, dX, M, scratch, false, { variant }));
    const dx = await ctx.read(dX);
    let ref: Float64Array;
    if (W.blocks.length === 1) {
      const dq = unpackInt8Rows(await ctx.read(scratch.q, 'u32'), M, N, Math.ceil(N / 64) * 64);
      const dsc = (await ctx.read(scratch.scale)).subarray(0, M);
      const wr = requantizeQ4Cpu(wHost, N, K, 'colgroup');
      ref = int8MatmulDxCpu(dq, dsc, wr.codes, wr.scale, M, N, K);
    } else {
      // Several blocks: the scratch holds only the last block's operands; rebuild each block's on the CPU.
      ref = new Float64Array(M * K);
      for (const b of W.blocks) {
        const cols = new Float32Array(M * b.rows);
        for (let m = 0; m < M; m++) cols.set(ds.subarray(m * N + b.row0, m * N + b.row0 + b.rows), m * b.rows);
        const dqb = quantizeRowsCpu(cols, M, b.rows);
        const hostB = { q: wHost.q.subarray((b.row0 * K) / 8, ((b.row0 + b.rows) * K) / 8), sm: wHost.sm.subarray((b.row0 * K) / 64, ((b.row0 + b.rows) * K) / 64) };
        const wr = requantizeQ4Cpu(hostB, b.rows, K, 'colgroup');
        const part = int8MatmulDxCpu(dqb.codes, dqb.scale, wr.codes, wr.scale, M, b.rows, K);
        for (let i = 0; i < ref.length; i++) ref[i] = ref[i]! + part[i]!;
      }
    }
    const err = relError(dx, ref);
    const exact = relError(dx, denseMatmulF64(ds, wDeq, M, K, N, false));
    const pass = err < REF_TOL;
    ok &&= pass;
    rows.push({ name: `check dX ${c.name}`, ms: 0, note: `vs int8 reference ${err.toExponential(2)} ${pass ? 'ok' : 'FAIL'}; vs f32 dequant matmul ${exact.toExponential(2)}` });
    ctx.release(dY);
    ctx.release(dX);
  }
  releaseInt8Scratch(ctx, scratch);
  releaseQ4Weight(ctx, W);
  return { rows, ok };
}

async function speed(ctx: GpuContext, quick: boolean, probes = false, variant: Defines = {}): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const shapes: [string, number, number][] = quick
    ? [['small', 256, 384]]
    : [
        ['wqkv', 2048, 4096],
        ['wo', 2048, 2048],
        ['w1/w3', 2048, 8192],
        ['w2', 8192, 2048],
      ];
  const tokens = quick ? [128] : probes ? [2048] : [512, 2048];
  if (probes) shapes.splice(0, shapes.length, ['w1/w3', 2048, 8192]);
  const time = (d: readonly KernelDispatch[]) => timeDispatches(ctx, d, quick ? 1 : 10, quick ? 2 : 7);
  const pct = (a: number, b: number) => `${(b / a).toFixed(2)}× the f32 kernel`;
  for (const [name, K, N] of shapes) {
    const wf = ctx.upload(`${name} f32`, [N, K], randomMatrix(N, K, 7, 0.02));
    const W: Q4Weight = allocQ4Weight(ctx, name, N, K);
    await ctx.run(await prepareQuantizeQ4(ctx, wf, W, 0, N, 'f32'));
    await cacheInt8Bounds(ctx, W); // as the app does at load: the step's matmuls skip the bound passes
    ctx.release(wf);
    for (const T of tokens) {
      const flops = 2 * T * N * K;
      const X = ctx.upload('X', [T, K], randomMatrix(T, K, 8));
      const Y = ctx.tensor('Y', [T, N]);
      const dY = ctx.upload('dY', [T, N], randomMatrix(T, N, 9, 1e-3));
      const dX = ctx.tensor('dX', [T, K]);
      const scratch: Int8Scratch = allocInt8Scratch(ctx, T, Math.max(K, N), largestQ4Block([W]));
      const quant = await prepareQuantizeRows(ctx, X, scratch, { rows: T, cols: K });
      const mma = await prepareInt8Q4Matmul(ctx, quant.rows, W, Y, scratch, { variant });
      const quant2 = await prepareQuantizeRows(ctx, X, scratch, { rows: T, cols: K, residual: true });
      const mma2 = await prepareInt8Q4Matmul(ctx, quant2.rows, W, Y, scratch, { variant });
      const tag = `T=${T} ${K}→${N} (${name})`;
      const f32Fwd = await time(await prepareQ4Matmul(ctx, X, W, Y, T));
      const q = await time([quant.dispatch]);
      const m = await time(mma);
      const both = await time([quant.dispatch, ...mma]);
      rows.push({ name: `${tag} q4 f32 fwd`, ms: f32Fwd, flops });
      rows.push({ name: `${tag} int8 quantize X`, ms: q, bytes: T * K * 5 });
      rows.push({ name: `${tag} int8 mma fwd`, ms: m, flops });
      rows.push({ name: `${tag} int8 fwd (quantize + mma)`, ms: both, flops, note: pct(both, f32Fwd) });
      // The pass that puts W on its int8 grid (mma[0]; the bounds are cached with real weights, as here).
      rows.push({ name: `${tag} int8 q4 → int8 weights`, ms: await time(mma.slice(0, 1)), bytes: 1.5 * N * K });
      rows.push({ name: `${tag} int8 mma fwd alone`, ms: await time(mma.slice(1)), flops });
      if (probes) {
        // Where a stage's time goes (wrong results, timing only): without the staging, without the matrix loads, without both.
        for (const [what, probe] of [['no staging', { PROBE_NO_STAGE: true }], ['no matrix loads', { PROBE_HOIST: true }], ['MMAs + barriers only', { PROBE_NO_STAGE: true, PROBE_HOIST: true }]] as const) {
          rows.push({ name: `${tag} probe: ${what}`, ms: await time(await prepareInt8Q4Matmul(ctx, quant.rows, W, Y, scratch, { variant: { ...variant, ...probe } })), flops });
        }
      }
      const both2 = await time([quant2.dispatch, ...mma2]);
      rows.push({ name: `${tag} int8×2 levels fwd (quantize + mma)`, ms: both2, flops, note: pct(both2, f32Fwd) });
      const f32Dx = await time(await prepareQ4MatmulDx(ctx, dY, W, dX, T));
      const int8Dx = await time(await prepareInt8Q4MatmulDx(ctx, dY, W, dX, T, scratch, false, { variant }));
      rows.push({ name: `${tag} q4 f32 dX`, ms: f32Dx, flops });
      rows.push({ name: `${tag} int8 dX (quantize + colmax + mma)`, ms: int8Dx, flops, note: pct(int8Dx, f32Dx) });
      for (const t of [X, Y, dY, dX]) ctx.release(t);
      releaseInt8Scratch(ctx, scratch);
    }
    releaseQ4Weight(ctx, W);
    ctx.pool.trim();
  }
  return rows;
}

async function main(): Promise<void> {
  const quick = process.argv.includes('quick');
  const ctx = await createNodeGpuContext();
  const support = int8MatmulSupport(ctx.features);
  console.log(`adapter: ${ctx.summary().adapter.description || ctx.summary().adapter.device}; int8 path: ${support.why}; workgroup storage ${ctx.limits.maxComputeWorkgroupStorageSize} B, ${ctx.limits.maxComputeInvocationsPerWorkgroup} invocations`);
  if (!support.ok) {
    console.log('nothing to measure here');
    return;
  }
  // `VARIANT=EPI_VEC4=0,…`: defines of a layout under trial (NAME on, NAME=0 off), over the
  // kernels' defaults (int8Layout), for every matrix kernel checked and timed.
  const variant: Defines = Object.fromEntries(
    (process.env.VARIANT ?? '')
      .split(',')
      .filter(Boolean)
      .map((d) => {
        const [name, value] = d.split('=') as [string, string | undefined];
        return [name, value === undefined || value !== '0'];
      }),
  );
  console.log(`layout over the defaults: ${JSON.stringify(variant)}; defaults: forward ${JSON.stringify(int8Layout('forward'))}, two levels ${JSON.stringify(int8Layout('forward two levels'))}, dX ${JSON.stringify(int8Layout('dx'))}`);
  const cases: Case[] = [
    { name: 'M200 K576 N320', M: 200, K: 576, N: 320 },
    { name: 'M130 K2048 N200 (2 row blocks)', M: 130, K: 2048, N: 200, rowsPerBlock: 128 },
    { name: 'M64 K1024 N448 outliers', M: 64, K: 1024, N: 448, outlierCols: 20 },
  ];
  const rows: BenchRow[] = [];
  let ok = true;
  for (const [i, c] of cases.entries()) {
    const r = await correctness(ctx, c, 100 + i, variant);
    rows.push(...r.rows);
    ok &&= r.ok;
  }
  console.log(formatTable(rows));
  if (!ok) {
    console.log('int8 kernels FAILED the reference check: not timing them');
    process.exitCode = 1;
    return;
  }
  console.log(formatTable(await speed(ctx, quick, process.argv.includes('probes'), variant)).replace(/TFLOP\/s/, 'TOPS (2·M·N·K)'));
}

await main();
