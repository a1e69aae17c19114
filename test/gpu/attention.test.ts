import { afterAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import type { Tensor } from '../../src/engine/gpu/tensor.ts';
import {
  attentionBackward,
  attentionForward,
  chooseAttentionForwardTiles,
  documentIdsFromAttentionMask,
  documentSpans,
  documentIdsFromLengths,
  LSE_MASKED,
  prepareAttentionDecode,
  type AttentionOptions,
  type AttentionShape,
} from '../../src/engine/kernels/attention.ts';
import { createNodeGpuContext } from '../../src/node/gpu.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

// ---- float64 CPU reference: softmax(scale·q·kᵀ + mask)·v and its analytic backward ------------------

interface Shape {
  batch: number;
  seq: number;
  nQ: number;
  nKv: number;
  d: number;
  /** Default 1/sqrt(d). */
  scale?: number;
}

function toShape(s: Shape): AttentionShape {
  return { batch: s.batch, seq: s.seq, nQHeads: s.nQ, nKvHeads: s.nKv, headDim: s.d, ...(s.scale !== undefined ? { scale: s.scale } : {}) };
}

/** Probabilities P[b][h][i] over keys j of the same row (null when the query sees nothing). */
function probs(q: Float32Array, k: Float32Array, s: Shape, docs: Int32Array | undefined, b: number, h: number, i: number): { p: Float64Array; lse: number } | null {
  const { seq, nQ, nKv, d } = s;
  const hk = Math.floor(h / (nQ / nKv));
  const ti = b * seq + i;
  const sc = new Float64Array(i + 1).fill(-Infinity);
  const scale = s.scale ?? 1 / Math.sqrt(d);
  let m = -Infinity;
  for (let j = 0; j <= i; j++) {
    const tj = b * seq + j;
    if (docs && (docs[ti]! < 0 || docs[ti] !== docs[tj])) continue;
    let dot = 0;
    for (let c = 0; c < d; c++) dot += q[(ti * nQ + h) * d + c]! * k[(tj * nKv + hk) * d + c]!;
    sc[j] = dot * scale;
    m = Math.max(m, sc[j]!);
  }
  if (m === -Infinity) return null;
  let sum = 0;
  for (let j = 0; j <= i; j++) sum += Math.exp(sc[j]! - m);
  const p = sc.map((x) => Math.exp(x - m) / sum);
  return { p, lse: m + Math.log(sum) };
}

function refForward(q: Float32Array, k: Float32Array, v: Float32Array, s: Shape, docs?: Int32Array) {
  const { batch, seq, nQ, nKv, d } = s;
  const tokens = batch * seq;
  const o = new Float64Array(tokens * nQ * d);
  const lse = new Float64Array(nQ * tokens).fill(Infinity);
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < nQ; h++) {
      const hk = Math.floor(h / (nQ / nKv));
      for (let i = 0; i < seq; i++) {
        const r = probs(q, k, s, docs, b, h, i);
        if (!r) continue;
        const ti = b * seq + i;
        lse[h * tokens + ti] = r.lse;
        for (let j = 0; j <= i; j++) {
          const pj = r.p[j]!;
          if (pj === 0) continue;
          for (let c = 0; c < d; c++) o[(ti * nQ + h) * d + c]! += pj * v[((b * seq + j) * nKv + hk) * d + c]!;
        }
      }
    }
  return { o, lse };
}

function refBackward(q: Float32Array, k: Float32Array, v: Float32Array, dout: Float32Array, s: Shape, docs?: Int32Array) {
  const { batch, seq, nQ, nKv, d } = s;
  const scale = s.scale ?? 1 / Math.sqrt(d);
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < nQ; h++) {
      const hk = Math.floor(h / (nQ / nKv));
      for (let i = 0; i < seq; i++) {
        const r = probs(q, k, s, docs, b, h, i);
        if (!r) continue;
        const qi = ((b * seq + i) * nQ + h) * d;
        const dp = new Float64Array(i + 1);
        let D = 0;
        for (let j = 0; j <= i; j++) {
          const vj = ((b * seq + j) * nKv + hk) * d;
          let x = 0;
          for (let c = 0; c < d; c++) x += dout[qi + c]! * v[vj + c]!;
          dp[j] = x;
          D += r.p[j]! * x;
        }
        for (let j = 0; j <= i; j++) {
          const pj = r.p[j]!;
          if (pj === 0) continue;
          const kj = ((b * seq + j) * nKv + hk) * d;
          const ds = pj * (dp[j]! - D);
          for (let c = 0; c < d; c++) {
            dq[qi + c]! += scale * ds * k[kj + c]!;
            dk[kj + c]! += scale * ds * q[qi + c]!;
            dv[kj + c]! += pj * dout[qi + c]!;
          }
        }
      }
    }
  return { dq, dk, dv };
}

// ---- GPU helpers -----------------------------------------------------------------------------------

let noSgCtx: Promise<GpuContext> | null = null;
/** A second device without the subgroups feature: the plain f32 path of the same kernels. */
function gpuWithoutSubgroups(): Promise<GpuContext> {
  noSgCtx ??= createNodeGpuContext({ disableFeatures: ['subgroups'] });
  return noSgCtx;
}
afterAll(async () => {
  (await noSgCtx?.catch(() => null))?.destroy();
});

function inputs(s: Shape, seed: number) {
  const r = rng(seed);
  const tokens = s.batch * s.seq;
  return {
    q: randn(tokens * s.nQ * s.d, r),
    k: randn(tokens * s.nKv * s.d, r),
    v: randn(tokens * s.nKv * s.d, r),
    dout: randn(tokens * s.nQ * s.d, r),
  };
}

/** Runs forward and backward on the GPU; returns everything read back. */
async function runGpu(ctx: GpuContext, s: Shape, x: ReturnType<typeof inputs>, docs?: Int32Array, opts: AttentionOptions = {}, backward = true) {
  const tokens = s.batch * s.seq;
  const shape = toShape(s);
  const q = ctx.upload('q', [tokens, s.nQ, s.d], x.q);
  const k = ctx.upload('k', [tokens, s.nKv, s.d], x.k);
  const v = ctx.upload('v', [tokens, s.nKv, s.d], x.v);
  const o = poisoned(ctx, 'o', [tokens, s.nQ, s.d]);
  const lse = poisoned(ctx, 'lse', [s.nQ, tokens]);
  const docIds = docs ? ctx.upload('docIds', [tokens], docs) : undefined;
  const docSpans = docs ? ctx.upload('docSpans', [tokens, 2], documentSpans(docs, s.seq)) : undefined;
  const docT = docIds && docSpans ? { docIds, docSpans } : {};
  const made: Tensor[] = [q, k, v, o, lse, ...(docIds && docSpans ? [docIds, docSpans] : [])];
  await attentionForward(ctx, { q, k, v, o, lse, ...docT }, shape, opts);
  const empty: Float32Array = new Float32Array(0);
  const out = { o: await ctx.read(o), lse: await ctx.read(lse), dq: empty, dk: empty, dv: empty };
  if (backward) {
    const dout = ctx.upload('dout', [tokens, s.nQ, s.d], x.dout);
    const delta = poisoned(ctx, 'delta', [s.nQ, tokens]);
    const dq = poisoned(ctx, 'dq', [tokens, s.nQ, s.d]);
    const dk = poisoned(ctx, 'dk', [tokens, s.nKv, s.d]);
    const dv = poisoned(ctx, 'dv', [tokens, s.nKv, s.d]);
    made.push(dout, delta, dq, dk, dv);
    await attentionBackward(ctx, { q, k, v, o, lse, dout, delta, dq, dk, dv, ...docT }, shape, opts);
    out.dq = await ctx.read(dq);
    out.dk = await ctx.read(dk);
    out.dv = await ctx.read(dv);
  }
  for (const t of made) ctx.release(t);
  return out;
}

/** lse of visible rows against the reference; rows that see nothing must hold LSE_MASKED. */
function expectLse(out: Float32Array, ref: Float64Array, what: string): void {
  const vis: number[] = [];
  const refVis: number[] = [];
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === Infinity) expect(out[i], `${what}: masked row ${i}`).toBe(Math.fround(LSE_MASKED));
    else {
      vis.push(out[i]!);
      refVis.push(ref[i]!);
    }
  }
  expectClose(vis, refVis, 1e-5, `${what} lse`);
}

async function check(ctx: GpuContext, s: Shape, docs: Int32Array | undefined, what: string, opts: AttentionOptions = {}, backward = true) {
  const seed = freshSeed();
  const x = inputs(s, seed);
  const out = await runGpu(ctx, s, x, docs, opts, backward);
  const tag = `${what} ${JSON.stringify(s)} seed ${seed}`;
  const ref = refForward(x.q, x.k, x.v, s, docs);
  expectClose(out.o, ref.o, 1e-4, `${tag} o`);
  expectLse(out.lse, ref.lse, tag);
  if (!backward) return;
  const g = refBackward(x.q, x.k, x.v, x.dout, s, docs);
  expectClose(out.dq, g.dq, 1e-4, `${tag} dq`);
  expectClose(out.dk, g.dk, 1e-4, `${tag} dk`);
  expectClose(out.dv, g.dv, 1e-4, `${tag} dv`);
}

// Ragged lengths (not multiples of any tile), GQA ratios 1, 2 and 8, head_dim 64 and 128 (a generic head_dim,
// 8, is in the finite-difference test).
const SHAPES: [string, Shape][] = [
  ['ratio 1', { batch: 1, seq: 64, nQ: 4, nKv: 4, d: 64 }],
  ['ratio 2 ragged', { batch: 1, seq: 37, nQ: 4, nKv: 2, d: 64 }],
  ['ratio 8 batch 2, scale 0.3', { batch: 2, seq: 23, nQ: 8, nKv: 1, d: 64, scale: 0.3 }],
  ['head_dim 128 ragged', { batch: 1, seq: 70, nQ: 2, nKv: 1, d: 128 }],
];

function packedDocs(seq: number, lengths: number[]): Int32Array {
  const docs = new Int32Array(seq).fill(-1);
  let at = 0;
  lengths.forEach((n, id) => {
    docs.fill(id, at, at + n);
    at += n;
  });
  return docs;
}

describe('attention (tiled flash, f32)', () => {
  for (const [name, s] of SHAPES)
    for (const software of [false, true])
      it(`forward + backward, ${name}${software ? ' (row kernels for CPU adapters)' : ''}`, async () => {
        await check(await gpu(), s, undefined, name, { software });
      });

  it('dk/dv with several staging depths in their shared staging region (wide, narrow, more queries than columns)', async () => {
    const s = { batch: 1, seq: 37, nQ: 4, nKv: 2, d: 32 };
    for (const dkvStaging of [{ DC: 32, KC: 16 }, { DC: 4, KC: 8 }, { DC: 16, KC: 4 }]) {
      await check(await gpu(), s, packedDocs(37, [15, 22]), `dkv staging ${dkvStaging.DC}/${dkvStaging.KC}`, { software: false, tiles: { BLOCK_Q: 16, BLOCK_K: 8 }, dkvStaging });
    }
  });

  it('dq with several staging depths (columns per chunk, keys per round), on query blocks of 8 and 16', async () => {
    const s = { batch: 1, seq: 37, nQ: 4, nKv: 2, d: 32 };
    for (const [BLOCK_Q, dqStaging] of [[8, { DC: 32, KC: 16 }], [16, { DC: 4, KC: 4 }], [16, { DC: 16, KC: 8 }]] as const) {
      const opts = { software: false, tiles: { BLOCK_Q, BLOCK_K: 16 }, dqStaging };
      expect(chooseAttentionForwardTiles(await gpu(), s.d, true, opts, 'dq').tiles).toEqual({ BLOCK_Q, BLOCK_K: 16, ...dqStaging });
      await check(await gpu(), s, packedDocs(37, [15, 22]), `dq staging ${dqStaging.DC}/${dqStaging.KC}, ${BLOCK_Q} queries`, opts);
    }
  });

  it('packed row with 3 documents and trailing padding', async () => {
    const s = { batch: 1, seq: 61, nQ: 4, nKv: 2, d: 64 };
    await check(await gpu(), s, packedDocs(61, [20, 26, 11]), 'packed', { software: false });
    await check(await gpu(), s, packedDocs(61, [20, 26, 11]), 'packed rows', { software: true });
  });

  it('document spans: where each query starts seeing keys and each key stops being seen', () => {
    // Row 0: documents 0 (3 tokens), 1 (2), a -1 padding token; row 1: document 0 (2), then right padding
    // whose queries see document 0 (-(0+2) = -2) and which no query sees.
    const spans = documentSpans(Int32Array.from([0, 0, 0, 1, 1, -1, 0, 0, -2, -2, -2, -2]), 6);
    const pairs = Array.from({ length: 12 }, (_, i) => [spans[2 * i], spans[2 * i + 1]]);
    expect(pairs).toEqual([[0, 3], [0, 3], [0, 3], [3, 5], [3, 5], [6, 0], [0, 6], [0, 6], [0, 0], [0, 0], [0, 0], [0, 0]]);
    expect(() => documentSpans(new Int32Array(5), 2)).toThrow(/whole rows/);
  });

  it('many short packed documents in long ragged rows (the kernels skip blocks no token of a tile sees)', async () => {
    const s = { batch: 2, seq: 150, nQ: 4, nKv: 2, d: 64 };
    const docs = new Int32Array(300);
    docs.set(packedDocs(150, [7, 31, 5, 19, 3, 40, 11, 22]), 0); // 12 padding tokens at the end
    docs.set(packedDocs(150, [90, 2, 58]), 150);
    for (const software of [false, true]) {
      await check(await gpu(), s, docs, `short documents${software ? ' rows' : ''}`, { software });
      // Adapters with fewer than 10 storage buffers per stage: dk/dv run to the row's end without the spans.
      await check(await gpu(), s, docs, `short documents, dk/dv without spans${software ? ' rows' : ''}`, { software, keySpans: false });
    }
  });

  it('batch 2 with different padding (attention_mask), padded rows give zeros and zero grads', async () => {
    const s = { batch: 2, seq: 33, nQ: 2, nKv: 1, d: 64 };
    const mask = new Int32Array(66);
    for (let i = 0; i < 33; i++) mask[i] = 1; // row 0 full
    for (let i = 0; i < 20; i++) mask[33 + i] = 1; // row 1: 20 tokens then padding
    const docs = documentIdsFromAttentionMask(mask);
    expect(Array.from(documentIdsFromLengths(33, [33, 20]))).toEqual(Array.from(docs));
    for (const software of [false, true]) {
      await check(await gpu(), s, docs, `padding${software ? ' rows' : ''}`, { software });
      // Padding tokens: o rows exactly zero, no NaN anywhere.
      const x = inputs(s, freshSeed());
      const out = await runGpu(await gpu(), s, x, docs, { software });
      for (let t = 53; t < 66; t++) for (let c = 0; c < s.nQ * s.d; c++) expect(out.o[t * s.nQ * s.d + c]).toBe(0);
      for (let t = 53; t < 66; t++) for (let c = 0; c < s.nKv * s.d; c++) expect(out.dk[t * s.nKv * s.d + c]).toBe(0);
    }
  });

  it('without subgroups (plain f32 forward path; backward never uses subgroups): ragged, packed documents', async () => {
    const ctx = await gpuWithoutSubgroups();
    expect(ctx.features.subgroups).toBe(false);
    await check(ctx, { batch: 2, seq: 37, nQ: 4, nKv: 2, d: 64 }, undefined, 'no-subgroups', { software: false }, false);
    await check(ctx, { batch: 1, seq: 50, nQ: 2, nKv: 1, d: 64 }, packedDocs(50, [10, 30, 7]), 'no-subgroups packed', { software: false }, false);
  });

  it('backward is deterministic (bitwise equal over two runs)', async () => {
    const ctx = await gpu();
    const s = { batch: 1, seq: 40, nQ: 8, nKv: 1, d: 64 };
    const x = inputs(s, freshSeed());
    const a = await runGpu(ctx, s, x, undefined, { software: false });
    const b = await runGpu(ctx, s, x, undefined, { software: false });
    expect(Buffer.from(a.dk.buffer).equals(Buffer.from(b.dk.buffer))).toBe(true);
    expect(Buffer.from(a.dq.buffer).equals(Buffer.from(b.dq.buffer))).toBe(true);
  });

  it('reference backward matches central finite differences of the reference forward (tiny shape, 4×4 tiles, head_dim 8)', async () => {
    // Validates the analytic reference the GPU is checked against, then checks the GPU against it.
    const s = { batch: 1, seq: 6, nQ: 2, nKv: 1, d: 8 };
    const seed = freshSeed();
    const x = inputs(s, seed);
    const docs = packedDocs(6, [2, 3]); // two documents and one padding token
    const loss = (qq: Float32Array, kk: Float32Array, vv: Float32Array) => {
      const { o } = refForward(qq, kk, vv, s, docs);
      let L = 0;
      for (let i = 0; i < o.length; i++) L += o[i]! * x.dout[i]!;
      return L;
    };
    const g = refBackward(x.q, x.k, x.v, x.dout, s, docs);
    // Float32 inputs: perturb by h exactly representable; central differences in float64.
    const h = 2 ** -10;
    for (const [name, arr, grad] of [['q', x.q, g.dq], ['k', x.k, g.dk], ['v', x.v, g.dv]] as const) {
      const fd = new Float64Array(arr.length);
      for (let i = 0; i < arr.length; i++) {
        const keep = arr[i]!;
        arr[i] = keep + h;
        const up = loss(x.q, x.k, x.v);
        arr[i] = keep - h;
        const down = loss(x.q, x.k, x.v);
        arr[i] = keep;
        fd[i] = (up - down) / (2 * h);
      }
      expectClose(grad, fd, 1e-4, `finite differences d${name}, seed ${seed}`);
    }
    const out = await runGpu(await gpu(), s, x, docs, { tiles: { BLOCK_Q: 4, BLOCK_K: 4 }, software: false });
    expectClose(out.o, refForward(x.q, x.k, x.v, s, docs).o, 1e-4, `gpu o seed ${seed}`);
    expectClose(out.dq, g.dq, 1e-4, `gpu dq seed ${seed}`);
    expectClose(out.dk, g.dk, 1e-4, `gpu dk seed ${seed}`);
    expectClose(out.dv, g.dv, 1e-4, `gpu dv seed ${seed}`);
  });

  it('rejects a head count that is not a multiple of the kv heads', async () => {
    const ctx = await gpu();
    const t = ctx.tensor('x', [16]);
    await expect(attentionForward(ctx, { q: t, k: t, v: t, o: t, lse: t }, { batch: 1, seq: 1, nQHeads: 3, nKvHeads: 2, headDim: 4 })).rejects.toThrow(/multiple/);
    ctx.release(t);
  });
});

describe('attention decode (KV cache, split-K)', () => {
  // [q heads, kv heads, head dim, splits, fewest keys per split]: 1-key splits so that a 45-key cache fills
  // all 3 and 4 of 7, the default (32) so that 45 keys use 2 of 64 and 30 keys one.
  for (const [nQ, nKv, d, nSplit, minChunk] of [
    [4, 2, 64, 3, 1],
    [8, 1, 128, 1, 1],
    [4, 4, 64, 7, 4],
    [2, 1, 64, 64, undefined],
  ] as const) {
    it(`equals the last rows of the full causal forward: q${nQ}/kv${nKv} d${d} split ${nSplit}, ≥ ${minChunk ?? 'default'} keys each`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const maxTokens = 64;
      const L = 45;
      const s = { batch: 1, seq: L, nQ, nKv, d };
      const x = inputs(s, seed);
      const full = await runGpu(ctx, s, x, undefined, {}, false);
      const ref = refForward(x.q, x.k, x.v, s);

      const kc = new Float32Array(maxTokens * nKv * d).fill(Number.NaN); // rows past the length must not be read
      const vc = new Float32Array(maxTokens * nKv * d).fill(Number.NaN);
      kc.set(x.k);
      vc.set(x.v);
      const kCache = ctx.upload('kCache', [maxTokens, nKv, d], kc);
      const vCache = ctx.upload('vCache', [maxTokens, nKv, d], vc);
      const maxNew = 3;
      const q = ctx.tensor('q new', [maxNew, nQ, d]);
      const o = poisoned(ctx, 'o new', [maxNew, nQ, d]);
      const dec = await prepareAttentionDecode(ctx, { q, kCache, vCache, o }, { nQHeads: nQ, nKvHeads: nKv, headDim: d, maxTokens, maxNew, nSplit, ...(minChunk ? { minChunk } : {}) });
      const row = nQ * d;
      // One token at length L, then at a shorter length (same dispatches, only the uniform changes), then 3 at once.
      for (const [len, nNew] of [
        [L, 1],
        [30, 1],
        [L, 3],
      ] as const) {
        ctx.write(q, x.q.subarray((len - nNew) * row, len * row));
        ctx.fill32(o, Number.NaN);
        dec.setLength(len, nNew);
        await ctx.run(dec.dispatches);
        const got = (await ctx.read(o)).subarray(0, nNew * row);
        const tag = `len ${len} nNew ${nNew} seed ${seed}`;
        expectClose(got, full.o.subarray((len - nNew) * row, len * row), 1e-5, `decode vs gpu forward ${tag}`);
        expectClose(got, ref.o.subarray((len - nNew) * row, len * row), 1e-4, `decode vs reference ${tag}`);
      }
      dec.release();
      for (const t of [kCache, vCache, q, o]) ctx.release(t);
    });
  }
});
