/**
 * The dense per-token ops (issue 3) at the InternLM2-1.8B shapes: 2048 tokens, hidden 2048, intermediate
 * 8192, 16 q heads / 8 kv heads of 128, vocab 92544. All are memory-bound: each row reports the bytes a
 * single pass must move at least (every input read once, every output written once), so GB/s compares
 * directly with the copy suite's ceiling (~830 GB/s measured on the H100). `quick` shrinks every shape
 * (a smoke test that runs on SwiftShader).
 */
import type { GpuContext, KernelDispatch } from '../src/engine/gpu/context.ts';
import type { Tensor } from '../src/engine/gpu/tensor.ts';
import { prepareAdd, prepareAddInPlace, prepareBiasAdd, prepareBiasBackward, prepareCopy, prepareScaleInPlace, biasBackwardScratchElems } from '../src/engine/kernels/elementwise.ts';
import { prepareEmbeddingBackward, prepareEmbeddingForward } from '../src/engine/kernels/embedding.ts';
import { prepareRmsNormBackward, prepareRmsNormDw, prepareRmsNormForward, rmsNormDwScratchElems } from '../src/engine/kernels/rmsnorm.ts';
import { prepareRope, ropeInvFreq, uploadInvFreq } from '../src/engine/kernels/rope.ts';
import { prepareSwigluBackward, prepareSwigluForward } from '../src/engine/kernels/swiglu.ts';
import { timeDispatches, type BenchRow } from './harness.ts';

const F = 4; // bytes per f32 / i32

export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const T = quick ? 128 : 2048;
  const H = quick ? 256 : 2048;
  const I = quick ? 1024 : 8192;
  const HQ = 16;
  const HK = 8;
  const D = 128;
  const VOCAB = quick ? 4096 : 92544;
  const reps = quick ? 2 : 20;
  const samples = quick ? 2 : 5;

  const rows: BenchRow[] = [];
  const live: Tensor[] = [];
  const tensor = (label: string, shape: number[], fill = 0.01): Tensor => {
    const t = ctx.tensor(label, shape);
    ctx.fill32(t, fill);
    live.push(t);
    return t;
  };
  const upload = (label: string, shape: number[], data: Int32Array | Float32Array): Tensor => {
    const t = ctx.upload(label, shape, data);
    live.push(t);
    return t;
  };
  const time = async (name: string, dispatches: KernelDispatch[], bytes: number, note?: string) => {
    const ms = await timeDispatches(ctx, dispatches, reps, samples);
    rows.push({ name, ms, bytes, ...(note ? { note } : {}) });
  };
  const freeAll = () => {
    for (const t of live.splice(0)) ctx.release(t);
    ctx.pool.trim();
  };

  // ---- embedding --------------------------------------------------------------------------------------
  {
    let seed = 12345;
    const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const ids = upload('ids', [T], Int32Array.from({ length: T }, () => Math.floor(rand() * VOCAB)));
    // Split the table when one binding cannot hold it (the split path is what big vocabularies use).
    const maxBinding = Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
    const nChunks = Math.max(1, Math.ceil((VOCAB * H * F) / maxBinding));
    const per = Math.ceil(VOCAB / nChunks);
    const chunks = Array.from({ length: nChunks }, (_, k) => ({ rowOffset: k * per, rowCount: Math.min(per, VOCAB - k * per) }));
    const tables = chunks.map((c, k) => tensor(`table ${k}`, [c.rowCount, H]));
    const out = tensor('embeddings', [T, H]);
    const shape = { tokens: T, hidden: H, vocab: VOCAB };
    const fwd = (await Promise.all(chunks.map((c, k) => prepareEmbeddingForward(ctx, ids, tables[k]!, out, shape, c)))).flat();
    await time(`embedding fwd ${T} ids × [${VOCAB}, ${H}]`, fwd, T * F + 2 * T * H * F, `${nChunks} table chunk(s)`);
    for (const t of tables) ctx.release(t);
    live.splice(live.indexOf(tables[0]!), tables.length);
    const dtables = chunks.map((c, k) => tensor(`dtable ${k}`, [c.rowCount, H], 0));
    const bwd = (await Promise.all(chunks.map((c, k) => prepareEmbeddingBackward(ctx, ids, out, dtables[k]!, shape, c)))).flat();
    const groups = Math.ceil(VOCAB / 64);
    await time(`embedding bwd (scatter-add) ${T} × ${H} into [${VOCAB}, ${H}]`, bwd, T * F + 3 * T * H * F, `dout read + touched rows RMW; ${groups} groups each scan the ${T} ids (L2)`);
    freeAll();
  }

  // ---- rmsnorm ----------------------------------------------------------------------------------------
  {
    const eps = 1e-5;
    const x = tensor('h', [T, H], 0.5);
    const delta = tensor('delta', [T, H], 1e-4);
    const w = tensor('w', [H], 1);
    const y = tensor('y', [T, H]);
    const rstd = tensor('rstd', [T]);
    const dy = tensor('dy', [T, H]);
    const dx = tensor('dx', [T, H]);
    const dw = tensor('dw', [H], 0);
    const shape = { rows: T, dim: H, eps };
    const rowBytes = T * H * F;
    await time(`rmsnorm fwd ${T}×${H}`, await prepareRmsNormForward(ctx, x, w, y, rstd, shape), 2 * rowBytes + H * F + T * F);
    await time(`rmsnorm fwd + residual add (h += delta) ${T}×${H}`, await prepareRmsNormForward(ctx, x, w, y, rstd, shape, { residualDelta: delta }), 4 * rowBytes + H * F + T * F);
    const hout = tensor('h_out', [T, H]);
    await time(`rmsnorm fwd + residual add (h_out = h + delta) ${T}×${H}`, await prepareRmsNormForward(ctx, x, w, y, rstd, shape, { residualDelta: delta, residualOut: hout }), 4 * rowBytes + H * F + T * F);
    await time(`rmsnorm bwd dx ${T}×${H}`, await prepareRmsNormBackward(ctx, dy, x, w, rstd, dx, shape), 3 * rowBytes + H * F + T * F);
    const scratch = tensor('dw scratch', [rmsNormDwScratchElems(shape)]);
    await time(`rmsnorm bwd dw (+=) ${T}×${H}`, await prepareRmsNormDw(ctx, dy, x, rstd, dw, scratch, shape), 2 * rowBytes + T * F + 2 * H * F, 'two passes: partials, ordered sum');
    // Qwen3 q_norm over head_dim rows.
    const q = tensor('q', [T * HQ, D], 0.5);
    const qn = tensor('qn', [T * HQ, D]);
    const qw = tensor('q_norm w', [D], 1);
    const qr = tensor('q rstd', [T * HQ]);
    const qshape = { rows: T * HQ, dim: D, eps };
    await time(`rmsnorm fwd per-head q_norm ${T * HQ}×${D}`, await prepareRmsNormForward(ctx, q, qw, qn, qr, qshape), 2 * T * HQ * D * F + T * HQ * F);
    const qdx = tensor('dq', [T * HQ, D]);
    await time(`rmsnorm bwd dx per-head ${T * HQ}×${D}`, await prepareRmsNormBackward(ctx, qn, q, qw, qr, qdx, qshape), 3 * T * HQ * D * F + T * HQ * F);
    freeAll();
  }

  // ---- rope -------------------------------------------------------------------------------------------
  {
    const positions = upload('positions', [T], Int32Array.from({ length: T }, (_, t) => t % 1024)); // two packed rows
    const inv = uploadInvFreq(ctx, ropeInvFreq({ theta: 1e6, scaling: { type: 'dynamic', factor: 2, maxPositionEmbeddings: 32768 } }, D));
    live.push(inv);
    const q = tensor('q', [T, HQ, D], 0.5);
    const k = tensor('k', [T, HK, D], 0.5);
    const qo = tensor('q rotated', [T, HQ, D]);
    const qBytes = T * HQ * D * F;
    await time(`rope q in place ${T}×${HQ}×${D}`, await prepareRope(ctx, q, positions, inv, { tokens: T, heads: HQ, headDim: D }), 2 * qBytes + T * F);
    await time(`rope q out of place ${T}×${HQ}×${D}`, await prepareRope(ctx, q, positions, inv, { tokens: T, heads: HQ, headDim: D }, { out: qo }), 2 * qBytes + T * F);
    await time(`rope k in place ${T}×${HK}×${D}`, await prepareRope(ctx, k, positions, inv, { tokens: T, heads: HK, headDim: D }), qBytes + T * F);
    await time(`rope bwd dq in place ${T}×${HQ}×${D}`, await prepareRope(ctx, q, positions, inv, { tokens: T, heads: HQ, headDim: D }, { inverse: true }), 2 * qBytes + T * F);
    // q and k inside InternLM2's fused wqkv output [T, (16 + 2·8)·128].
    const stride = (HQ + 2 * HK) * D;
    const qkv = tensor('qkv', [T, stride], 0.5);
    const both = [
      ...(await prepareRope(ctx, qkv, positions, inv, { tokens: T, heads: HQ, headDim: D }, { xLayout: { stride, offset: 0 } })),
      ...(await prepareRope(ctx, qkv, positions, inv, { tokens: T, heads: HK, headDim: D }, { xLayout: { stride, offset: HQ * D } })),
    ];
    await time(`rope q+k in place in fused qkv [${T}, ${stride}]`, both, 3 * qBytes + 2 * T * F, 'two dispatches');
    freeAll();
  }

  // ---- swiglu -----------------------------------------------------------------------------------------
  {
    const n = T * I * F;
    const gate = tensor('gate', [T, I], 0.3);
    const up = tensor('up', [T, I], 0.3);
    const gu = tensor('gate|up', [T, 2 * I], 0.3);
    const h = tensor('h', [T, I]);
    const dh = tensor('dh', [T, I], 0.1);
    const dgate = tensor('dgate', [T, I]);
    const dup = tensor('dup', [T, I]);
    const dgu = tensor('d(gate|up)', [T, 2 * I]);
    const shape = { tokens: T, inter: I };
    await time(`swiglu fwd ${T}×${I}`, await prepareSwigluForward(ctx, { gate, up }, h, shape), 3 * n);
    await time(`swiglu fwd fused gate|up ${T}×${I}`, await prepareSwigluForward(ctx, { fused: gu }, h, shape), 3 * n);
    await time(`swiglu bwd ${T}×${I}`, await prepareSwigluBackward(ctx, dh, { gate, up }, { dgate, dup }, shape), 5 * n);
    await time(`swiglu bwd fused gate|up ${T}×${I}`, await prepareSwigluBackward(ctx, dh, { fused: gu }, { dfused: dgu }, shape), 5 * n);
    freeAll();
  }

  // ---- elementwise ------------------------------------------------------------------------------------
  {
    const n = T * H;
    const a = tensor('a', [T, H], 0.1);
    const b = tensor('b', [T, H], 1e-6);
    const o = tensor('out', [T, H]);
    const bias = tensor('bias', [H], 1e-6);
    const dbias = tensor('dbias', [H], 0);
    const scratch = tensor('dbias scratch', [biasBackwardScratchElems({ rows: T, dim: H })]);
    await time(`add out = a + b ${T}×${H}`, await prepareAdd(ctx, a, b, o), 3 * n * F);
    await time(`add in place a += b ${T}×${H}`, await prepareAddInPlace(ctx, a, b), 3 * n * F);
    await time(`scale in place ${T}×${H}`, await prepareScaleInPlace(ctx, a, 1.0), 2 * n * F);
    await time(`copy ${T}×${H}`, await prepareCopy(ctx, a, o), 2 * n * F);
    await time(`bias add ${T}×${H}`, await prepareBiasAdd(ctx, a, bias, { rows: T, dim: H }), 2 * n * F + H * F);
    await time(`bias bwd dbias += Σ rows ${T}×${H}`, await prepareBiasBackward(ctx, b, dbias, scratch, { rows: T, dim: H }), n * F + 2 * H * F, 'two passes: partials, ordered sum');
    freeAll();
  }
  return rows;
}
