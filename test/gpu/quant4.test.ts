import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import {
  allocQ4Weight,
  dequantizeQ4,
  dequantizeQ4Cpu,
  f16BitsToF32,
  f32ToF16Directed,
  packHalfWords,
  prepareQ4GemvSwiglu,
  prepareQ4Matmul,
  q4Matmul,
  q4MatmulDx,
  q4Scale,
  Q4_GROUP,
  quantizeQ4,
  quantizeQ4Cpu,
  releaseQ4Weight,
  unpackHalfWords,
  writeQ4Rows,
  type Q4LoraEpilogue,
  type Q4Weight,
} from '../../src/engine/kernels/quant4.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** Gaussian-like weights (std 0.02 like LLM projections) with some awkward groups mixed in. */
function weights(rows: number, cols: number, r: () => number): Float32Array {
  const w = randn(rows * cols, r, 0.02);
  const groups = (rows * cols) / Q4_GROUP;
  for (let g = 0; g < groups; g++) {
    const kind = Math.floor(r() * 12);
    const s = w.subarray(g * Q4_GROUP, (g + 1) * Q4_GROUP);
    if (kind === 0) s.fill(0); // an all-zero group
    else if (kind === 1) s.fill(0.0123); // constant
    else if (kind === 2) for (let j = 0; j < s.length; j++) s[j] = s[j]! * 1e-4; // f16 subnormal scales
    else if (kind === 3) for (let j = 0; j < s.length; j++) s[j] = Math.abs(s[j]!) * 300; // all positive, large
    else if (kind === 4) s[Math.floor(r() * Q4_GROUP)] = -0.5; // an outlier
  }
  return w;
}

/** Float64 Y = X·Wᵀ. */
function refForward(x: Float32Array, w: Float64Array, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!;
      y[m * N + n] = s;
    }
  return y;
}

/** Float64 dX = dY·W. */
function refDx(dy: Float32Array, w: Float64Array, M: number, N: number, K: number): Float64Array {
  const dx = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n]!;
      for (let k = 0; k < K; k++) dx[m * K + k] = dx[m * K + k]! + g * w[n * K + k]!;
    }
  return dx;
}

async function uploadQ4(ctx: GpuContext, label: string, w: Float32Array, N: number, K: number, rowsPerBlock?: number): Promise<{ W: Q4Weight; deq: Float64Array }> {
  const host = quantizeQ4Cpu(w, N, K);
  const W = allocQ4Weight(ctx, label, N, K, rowsPerBlock);
  writeQ4Rows(ctx, W, 0, host);
  return { W, deq: dequantizeQ4Cpu(host, N, K) };
}

/**
 * A forward case: W [N, K] 4-bit (in row blocks of `rowsPerBlock`), X [M, K], Y poisoned, and the float64
 * reference of Y = X·Wᵀ on the dequantized weights, plus scale·U·Bᵀ with random U [M, rank], B [N, rank]
 * when rank > 0 (then `lora` is the epilogue to pass).
 */
async function forwardCase(ctx: GpuContext, r: () => number, M: number, N: number, K: number, rowsPerBlock: number | undefined, rank: number, scale: number) {
  const { W, deq } = await uploadQ4(ctx, 'W', weights(N, K, r), N, K, rowsPerBlock);
  const x = randn(M * K, r);
  const X = ctx.upload('X', [M, K], x);
  const Y = poisoned(ctx, 'Y', [M, N]);
  const ref = refForward(x, deq, M, N, K);
  let lora: Q4LoraEpilogue | undefined;
  if (rank) {
    const u = randn(M * rank, r);
    const b = randn(N * rank, r);
    lora = { U: ctx.upload('U', [M, rank], u), B: ctx.upload('B', [N, rank], b), rank, scale };
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let t = 0;
        for (let j = 0; j < rank; j++) t += u[m * rank + j]! * b[n * rank + j]!;
        ref[m * N + n] = ref[m * N + n]! + scale * t;
      }
  }
  const release = () => {
    for (const t of [X, Y, ...(lora ? [lora.U, lora.B] : [])]) ctx.release(t);
    releaseQ4Weight(ctx, W);
  };
  return { W, X, Y, ref, lora, release };
}

async function readQ4(ctx: GpuContext, W: Q4Weight): Promise<{ q: Uint32Array; sm: Uint32Array }> {
  const q = new Uint32Array((W.out * W.in) / 8);
  const sm = new Uint32Array((W.out * W.in) / Q4_GROUP);
  for (const b of W.blocks) {
    q.set(new Uint32Array(await ctx.readBytes(b.q)), (b.row0 * W.in) / 8);
    sm.set(await ctx.read(b.sm, 'u32'), (b.row0 * W.in) / Q4_GROUP);
  }
  return { q, sm };
}

function firstMismatch(a: Uint32Array, b: Uint32Array): string {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `word ${i}: gpu ${a[i]!.toString(16)} cpu ${b[i]!.toString(16)}`;
  return 'none';
}

describe('q4 format helpers (CPU)', () => {
  it('directed f16 rounding brackets the value and is exact on representable values', () => {
    const seed = freshSeed();
    const r = rng(seed);
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround((r() - 0.5) * 10 ** (Math.floor(r() * 14) - 9));
      const lo = f16BitsToF32(f32ToF16Directed(x, false));
      const hi = f16BitsToF32(f32ToF16Directed(x, true));
      expect(lo <= x && x <= hi, `seed ${seed}: ${x} not in [${lo}, ${hi}]`).toBe(true);
      // at most one f16 apart: rounding the ends again changes nothing
      expect(f16BitsToF32(f32ToF16Directed(lo, true))).toBe(lo);
      expect(f16BitsToF32(f32ToF16Directed(hi, false))).toBe(hi);
    }
  });

  it('quantize→dequantize error is at most step/2 per group; min ≤ group min, min + 15·step ≥ group max', () => {
    const seed = freshSeed();
    const r = rng(seed);
    const [rows, cols] = [64, 256];
    const w = weights(rows, cols, r);
    const host = quantizeQ4Cpu(w, rows, cols);
    const deq = dequantizeQ4Cpu(host, rows, cols);
    for (let g = 0; g < (rows * cols) / Q4_GROUP; g++) {
      const [step, mn] = q4Scale(host.sm[g]!);
      let lo = Infinity;
      let hi = -Infinity;
      let maxErr = 0;
      for (let j = 0; j < Q4_GROUP; j++) {
        const i = g * Q4_GROUP + j;
        lo = Math.min(lo, w[i]!);
        hi = Math.max(hi, w[i]!);
        maxErr = Math.max(maxErr, Math.abs(w[i]! - deq[i]!));
      }
      expect(mn, `seed ${seed} group ${g}`).toBeLessThanOrEqual(lo);
      expect(mn + 15 * step, `seed ${seed} group ${g}`).toBeGreaterThanOrEqual(hi * (1 - 1e-7) - 1e-30);
      // step/2, plus f32 rounding of the thresholds (a few ulps of the group's magnitude)
      const slack = 4 * 2 ** -24 * Math.max(Math.abs(lo), Math.abs(hi));
      expect(maxErr, `seed ${seed} group ${g}: step ${step}`).toBeLessThanOrEqual(step / 2 + slack);
    }
  });
});

describe('q4 quantize / dequantize (GPU)', () => {
  for (const [rows, cols, chunks, rowsPerBlock] of [
    [37, 128, 1, undefined],
    [5, 64, 1, undefined],
    [70, 192, 3, 32], // chunks straddle row blocks
  ] as [number, number, number, number | undefined][]) {
    it(`f32 source ${rows}×${cols} in ${chunks} chunk(s)${rowsPerBlock ? `, blocks of ${rowsPerBlock} rows` : ''}: bit-identical to the CPU quantizer`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const w = weights(rows, cols, rng(seed));
      const W = allocQ4Weight(ctx, 'W', rows, cols, rowsPerBlock);
      for (const b of W.blocks) {
        ctx.fill32(b.q, 0xdeadbeef, 'u32');
        ctx.fill32(b.sm, 0xdeadbeef, 'u32');
      }
      const per = Math.ceil(rows / chunks);
      for (let r0 = 0; r0 < rows; r0 += per) {
        const n = Math.min(per, rows - r0);
        const src = ctx.upload('chunk', [n, cols], w.subarray(r0 * cols, (r0 + n) * cols));
        await quantizeQ4(ctx, src, W, r0, n, 'f32');
        ctx.release(src);
      }
      const got = await readQ4(ctx, W);
      const want = quantizeQ4Cpu(w, rows, cols);
      expect(firstMismatch(got.sm, want.sm), `scales, seed ${seed}`).toBe('none');
      expect(firstMismatch(got.q, want.q), `codes, seed ${seed}`).toBe('none');

      const out = poisoned(ctx, 'deq', [rows, cols]);
      await dequantizeQ4(ctx, W, out);
      expectClose(await ctx.read(out), dequantizeQ4Cpu(want, rows, cols), 1e-6, `dequantize, seed ${seed}`);
      ctx.release(out);
      releaseQ4Weight(ctx, W);
    });
  }

  for (const kind of ['bf16', 'f16'] as const) {
    it(`${kind} source (two values per u32, converted in the shader): bit-identical to the CPU quantizer`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const [rows, cols] = [29, 128];
      const words = packHalfWords(weights(rows, cols, rng(seed)), kind);
      const values = unpackHalfWords(words, rows * cols, kind);
      const W = allocQ4Weight(ctx, 'W', rows + 4, cols);
      const src = ctx.upload('chunk', [words.length], words);
      await quantizeQ4(ctx, src, W, 4, rows, kind); // destination rows 4..
      const got = await readQ4(ctx, W);
      const want = quantizeQ4Cpu(values, rows, cols);
      const off = (4 * cols) / Q4_GROUP;
      expect(firstMismatch(got.sm.subarray(off), want.sm), `scales, seed ${seed}`).toBe('none');
      expect(firstMismatch(got.q.subarray(off * 8), want.q), `codes, seed ${seed}`).toBe('none');
      releaseQ4Weight(ctx, W);
      ctx.release(src);
    });
  }
});

describe('q4 matmul forward Y = X·Wᵀ (against float64 on the dequantized weights)', () => {
  // [M, N, K, rows per block, tile]; M ≤ 8 takes the GEMV path.
  // A sixth element asks for double-buffered tiles (DX_DBUF).
  const CASES: [number, number, number, number | undefined, ('wide' | 'narrow')?, boolean?][] = [
    [64, 64, 64, undefined],
    [37, 53, 128, undefined],
    [130, 67, 192, 24],
    [130, 200, 128, 72, 'wide'],
    [1, 70, 128, undefined],
    [3, 37, 256, 16],
    [8, 129, 64, undefined],
    [9, 5, 64, undefined],
  ];
  for (const [M, N, K, rpb, tile] of CASES) {
    it(`M=${M} N=${N} K=${K}${rpb ? ` in row blocks of ${rpb}` : ''} (${M <= 8 ? 'gemv' : tile ?? 'tiled'})`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const { W, X, Y, ref, release } = await forwardCase(ctx, rng(seed), M, N, K, rpb, 0, 0);
      await q4Matmul(ctx, X, W, Y, M, tile ? { tile } : {});
      expectClose(await ctx.read(Y), ref, 1e-4, `seed ${seed}`);
      if (M <= 8) {
        // the tiled kernel on the same decode shape agrees too
        ctx.fill32(Y, Number.NaN);
        await q4Matmul(ctx, X, W, Y, M, { path: 'tiled' });
        expectClose(await ctx.read(Y), ref, 1e-4, `tiled, seed ${seed}`);
      }
      release();
    });
  }
});

describe('q4 GEMV (decode) with the LoRA epilogue', () => {
  // [M, N, K, rows per block, LoRA rank, row groups]: M = 1 takes the one-row kernel (4 rows per invocation):
  // N ragged against its 16 rows per workgroup, row blocks, ranks below, at and above the 32 lanes.
  const CASES: [number, number, number, number | undefined, number, number?][] = [
    [1, 70, 128, undefined, 8],
    [1, 133, 320, 40, 40, 2],
    [1, 29, 64, undefined, 64, 8],
    [1, 45, 2048, undefined, 0, 1],
    [5, 37, 192, 16, 33],
  ];
  for (const [M, N, K, rpb, rank, rowGroups] of CASES)
    it(`M=${M} N=${N} K=${K}${rpb ? ` in row blocks of ${rpb}` : ''}${rank ? ` + LoRA r=${rank}` : ''}${rowGroups ? `, ${rowGroups} row groups` : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const { W, X, Y, ref, lora, release } = await forwardCase(ctx, rng(seed), M, N, K, rpb, rank, 0.61);
      const dispatches = await prepareQ4Matmul(ctx, X, W, Y, M, { path: 'gemv', ...(lora ? { lora } : {}), ...(rowGroups ? { gemvRowGroups: rowGroups } : {}) });
      expect(dispatches[0]!.label).toMatch(M === 1 ? /^q4 gemv1/ : /^q4 gemv[^1]/);
      await ctx.run(dispatches);
      expectClose(await ctx.read(Y), ref, 1e-4, `seed ${seed}`);
      release();
    });
});

describe('q4 GEMV with SwiGLU (decode MLP input: gate, up and silu(gate)·up in one dispatch)', () => {
  for (const [N, K] of [
    [70, 128],
    [133, 320],
    [16, 64],
  ] as const)
    it(`N=${N} K=${K}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const gate = await uploadQ4(ctx, 'gate', weights(N, K, r), N, K);
      const up = await uploadQ4(ctx, 'up', weights(N, K, r), N, K);
      const x = randn(K, r);
      const X = ctx.upload('x', [1, K], x);
      const Y = poisoned(ctx, 'y', [1, N]);
      await ctx.run([await prepareQ4GemvSwiglu(ctx, X, gate.W, up.W, Y)]);
      const g = refForward(x, gate.deq, 1, N, K);
      const u = refForward(x, up.deq, 1, N, K);
      const ref = Float64Array.from(g, (gv, n) => (gv / (1 + Math.exp(-gv))) * u[n]!);
      expectClose(await ctx.read(Y), ref, 1e-4, `seed ${seed}`);
      ctx.release(X);
      ctx.release(Y);
      releaseQ4Weight(ctx, gate.W);
      releaseQ4Weight(ctx, up.W);
    });
});

describe('q4 matmul forward with k-contiguous tiles (q4_matmul_kc)', () => {
  // [M, N, K, rows per block, LoRA rank]: ragged M and N against the 128 tile, row blocks, rank not a multiple of 32.
  const CASES: [number, number, number, number | undefined, number][] = [
    [37, 53, 128, undefined, 0],
    [130, 200, 192, 72, 0],
    [260, 131, 64, undefined, 8],
    [129, 140, 128, 100, 40],
  ];
  for (const [M, N, K, rpb, rank] of CASES)
    for (const [splitW, doubleBuffer, earlyDequant] of [[true, false, false], [false, false, false], [true, true, false], [false, true, false], [true, true, true]] as const)
    it(`M=${M} N=${N} K=${K}${rpb ? ` in row blocks of ${rpb}` : ''}${rank ? ` + LoRA r=${rank}` : ''}${splitW ? '' : ', half the threads dequantise'}${doubleBuffer ? ', double-buffered' : ''}${earlyDequant ? ', codes dequantised a step ahead' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const { W, X, Y, ref, lora, release } = await forwardCase(ctx, rng(seed), M, N, K, rpb, rank, 0.37);
      await q4Matmul(ctx, X, W, Y, M, { tile: 'wide', kcontig: true, splitW, doubleBuffer, earlyDequant, path: 'tiled', lora });
      expectClose(await ctx.read(Y), ref, 1e-4, `seed ${seed}`);
      release();
    });
});

describe('q4 k-contiguous forward: codes to floats by exponent bits (expCodes)', () => {
  // The same c, step and min reach the same fma: Y must equal the default kernel's bit for bit.
  for (const [M, N, K, rpb, rank, doubleBuffer] of [[37, 53, 128, undefined, 0, false], [130, 200, 192, 72, 8, true]] as const)
    it(`M=${M} N=${N} K=${K}${rpb ? ` in row blocks of ${rpb}` : ''}${rank ? ` + LoRA r=${rank}` : ''}${doubleBuffer ? ', double-buffered' : ''}: bit for bit the default's`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const { W, X, Y, ref, lora, release } = await forwardCase(ctx, rng(seed), M, N, K, rpb, rank, 0.37);
      await q4Matmul(ctx, X, W, Y, M, { tile: 'wide', kcontig: true, doubleBuffer, path: 'tiled', lora });
      const plain = await ctx.read(Y);
      ctx.write(Y, new Float32Array(M * N).fill(Number.NaN));
      await q4Matmul(ctx, X, W, Y, M, { tile: 'wide', kcontig: true, doubleBuffer, expCodes: true, path: 'tiled', lora });
      const exp = await ctx.read(Y);
      expectClose(exp, ref, 1e-4, `seed ${seed}`);
      expect(Buffer.from(exp.buffer).equals(Buffer.from(plain.buffer)), `seed ${seed}`).toBe(true);
      release();
    });
});

describe('q4 matmul backward dX = dY·W (against float64 on the dequantized weights)', () => {
  // [M, N, K, rows per block, tile]; N % 4 == 0 takes the 16-byte dY loads.
  // A sixth element asks for double-buffered tiles (DX_DBUF).
  const CASES: [number, number, number, number | undefined, ('wide' | 'narrow')?, boolean?][] = [
    [64, 64, 64, undefined],
    [37, 53, 128, undefined],
    [130, 67, 192, 24], // first block writes, later blocks add
    [5, 200, 64, undefined],
    [131, 100, 192, 36, 'wide'], // K not a multiple of the 128 tile
    [70, 100, 128, 50, 'wide'], // a 16-byte-loaded block of 50 rows: the last dY vec4 straddles the block's end
    [200, 96, 256, undefined, 'wide'],
    [131, 100, 192, 36, 'wide', true],
    [200, 96, 256, undefined, 'wide', true],
    [37, 52, 128, undefined, 'wide', true],
  ];
  for (const [M, N, K, rpb, tile, doubleBuffer] of CASES) {
    it(`M=${M} N=${N} K=${K}${rpb ? ` in row blocks of ${rpb}` : ''}${tile ? ` ${tile}` : ''}${doubleBuffer ? ', double-buffered' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const { W, deq } = await uploadQ4(ctx, 'W', weights(N, K, r), N, K, rpb);
      const dy = randn(M * N, r);
      const dY = ctx.upload('dY', [M, N], dy);
      const dX = poisoned(ctx, 'dX', [M, K]);
      await q4MatmulDx(ctx, dY, W, dX, M, false, { ...(tile ? { tile } : {}), ...(doubleBuffer ? { doubleBuffer } : {}) });
      const ref = refDx(dy, deq, M, N, K);
      expectClose(await ctx.read(dX), ref, 1e-4, `seed ${seed}`);
      if (!tile) {
        // accumulate: dX += dY·W onto existing values (the wide case covers += through its later blocks)
        await q4MatmulDx(ctx, dY, W, dX, M, true);
        expectClose(await ctx.read(dX), ref.map((v) => 2 * v), 1e-4, `accumulate, seed ${seed}`);
      }
      ctx.release(dY);
      ctx.release(dX);
      releaseQ4Weight(ctx, W);
    });
  }

  it('rejects in features that are not a multiple of 64', async () => {
    const ctx = await gpu();
    expect(() => allocQ4Weight(ctx, 'W', 8, 96)).toThrow(/multiple of 64/);
  });
});
