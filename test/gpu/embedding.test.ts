import { describe, expect, it } from 'vitest';
import { embeddingBackward, embeddingForward, validateTokenIds } from '../../src/engine/kernels/embedding.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

/** float64 forward: rows of the table, zeros for out-of-range ids. */
function forwardRef(ids: Int32Array, table: ArrayLike<number>, hidden: number, vocab: number): Float64Array {
  const out = new Float64Array(ids.length * hidden);
  ids.forEach((id, t) => {
    if (id >= 0 && id < vocab) for (let c = 0; c < hidden; c++) out[t * hidden + c] = table[id * hidden + c]!;
  });
  return out;
}

/** float64 backward: dtable0 + scatter-add of dout rows; out-of-range ids contribute nothing. */
function backwardRef(ids: Int32Array, dout: Float32Array, hidden: number, vocab: number, dtable0: Float32Array): Float64Array {
  const d = Float64Array.from(dtable0);
  ids.forEach((id, t) => {
    if (id >= 0 && id < vocab) for (let c = 0; c < hidden; c++) d[id * hidden + c] = d[id * hidden + c]! + dout[t * hidden + c]!;
  });
  return d;
}

/** Ids with many repeats (a small vocabulary) and, optionally, some out of range. */
function makeIds(tokens: number, vocab: number, r: () => number, invalid: boolean): Int32Array {
  const ids = Int32Array.from({ length: tokens }, () => Math.floor(r() * vocab));
  if (invalid && tokens >= 3) {
    ids[1] = -1;
    ids[tokens - 1] = vocab;
    ids[Math.floor(tokens / 2)] = vocab + 1000;
  }
  return ids;
}

const TOKENS = [1, 7, 33];
const HIDDEN = [64, 72, 130];

describe('embedding', () => {
  for (const tokens of TOKENS)
    for (const hidden of HIDDEN) {
      it(`forward and backward tokens=${tokens} hidden=${hidden}`, async () => {
        const ctx = await gpu();
        const seed = freshSeed();
        const r = rng(seed);
        const vocab = 11;
        const shape = { tokens, hidden, vocab };
        const ids = makeIds(tokens, vocab, r, true);
        const table = randn(vocab * hidden, r);
        const I = ctx.upload('ids', [tokens], ids);
        const T = ctx.upload('table', [vocab, hidden], table);
        const O = poisoned(ctx, 'out', [tokens, hidden]);
        await embeddingForward(ctx, I, T, O, shape);
        expectClose(await ctx.read(O), forwardRef(ids, table, hidden, vocab), 1e-7, `forward (out-of-range ids → zeros), seed ${seed}`);

        const dout = randn(tokens * hidden, r);
        const dt0 = randn(vocab * hidden, r);
        const DO = ctx.upload('dout', [tokens, hidden], dout);
        const DT = ctx.upload('dtable', [vocab, hidden], dt0);
        await embeddingBackward(ctx, I, DO, DT, shape);
        const got = await ctx.read(DT);
        expectClose(got, backwardRef(ids, dout, hidden, vocab, dt0), 1e-6, `backward (+=), seed ${seed}`);
        ctx.write(DT, dt0);
        await embeddingBackward(ctx, I, DO, DT, shape);
        expect(Array.from(await ctx.read(DT)), 'backward is deterministic').toEqual(Array.from(got));
        for (const t of [I, T, O, DO, DT]) ctx.release(t);
      });
    }

  it('backward: many tokens (several scan chunks), heavy repeats, rows spread over several workgroups', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [tokens, hidden, vocab] = [700, 12, 150];
    const ids = Int32Array.from({ length: tokens }, (_, t) => (t % 3 === 0 ? 149 : t % 3 === 1 ? 3 : Math.floor(r() * vocab)));
    const dout = randn(tokens * hidden, r);
    const I = ctx.upload('ids', [tokens], ids);
    const DO = ctx.upload('dout', [tokens, hidden], dout);
    const DT = ctx.upload('dtable', [vocab, hidden], new Float32Array(vocab * hidden));
    await embeddingBackward(ctx, I, DO, DT, { tokens, hidden, vocab });
    expectClose(await ctx.read(DT), backwardRef(ids, dout, hidden, vocab, new Float32Array(vocab * hidden)), 1e-6, `seed ${seed}`);
  });

  for (const hidden of [64, 130]) {
    it(`table split into row chunks served by several dispatches hidden=${hidden}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const [tokens, vocab] = [40, 150];
      const shape = { tokens, hidden, vocab };
      const ids = makeIds(tokens, vocab, r, true);
      const table = randn(vocab * hidden, r);
      const bounds = [0, 64, 101, 150]; // ragged chunks: 64, 37, 49 rows
      const I = ctx.upload('ids', [tokens], ids);
      const O = poisoned(ctx, 'out', [tokens, hidden]);
      const dout = randn(tokens * hidden, r);
      const DO = ctx.upload('dout', [tokens, hidden], dout);
      const chunks = bounds.slice(0, -1).map((lo, k) => {
        const hi = bounds[k + 1]!;
        return {
          lo,
          hi,
          T: ctx.upload(`table rows ${lo}-${hi}`, [hi - lo, hidden], table.subarray(lo * hidden, hi * hidden)),
          DT: ctx.upload(`dtable rows ${lo}-${hi}`, [hi - lo, hidden], new Float32Array((hi - lo) * hidden)),
        };
      });
      // Dispatch order must not matter: the chunk at row 0 (which zeroes invalid ids) runs last here.
      for (const c of [...chunks].reverse()) await embeddingForward(ctx, I, c.T, O, shape, { rowOffset: c.lo, rowCount: c.hi - c.lo });
      expectClose(await ctx.read(O), forwardRef(ids, table, hidden, vocab), 1e-7, `split forward, seed ${seed}`);
      const full = backwardRef(ids, dout, hidden, vocab, new Float32Array(vocab * hidden));
      for (const c of chunks) {
        await embeddingBackward(ctx, I, DO, c.DT, shape, { rowOffset: c.lo, rowCount: c.hi - c.lo });
        expectClose(await ctx.read(c.DT), full.subarray(c.lo * hidden, c.hi * hidden), 1e-6, `split backward rows ${c.lo}-${c.hi}, seed ${seed}`);
      }
    });
  }

  it('backward matches finite differences of the float64 forward (loss = Σ out·g)', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const [tokens, hidden, vocab] = [6, 3, 4];
    const ids = Int32Array.from([2, 0, 2, 3, 2, 0]);
    const table = randn(vocab * hidden, r);
    const g = randn(tokens * hidden, r);
    const loss = (tb: Float64Array) => forwardRef(ids, tb, hidden, vocab).reduce((s, v, i) => s + v * g[i]!, 0);
    const h = 1e-6;
    const fd = Float64Array.from(table, (_, i) => {
      const p = Float64Array.from(table);
      const m = Float64Array.from(table);
      p[i] = p[i]! + h;
      m[i] = m[i]! - h;
      return (loss(p) - loss(m)) / (2 * h);
    });
    const I = ctx.upload('ids', [tokens], ids);
    const G = ctx.upload('g', [tokens, hidden], g);
    const DT = ctx.upload('dtable', [vocab, hidden], new Float32Array(vocab * hidden));
    await embeddingBackward(ctx, I, G, DT, { tokens, hidden, vocab });
    expectClose(await ctx.read(DT), fd, 1e-4, `seed ${seed}`);
  });

  it('validateTokenIds names the first out-of-range id; the kernels reject float ids', async () => {
    expect(() => validateTokenIds(Int32Array.from([0, 5, 9]), 10)).not.toThrow();
    expect(() => validateTokenIds(Int32Array.from([0, 10, -1]), 10)).toThrow(/token id 10 at position 1/);
    expect(() => validateTokenIds(Int32Array.from([-1]), 10)).toThrow(/token id -1 at position 0/);
    const ctx = await gpu();
    const I = ctx.tensor('float ids', [2]);
    const T = ctx.tensor('table', [4, 8]);
    const O = ctx.tensor('out', [2, 8]);
    await expect(embeddingForward(ctx, I, T, O, { tokens: 2, hidden: 8, vocab: 4 })).rejects.toThrow(/float ids.*i32/);
  });
});
