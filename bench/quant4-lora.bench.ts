/**
 * 4-bit dequant matmul and fused LoRA at the InternLM2-1.8B shapes (hidden 2048, wqkv 2048→4096,
 * w1/w3 2048→8192, w2 8192→2048, lm_head 2048→92544; LoRA r = 64) for 512 and 2048 tokens:
 *  - q4 forward Y = X·Wᵀ and dX = dY·W against prepareMatmul's f32 on the same shape (goal: no slower);
 *  - LoRA overhead: forward (U = X·Aᵀ + fused epilogue) over the bare q4 projection, and the full LoRA
 *    backward (dX through W and the adapter, dA, dB) over the bare q4 dX (goal: under 15%);
 *  - decode at M = 1: the q4 GEMV against the f32 matmul, with the weight bytes each must read.
 * `quick` shrinks every shape (a smoke test that runs on SwiftShader).
 * Bytes: q4 weights are in·out/2 code bytes + in·out/16 scale bytes (4.5 bits per weight).
 */
import type { GpuContext, KernelDispatch } from '../src/engine/gpu/context.ts';
import type { Tensor } from '../src/engine/gpu/tensor.ts';
import { loraScratchElems, prepareLoraBackward, prepareLoraForward, type LoraAdapter } from '../src/engine/kernels/lora.ts';
import { prepareMatmul } from '../src/engine/kernels/matmul.ts';
import { allocQ4Weight, prepareQ4Matmul, prepareQ4MatmulDx, prepareQuantizeQ4, releaseQ4Weight, type Q4Weight } from '../src/engine/kernels/quant4.ts';
import { timeDispatches, type BenchRow } from './harness.ts';

const RANK = 64;

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const H = quick ? 256 : 2048;
  const shapes: [string, number, number][] = quick
    ? [
        ['wqkv', H, 512],
        ['w2', 1024, H],
        ['lm_head', H, 4099],
      ]
    : [
        ['wqkv', H, 4096],
        ['wo', H, 2048],
        ['w1/w3', H, 8192],
        ['w2', 8192, H],
        ['lm_head', H, 92544],
      ];
  // Q4_TOKENS=512 (a comma list; empty: decode rows only) narrows a run on the device.
  const tokenCounts = quick ? [64] : process.env.Q4_TOKENS !== undefined ? process.env.Q4_TOKENS.split(',').filter(Boolean).map(Number) : [512, 2048];
  const reps = quick ? 1 : 5;
  const samples = quick ? 2 : 5;
  const rows: BenchRow[] = [];
  const live: Tensor[] = [];
  const tensor = (label: string, shape: number[], fill: number): Tensor => {
    const t = ctx.tensor(label, shape);
    ctx.fill32(t, fill);
    live.push(t);
    return t;
  };
  const time = (d: readonly KernelDispatch[]) => timeDispatches(ctx, d, reps, samples);
  const pct = (a: number, b: number) => `${a >= b ? '+' : ''}${(((a - b) / b) * 100).toFixed(1)}%`;

  for (const [name, K, N] of shapes) {
    // The weight: random-ish f32 rows quantized on the GPU, as the loader would.
    const wf = tensor(`${name}.W f32`, [N, K], 0);
    {
      const init = new Float32Array(N * K);
      let s = 1234567;
      for (let i = 0; i < init.length; i++) init[i] = (((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5) * 0.04;
      ctx.write(wf, init);
    }
    const W: Q4Weight = allocQ4Weight(ctx, `${name}.W`, N, K);
    await ctx.run(await prepareQuantizeQ4(ctx, wf, W, 0, N, 'f32'));
    const q4Bytes = (N * K) / 2 + (N * K) / 16;
    const isHead = name === 'lm_head';
    const A = tensor('lora_A', [RANK, K], 0.01);
    const B = tensor('lora_B', [N, RANK], 0.01);
    const ad: LoraAdapter = { A, B, rank: RANK, alpha: 128, dropout: 0.05 };

    for (const T of tokenCounts) {
      const tag = `T=${T} ${K}→${N} (${name})`;
      const flops = 2 * T * N * K;
      const X = tensor('X', [T, K], 0.01);
      const Y = tensor('Y', [T, N], 0);
      const dY = tensor('dY', [T, N], 0.01);
      const dX = tensor('dX', [T, K], 0);
      const f32Fwd = await time([await prepareMatmul(ctx, X, wf, Y, { M: T, N, K }, { transB: true })]);
      const q4Fwd = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { kcontig: false }));
      rows.push({ name: `${tag} f32 fwd X·Wᵀ`, ms: f32Fwd, flops, bytes: N * K * 4 });
      rows.push({ name: `${tag} q4 fwd X·Wᵀ`, ms: q4Fwd, flops, bytes: q4Bytes, note: `vs f32 ${pct(q4Fwd, f32Fwd)}` });
      // k-contiguous tiles (no transposes on load): candidates for the default.
      const f32FwdKc = await time([await prepareMatmul(ctx, X, wf, Y, { M: T, N, K }, { transB: true, kcontig: true, tileK: 16 })]);
      const q4FwdKc = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { kcontig: true }));
      rows.push({ name: `${tag} f32 fwd X·Wᵀ kc`, ms: f32FwdKc, flops, bytes: N * K * 4, note: `vs f32 ${pct(f32FwdKc, f32Fwd)}` });
      rows.push({ name: `${tag} q4 fwd X·Wᵀ kc`, ms: q4FwdKc, flops, bytes: q4Bytes, note: `vs f32 ${pct(q4FwdKc, f32Fwd)}, vs f32 kc ${pct(q4FwdKc, f32FwdKc)}` });
      // Double-buffered tiles (one barrier per k-step instead of two).
      {
        const f32Db = await time([await prepareMatmul(ctx, X, wf, Y, { M: T, N, K }, { transB: true, doubleBuffer: true })]);
        rows.push({ name: `${tag} f32 fwd X·Wᵀ kc double-buffered`, ms: f32Db, flops, bytes: N * K * 4, note: `vs f32 kc ${pct(f32Db, f32FwdKc)}` });
        const q4Db = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { kcontig: true, doubleBuffer: true }));
        rows.push({ name: `${tag} q4 fwd X·Wᵀ kc double-buffered`, ms: q4Db, flops, bytes: q4Bytes, note: `vs q4 kc ${pct(q4Db, q4FwdKc)}, vs f32 kc ${pct(q4Db, f32FwdKc)}` });
        for (const [vn, o] of [['codes by exponent bits', { expCodes: true }], ['double-buffered, codes by exponent bits', { doubleBuffer: true, expCodes: true }]] as const) {
          const ms = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { kcontig: true, ...o }));
          rows.push({ name: `${tag} q4 fwd X·Wᵀ kc ${vn}`, ms, flops, bytes: q4Bytes, note: `vs q4 kc ${pct(ms, q4FwdKc)}, vs f32 kc ${pct(ms, f32FwdKc)}` });
        }
        const q4Early = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { kcontig: true, doubleBuffer: true, earlyDequant: true }));
        rows.push({ name: `${tag} q4 fwd X·Wᵀ kc double-buffered, codes dequantised a step ahead`, ms: q4Early, flops, bytes: q4Bytes, note: `vs q4 kc ${pct(q4Early, q4FwdKc)}, vs f32 kc ${pct(q4Early, f32FwdKc)}, vs f32 kc double-buffered ${pct(q4Early, f32Db)}` });
      }
      const q4FwdKcHalf = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { kcontig: true, splitW: false }));
      rows.push({ name: `${tag} q4 fwd X·Wᵀ kc (half the threads dequantise)`, ms: q4FwdKcHalf, flops, bytes: q4Bytes, note: `vs f32 kc ${pct(q4FwdKcHalf, f32FwdKc)}` });
      if (T <= 1024) {
        // Few tokens (a chat prefill): the 128×128 tile may leave SMs idle; the 64×64 one makes 4× the workgroups.
        const q4Narrow = await time(await prepareQ4Matmul(ctx, X, W, Y, T, { tile: 'narrow' }));
        rows.push({ name: `${tag} q4 fwd X·Wᵀ 64×64 tile`, ms: q4Narrow, flops, bytes: q4Bytes, note: `vs q4 kc ${pct(q4Narrow, q4FwdKc)}; ${Math.ceil(N / 64) * Math.ceil(T / 64)} vs ${Math.ceil(N / 128) * Math.ceil(T / 128)} workgroups` });
      }
      const f32Dx = await time([await prepareMatmul(ctx, dY, wf, dX, { M: T, N: K, K: N })]);
      const q4Dx = await time(await prepareQ4MatmulDx(ctx, dY, W, dX, T));
      const q4DxOld = await time(await prepareQ4MatmulDx(ctx, dY, W, dX, T, false, { prefetch: false }));
      rows.push({ name: `${tag} q4 dX = dY·W (no prefetch)`, ms: q4DxOld, flops, bytes: q4Bytes, note: `vs f32 ${pct(q4DxOld, f32Dx)}` });
      rows.push({ name: `${tag} f32 dX = dY·W`, ms: f32Dx, flops, bytes: N * K * 4 });
      for (const [vn, o] of [['double-buffered', {}], ['double-buffered, 16 deep', { tileK: 16 }], ['double-buffered, k-contiguous dY, 16 deep', { tileK: 16, kcontig: true }], ['double-buffered, k-contiguous dY, 8 deep', { tileK: 8, kcontig: true }]] as const) {
        const ms = await time([await prepareMatmul(ctx, dY, wf, dX, { M: T, N: K, K: N }, { doubleBuffer: true, ...o })]);
        rows.push({ name: `${tag} f32 dX = dY·W ${vn}`, ms, flops, bytes: N * K * 4, note: `vs f32 ${pct(ms, f32Dx)}` });
      }
      rows.push({ name: `${tag} q4 dX = dY·W`, ms: q4Dx, flops, bytes: q4Bytes, note: `vs f32 ${pct(q4Dx, f32Dx)}` });
      {
        const ms = await time(await prepareQ4MatmulDx(ctx, dY, W, dX, T, false, { doubleBuffer: true }));
        rows.push({ name: `${tag} q4 dX = dY·W double-buffered`, ms, flops, bytes: q4Bytes, note: `vs q4 dX ${pct(ms, q4Dx)}, vs f32 ${pct(ms, f32Dx)}` });
      }
      if (!isHead) {
        const scratch = tensor('split-K scratch', [Math.max(1, loraScratchElems(T, K, N, RANK))], 0);
        const U = tensor('U', [T, RANK], 0);
        const G = tensor('G', [T, RANK], 0);
        const dA = tensor('dA', [RANK, K], 0);
        const dB = tensor('dB', [N, RANK], 0);
        const fwd = await prepareLoraForward(ctx, { kind: 'q4', W }, ad, X, U, Y, T, { seed: 1, scratch });
        const bwd = await prepareLoraBackward(ctx, { kind: 'q4', W }, ad, X, U, dY, dX, { dA, dB }, G, T, { seed: 1, scratch });
        const loraFlops = 2 * T * RANK * (K + N);
        // The fused dX alone (G given): the adapter's s·mask⊙(G·A) prologue over the bare q4 dX.
        {
          const ms = await time(await prepareQ4MatmulDx(ctx, dY, W, dX, T, false, { lora: { G, A, rank: RANK, scale: 0.25 } }));
          rows.push({ name: `${tag} q4 dX + fused s·G·A prologue`, ms, flops: flops + 2 * T * RANK * K, note: `over bare q4 dX ${pct(ms, q4Dx)}` });
        }
        const fwdMs = await time(fwd.dispatches);
        const bwdMs = await time(bwd.dispatches);
        // Against the bare kernels the engine runs (the k-contiguous forward, the register-staged dX).
        rows.push({ name: `${tag} q4+LoRA r=${RANK} fwd`, ms: fwdMs, flops: flops + loraFlops, note: `over bare q4 fwd (kc) ${pct(fwdMs, q4FwdKc)}; dropout 0.05` });
        {
          // The adapter term as a separate Y += s·U·Bᵀ matmul after the bare kernel instead of extra reduction steps.
          const sep = await prepareLoraForward(ctx, { kind: 'q4', W }, ad, X, U, Y, T, { seed: 1, scratch, fuseForwardEpilogue: false });
          const ms = await time(sep.dispatches);
          rows.push({ name: `${tag} q4+LoRA r=${RANK} fwd, adapter term as a separate Y += pass`, ms, note: `over bare q4 fwd (kc) ${pct(ms, q4FwdKc)}; vs fused ${pct(ms, fwdMs)}` });
          for (const d of fwd.dispatches) rows.push({ name: `${tag}   fwd pass ${d.label}`, ms: await time([d]), note: `of the bare q4 fwd (kc) ${((100 * (await time([d]))) / q4FwdKc).toFixed(1)}%` });
        }
        rows.push({
          name: `${tag} q4+LoRA r=${RANK} bwd (dX, dA, dB)`,
          ms: bwdMs,
          flops: flops + 2 * loraFlops + 2 * T * RANK * N,
          note: `over bare q4 dX ${pct(bwdMs, q4Dx)}`,
        });
        rows.push({ name: `${tag} q4+LoRA r=${RANK} fwd + bwd: the LoRA overhead`, ms: fwdMs + bwdMs, note: `over bare q4 fwd (kc) + dX ${pct(fwdMs + bwdMs, q4FwdKc + q4Dx)}` });
        {
          // The rank-r products as single-dispatch panels (no split-K partials, no reduce passes).
          const pf = await time((await prepareLoraForward(ctx, { kind: 'q4', W }, ad, X, U, Y, T, { seed: 1, scratch, panel: true })).dispatches);
          const pb = await prepareLoraBackward(ctx, { kind: 'q4', W }, ad, X, U, dY, dX, { dA, dB }, G, T, { seed: 1, scratch, panel: true });
          const pbMs = await time(pb.dispatches);
          rows.push({ name: `${tag} q4+LoRA r=${RANK} fwd, panels`, ms: pf, note: `over bare q4 fwd (kc) ${pct(pf, q4FwdKc)}; vs split-K ${pct(pf, fwdMs)}` });
          rows.push({ name: `${tag} q4+LoRA r=${RANK} bwd, panels`, ms: pbMs, note: `over bare q4 dX ${pct(pbMs, q4Dx)}; vs split-K ${pct(pbMs, bwdMs)}; ${pb.dispatches.length} passes` });
          rows.push({ name: `${tag} q4+LoRA r=${RANK} fwd + bwd, panels: the LoRA overhead`, ms: pf + pbMs, note: `over bare q4 fwd (kc) + dX ${pct(pf + pbMs, q4FwdKc + q4Dx)}` });
          for (const d of pb.dispatches.filter((x) => x.label.includes('panels'))) rows.push({ name: `${tag}   bwd pass ${d.label}`, ms: await time([d]), note: `of the bare q4 dX ${((100 * (await time([d]))) / q4Dx).toFixed(1)}%` });
        }
        {
          // The masked adapter term as lora.wgsl's separate DX pass instead of inside the q4 dX kernel.
          const sep = await prepareLoraBackward(ctx, { kind: 'q4', W }, ad, X, U, dY, dX, { dA, dB }, G, T, { seed: 1, scratch, fuseMaskedDx: false });
          const ms = await time(sep.dispatches);
          rows.push({ name: `${tag} q4+LoRA r=${RANK} bwd, dropout mask in a separate DX pass`, ms, note: `over bare q4 dX ${pct(ms, q4Dx)}; vs fused ${pct(ms, bwdMs)}` });
        }
        // Where the backward's time goes: each of its passes alone, then the whole without dropout.
        for (const d of bwd.dispatches) rows.push({ name: `${tag}   bwd pass ${d.label}`, ms: await time([d]), note: `of the bare q4 dX ${((100 * (await time([d]))) / q4Dx).toFixed(1)}%` });
        {
          const bwd0 = await prepareLoraBackward(ctx, { kind: 'q4', W }, { ...ad, dropout: 0 }, X, U, dY, dX, { dA, dB }, G, T, { seed: 1, scratch });
          const ms = await time(bwd0.dispatches);
          rows.push({ name: `${tag} q4+LoRA r=${RANK} bwd without dropout`, ms, note: `over bare q4 dX ${pct(ms, q4Dx)}; ${bwd0.dispatches.length} passes` });
        }
        // The f32 base with the same adapter, for comparison.
        const f32Lora = await time((await prepareLoraForward(ctx, { kind: 'f32', W: wf, out: N, in: K }, ad, X, U, Y, T, { seed: 1, scratch })).dispatches);
        rows.push({ name: `${tag} f32+LoRA r=${RANK} fwd`, ms: f32Lora, flops: flops + loraFlops, note: `over bare f32 fwd ${pct(f32Lora, f32Fwd)}` });
      }
      for (const t of live.splice(live.length - (isHead ? 4 : 9))) ctx.release(t);
    }

    // Decode: one token.
    {
      const X = tensor('x', [1, K], 0.01);
      const Y = tensor('y', [1, N], 0);
      const f32 = await time([await prepareMatmul(ctx, X, wf, Y, { M: 1, N, K }, { transB: true })]);
      const gemv = await time(await prepareQ4Matmul(ctx, X, W, Y, 1));
      rows.push({ name: `decode M=1 ${K}→${N} (${name}) f32 matmul`, ms: f32, flops: 2 * N * K, bytes: N * K * 4 });
      rows.push({ name: `decode M=1 ${K}→${N} (${name}) q4 gemv`, ms: gemv, flops: 2 * N * K, bytes: q4Bytes, note: `vs f32 ${pct(gemv, f32)}` });
      for (const g of [1, 2, 8]) {
        const ms = await time(await prepareQ4Matmul(ctx, X, W, Y, 1, { gemvRowGroups: g }));
        rows.push({ name: `decode M=1 ${K}→${N} (${name}) q4 gemv, ${g} row groups`, ms, flops: 2 * N * K, bytes: q4Bytes, note: `vs default ${pct(ms, gemv)}` });
      }
      const U1 = tensor('u', [1, RANK], 0.01);
      const gemvLora = await time(await prepareQ4Matmul(ctx, X, W, Y, 1, { lora: { U: U1, B, rank: RANK, scale: 2 } }));
      rows.push({ name: `decode M=1 ${K}→${N} (${name}) q4 gemv + LoRA r=${RANK} epilogue`, ms: gemvLora, flops: 2 * N * K, bytes: q4Bytes, note: `vs bare ${pct(gemvLora, gemv)}` });
      const X8 = tensor('x8', [8, K], 0.01);
      const Y8 = tensor('y8', [8, N], 0);
      const gemv8 = await time(await prepareQ4Matmul(ctx, X8, W, Y8, 8));
      rows.push({ name: `decode M=8 ${K}→${N} (${name}) q4 gemv`, ms: gemv8, flops: 16 * N * K, bytes: q4Bytes });
    }
    releaseQ4Weight(ctx, W);
    for (const t of live.splice(0)) ctx.release(t);
    ctx.pool.trim();
  }
  return rows;
}
