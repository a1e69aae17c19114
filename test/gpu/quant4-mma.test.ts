// The int8 tensor-core path's device-independent parts: the activation quantization pass, the weights'
// column-group bound and the pass that puts W on its int8 grids run on every adapter (SwiftShader here) and are checked against their CPU
// definitions; the scheme's accuracy against the exact f32 dequant matmul is measured on the CPU
// reference (the subgroup-matrix kernels themselves need a GPU with them: bench/int8-matmul.bench.ts
// checks them against the same references on the lent H100).
import { describe, expect, it } from 'vitest';
import { allocQ4Weight, dequantizeQ4Cpu, quantizeQ4Cpu, releaseQ4Weight, writeQ4Rows } from '../../src/engine/kernels/quant4.ts';
import {
  allocInt8Scratch,
  cacheInt8Bounds,
  denseMatmulF64,
  int8MatmulCpu,
  int8MatmulDxCpu,
  int8MatmulSupport,
  int8RowBytes,
  largestQ4Block,
  prepareQ4ColAbsmax,
  prepareQ4ToInt8,
  prepareQ4RowAbsmax,
  prepareQuantizeRows,
  quantizeRowsCpu,
  releaseInt8Scratch,
  requantizeQ4Cpu,
  unpackInt8Rows,
} from '../../src/engine/kernels/quant4-mma.ts';
import type { GpuFeatures } from '../../src/engine/gpu/context.ts';
import { gpu } from '../helpers/gpu.ts';
import { modelSpecFromConfig } from '../../src/engine/model/config.ts';
import { randomBaseWeights } from '../../src/engine/model/random-weights.ts';
import { releaseBaseWeights } from '../../src/engine/model/base-weights.ts';
import { Transformer } from '../../src/engine/model/transformer.ts';
import { freshSeed, randn, relError, rng } from '../helpers/numeric.ts';

describe('int8 activation quantization (quantize_rows)', () => {
  for (const [rows, cols, ld, off] of [
    [5, 37, 37, 0],
    [17, 200, 260, 60],
    [3, 64, 64, 0],
  ] as const) {
    const seed = freshSeed();
    it(`rows ${rows} × cols ${cols} (stride ${ld}, offset ${off}), seed ${seed}`, async () => {
      const ctx = await gpu();
      const r = rng(seed);
      const src = randn(rows * ld, r, 3);
      src.fill(0, 0, ld); // an all-zero row (first row's window included)
      for (let i = 0; i < 4; i++) src[ld + off + Math.floor(r() * cols)] = 400 * (r() - 0.5); // outliers in row 1
      const S = ctx.upload('src', [rows, ld], src);
      const scratch = allocInt8Scratch(ctx, rows, cols + 64, 0);
      ctx.fill32(scratch.q, 0xdeadbeef, 'u32');
      ctx.fill32(scratch.scale, Number.NaN);
      const { dispatch, rows: q } = await prepareQuantizeRows(ctx, S, scratch, { rows, cols, ld, off });
      await ctx.run([dispatch]);
      expect(q.rowBytes).toBe(int8RowBytes(cols));
      const words = await ctx.read(scratch.q, 'u32');
      const codes = unpackInt8Rows(words, rows, cols, q.rowBytes);
      const scale = (await ctx.read(scratch.scale)).subarray(0, rows);
      const ref = quantizeRowsCpu(src, rows, cols, ld, off);
      expect(Array.from(scale)).toEqual(Array.from(ref.scale));
      // 127/absmax is a division (WGSL allows 2.5 ulp), so a code exactly at a .5 boundary may differ by one.
      let off1 = 0;
      for (let i = 0; i < codes.length; i++) {
        const d = Math.abs(codes[i]! - ref.codes[i]!);
        expect(d, `code ${i}`).toBeLessThanOrEqual(1);
        off1 += d;
      }
      expect(off1).toBeLessThanOrEqual(2);
      // Zero padding up to the row's 64-byte multiple.
      const bytes = new Uint8Array(words.buffer, 0, rows * q.rowBytes);
      for (let m = 0; m < rows; m++) for (let c = cols; c < q.rowBytes; c++) expect(bytes[m * q.rowBytes + c], `pad ${m},${c}`).toBe(0);
      // Reconstruction bound: |code·scale − x| ≤ scale/2 (+ rounding).
      for (let m = 0; m < rows; m++)
        for (let c = 0; c < cols; c++) {
          const x = src[m * ld + off + c]!;
          expect(Math.abs(codes[m * cols + c]! * scale[m]! - x)).toBeLessThanOrEqual(scale[m]! * 0.5001 + 1e-30);
        }
      // The residual level: x ≈ (hi + lo/254)·scale to a 254× finer grid.
      const two = await prepareQuantizeRows(ctx, S, scratch, { rows, cols, ld, off, residual: true });
      await ctx.run([two.dispatch]);
      expect(two.rows.levels).toBe(2);
      const words2 = await ctx.read(scratch.q, 'u32');
      const hi = unpackInt8Rows(words2, rows, cols, two.rows.rowBytes, 2, 0);
      const lo = unpackInt8Rows(words2, rows, cols, two.rows.rowBytes, 2, 1);
      for (let i = 0; i < codes.length; i++) expect(Math.abs(hi[i]! - ref.codes[i]!), `hi code ${i}`).toBeLessThanOrEqual(1);
      let worst = 0;
      for (let m = 0; m < rows; m++)
        for (let c = 0; c < cols; c++) {
          const x = src[m * ld + off + c]!;
          const i = m * cols + c;
          worst = Math.max(worst, Math.abs((hi[i]! + lo[i]! / 254) * scale[m]! - x) / (scale[m]! || 1));
          if (hi[i] === ref.codes[i]) expect(Math.abs(lo[i]! - ref.lo[i]!), `lo code ${i}`).toBeLessThanOrEqual(1);
        }
      expect(worst).toBeLessThan(0.5 / 254 + 1e-4);
      releaseInt8Scratch(ctx, scratch);
      ctx.release(S);
    });
  }
});

describe('int8 weight grid of the backward (q4_col_absmax)', () => {
  const seed = freshSeed();
  it(`matches the CPU bound per 64-column group, seed ${seed}`, async () => {
    const ctx = await gpu();
    const r = rng(seed);
    const N = 77;
    const K = 320;
    const w = randn(N * K, r, 0.02);
    w[5 * K + 130] = -0.9; // one large weight decides its group's bound
    const host = quantizeQ4Cpu(w, N, K);
    const W = allocQ4Weight(ctx, 'W', N, K);
    writeQ4Rows(ctx, W, 0, host);
    const colmax = ctx.tensor('colmax', [K / 64]);
    ctx.fill32(colmax, Number.NaN);
    await ctx.run([await prepareQ4ColAbsmax(ctx, W.blocks[0]!, K, colmax)]);
    const got = await ctx.read(colmax);
    const ref = requantizeQ4Cpu(host, N, K, 'colgroup').scale;
    for (let g = 0; g < K / 64; g++) expect(Math.fround(got[g]! * Math.fround(1 / 127)), `group ${g}`).toBe(ref[g]);
    expect(got[2]).toBeGreaterThan(0.85);
    releaseQ4Weight(ctx, W);
    ctx.release(colmax);
  });
});

describe('W on its int8 grids (q4_to_i8)', () => {
  const seed = freshSeed();
  it(`per row and per 64-column group, in ragged row blocks, match the CPU requantization, seed ${seed}`, async () => {
    const ctx = await gpu();
    const r = rng(seed);
    const [N, K] = [70, 192];
    const w = randn(N * K, r, 0.02);
    w[3 * K + 70] = 0.7; // one large weight decides its row's and its column group's grid
    const host = quantizeQ4Cpu(w, N, K);
    const W = allocQ4Weight(ctx, 'W', N, K, 32); // row blocks of 32, 32, 6
    writeQ4Rows(ctx, W, 0, host);
    await cacheInt8Bounds(ctx, W);
    const scratch = allocInt8Scratch(ctx, 1, 64, largestQ4Block([W]));
    expect(scratch.maxWeight).toBe(32 * K);
    for (const grid of ['row', 'colgroup'] as const) {
      let flips = 0;
      for (const b of W.blocks) {
        ctx.fill32(scratch.w, 0xdeadbeef, 'u32');
        await ctx.run([await prepareQ4ToInt8(ctx, b, K, grid === 'row' ? b.bounds!.rowmax : b.bounds!.colmax, grid, scratch)]);
        const words = await ctx.read(scratch.w, 'u32');
        const got = new Int8Array(words.buffer, words.byteOffset, b.rows * K);
        const hostB = { q: host.q.subarray((b.row0 * K) / 8, ((b.row0 + b.rows) * K) / 8), sm: host.sm.subarray((b.row0 * K) / 64, ((b.row0 + b.rows) * K) / 64) };
        const { codes: ref, grid: at } = requantizeQ4Cpu(hostB, b.rows, K, grid);
        for (let i = 0; i < ref.length; i++) {
          // 127/bound is a GPU division (2.5 ulp): a weight on a rounding tie of the grid may land one step
          // away (all weights of a group with that code do: one tie, several weights). Anywhere else exact.
          const d = Math.abs(got[i]! - ref[i]!);
          const tie = Math.abs(Math.abs(at[i]! - Math.trunc(at[i]!)) - 0.5) <= 1e-5 * Math.max(1, Math.abs(at[i]!));
          expect(d, `${grid} grid, block ${b.row0}, weight ${i} at ${at[i]} on the grid`).toBeLessThanOrEqual(tie ? 1 : 0);
          flips += d;
        }
      }
      // A handful of ties at most (each a code of one group: up to 64 weights).
      expect(flips, `${grid} grid: weights one step off`).toBeLessThanOrEqual(64);
    }
    const small = allocInt8Scratch(ctx, 1, 64, 16 * K);
    await expect(prepareQ4ToInt8(ctx, W.blocks[0]!, K, W.blocks[0]!.bounds!.rowmax, 'row', small)).rejects.toThrow(/exceeds the int8 weight scratch/);
    releaseInt8Scratch(ctx, small);
    releaseInt8Scratch(ctx, scratch);
    releaseQ4Weight(ctx, W);
  });
});

describe('int8 weight bounds cached with the weight (cacheInt8Bounds)', () => {
  it('equal the per-step passes, in row blocks; rewriting codes drops them; released with the weight', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [N, K] = [70, 192];
    const host = quantizeQ4Cpu(randn(N * K, r, 0.02), N, K);
    const W = allocQ4Weight(ctx, 'W', N, K, 32); // three row blocks
    writeQ4Rows(ctx, W, 0, host);
    const live = ctx.pool.liveBytes;
    await cacheInt8Bounds(ctx, W);
    expect(W.blocks.every((b) => b.bounds)).toBe(true);
    for (const b of W.blocks) {
      const rowmax = ctx.tensor('rowmax', [b.rows]);
      const colmax = ctx.tensor('colmax', [K / 64]);
      await ctx.run([await prepareQ4RowAbsmax(ctx, b, K, rowmax), await prepareQ4ColAbsmax(ctx, b, K, colmax)]);
      expect(Array.from(await ctx.read(b.bounds!.rowmax)), `rows of block ${b.row0}, seed ${seed}`).toEqual(Array.from(await ctx.read(rowmax)));
      expect(Array.from(await ctx.read(b.bounds!.colmax)), `column groups of block ${b.row0}`).toEqual(Array.from(await ctx.read(colmax)));
      ctx.release(rowmax);
      ctx.release(colmax);
    }
    // New codes for rows 40..69 (blocks 1 and 2): their bounds go, block 0 keeps its own.
    writeQ4Rows(ctx, W, 40, quantizeQ4Cpu(randn(30 * K, r, 0.5), 30, K));
    expect(W.blocks.map((b) => !!b.bounds)).toEqual([true, false, false]);
    releaseQ4Weight(ctx, W);
    expect(ctx.pool.liveBytes).toBeLessThan(live);
  });
});

describe('int8 scheme accuracy (CPU reference of the kernels) against the exact f32 dequant matmul', () => {
  const seed = freshSeed();
  it(`forward and dX stay within a few percent, with and without outlier columns, seed ${seed}`, () => {
    const r = rng(seed);
    const M = 24;
    const K = 256;
    const N = 96;
    const host = quantizeQ4Cpu(randn(N * K, r, 0.02), N, K);
    const wDeq = dequantizeQ4Cpu(host, N, K);
    const fwdGrid = requantizeQ4Cpu(host, N, K, 'row');
    const bwdGrid = requantizeQ4Cpu(host, N, K, 'colgroup');
    for (const outliers of [0, 5]) {
      const x = randn(M * K, r);
      for (let j = 0; j < outliers; j++) {
        const c = Math.floor(r() * K);
        for (let m = 0; m < M; m++) x[m * K + c] = x[m * K + c]! * 50;
      }
      const xq = quantizeRowsCpu(x, M, K);
      const fwdErr = relError(int8MatmulCpu(xq.codes, xq.scale, fwdGrid.codes, fwdGrid.scale, M, N, K), denseMatmulF64(x, wDeq, M, N, K, true));
      const dy = randn(M * N, r, 1e-3);
      const dq = quantizeRowsCpu(dy, M, N);
      const dxErr = relError(int8MatmulDxCpu(dq.codes, dq.scale, bwdGrid.codes, bwdGrid.scale, M, N, K), denseMatmulF64(dy, wDeq, M, K, N, false));
      console.log(`int8 scheme (CPU), ${outliers} outlier columns: forward rel. error ${fwdErr.toExponential(2)}, dX ${dxErr.toExponential(2)}`);
      expect(fwdErr).toBeGreaterThan(0);
      // Worst of 300 seeds: forward 1.04% without outliers, 3.15% with 5 outlier columns (one int8 level: the
      // outliers set their rows' scale); dX 1.2%. The bounds sit well above, so no seed fails by chance.
      expect(fwdErr).toBeLessThan(outliers ? 0.05 : 0.02);
      expect(dxErr).toBeLessThan(0.02);
    }
  });
});

describe('int8 path detection', () => {
  const base: GpuFeatures = { shaderF16: false, subgroups: true, timestampQuery: true, subgroupMatrix: true, subgroupMatrixConfigs: [], subgroupMinSize: 32, subgroupMaxSize: 32, software: false };
  it('needs subgroup matrices with an i8→i32 16×16×32 configuration and subgroups of exactly 32', async () => {
    expect(int8MatmulSupport({ ...base, subgroupMatrix: false }).ok).toBe(false);
    expect(int8MatmulSupport({ ...base, subgroupMatrixConfigs: [{ componentType: 'f16', resultComponentType: 'f32', M: 8, N: 8, K: 8 }] }).why).toMatch(/f16→f32 8×8×8/);
    const cfg = [{ componentType: 'i8', resultComponentType: 'i32', M: 16, N: 16, K: 32 }];
    expect(int8MatmulSupport({ ...base, subgroupMatrixConfigs: cfg }).ok).toBe(true);
    expect(int8MatmulSupport({ ...base, subgroupMatrixConfigs: cfg, subgroupMinSize: 16 }).ok).toBe(false);
    // This machine's adapter (SwiftShader on CI) has none: the f32 path runs.
    const ctx = await gpu();
    if (ctx.features.software) expect(int8MatmulSupport(ctx.features).ok).toBe(false);
  });
});

describe('matmulPrecision int8 where the device has no subgroup matrices', () => {
  it('falls back to the f32 kernels (unsupported, or failing to build): the same logits as f32, bit for bit', async () => {
    const ctx = await gpu();
    if (int8MatmulSupport(ctx.features).ok) return; // a GPU with tensor cores: bench/int8-gate.bench.ts covers it
    const spec = modelSpecFromConfig(
      { architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 256, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 64 },
      'tiny',
    );
    const weights = await randomBaseWeights(ctx, spec, { seed: 3, quantize: true });
    const logits = async (precision: 'f32' | 'int8') => {
      const model = new Transformer(ctx, weights, null, { matmulPrecision: precision });
      expect(model.matmulPrecision).toBe('f32');
      const plan = await model.plan({ batch: 1, seq: 8 }, 'logits');
      const ids = Int32Array.from({ length: 8 }, (_, i) => (i * 37) % 256);
      plan.setBatch({ inputIds: ids, positionIds: Int32Array.from({ length: 8 }, (_, i) => i), documentIds: new Int32Array(8) });
      await ctx.run(plan.dispatches);
      const out = await ctx.read(plan.logits!);
      plan.release();
      return out;
    };
    expect(Array.from(await logits('int8'))).toEqual(Array.from(await logits('f32')));

    // A device that advertises subgroup matrices but cannot build the kernels (here: SwiftShader told it
    // has them, and subgroups of 32): the plan falls back to the f32 kernels and says why; its logits are
    // those of an f32 plan for the same device description.
    const claims = Object.create(ctx, {
      features: { value: { ...ctx.features, subgroupMatrix: true, subgroupMatrixConfigs: [{ componentType: 'i8', resultComponentType: 'i32', M: 16, N: 16, K: 32 }], subgroupMinSize: 32, subgroupMaxSize: 32 } },
    }) as typeof ctx;
    const model = new Transformer(claims, weights, null, { matmulPrecision: 'int8' });
    expect(model.matmulPrecision).toBe('int8');
    const plan = await model.plan({ batch: 1, seq: 8 }, 'logits');
    expect(model.matmulPrecision).toBe('f32');
    expect(model.int8Fallback).toMatch(/quant4_mma\.wgsl:q4_mma_fwd/);
    const run = async (p: typeof plan) => {
      const ids = Int32Array.from({ length: 8 }, (_, i) => (i * 37) % 256);
      p.setBatch({ inputIds: ids, positionIds: Int32Array.from({ length: 8 }, (_, i) => i), documentIds: new Int32Array(8) });
      await ctx.run(p.dispatches);
      return Array.from(await ctx.read(p.logits!));
    };
    const f32Plan = await new Transformer(claims, weights, null, { matmulPrecision: 'f32' }).plan({ batch: 1, seq: 8 }, 'logits');
    expect(await run(plan)).toEqual(await run(f32Plan));
    f32Plan.release();
    plan.release();
    releaseBaseWeights(ctx, weights);
  });
});
