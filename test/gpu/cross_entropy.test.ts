import { describe, expect, it } from 'vitest';
import {
  ceChunkTokens,
  countSupervised,
  IGNORE_INDEX,
  prepareCrossEntropy,
  prepareCrossEntropyFromLogits,
  prepareLmHeadLogits,
} from '../../src/engine/kernels/cross_entropy.ts';
import { SafetensorsFile, toInt32 } from '../../src/formats/safetensors.ts';
import { fileSource } from '../../src/node/files.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

interface Reference {
  logits: Float64Array;
  losses: Float64Array;
  lse: Float64Array;
  loss: number;
  dlogits: Float64Array;
  dhidden: Float64Array;
  dW: Float64Array;
}

/** float64 reference from logits [N, V]: HF shift inside rows of T, ignore −100, mean over supervised. */
function referenceFromLogits(logits: Float64Array, labels: Int32Array, N: number, T: number, V: number): Omit<Reference, 'dhidden' | 'dW'> {
  const losses = new Float64Array(N);
  const lse = new Float64Array(N);
  const dlogits = new Float64Array(N * V);
  const target = (t: number) => (t % T === T - 1 ? IGNORE_INDEX : labels[t + 1]!);
  let count = 0;
  for (let t = 0; t < N; t++) if (target(t) !== IGNORE_INDEX) count++;
  let total = 0;
  for (let t = 0; t < N; t++) {
    let mx = -Infinity;
    for (let j = 0; j < V; j++) mx = Math.max(mx, logits[t * V + j]!);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[t * V + j]! - mx);
    lse[t] = mx + Math.log(s);
    const y = target(t);
    if (y === IGNORE_INDEX) continue;
    losses[t] = lse[t]! - logits[t * V + y]!;
    total += losses[t]!;
    for (let j = 0; j < V; j++) dlogits[t * V + j] = (Math.exp(logits[t * V + j]! - lse[t]!) - (j === y ? 1 : 0)) / count;
  }
  return { logits, losses, lse, loss: count ? total / count : 0, dlogits };
}

function reference(h: Float32Array, W: Float32Array, labels: Int32Array, N: number, T: number, H: number, V: number): Reference {
  const logits = new Float64Array(N * V);
  for (let t = 0; t < N; t++)
    for (let j = 0; j < V; j++) {
      let s = 0;
      for (let k = 0; k < H; k++) s += h[t * H + k]! * W[j * H + k]!;
      logits[t * V + j] = s;
    }
  const r = referenceFromLogits(logits, labels, N, T, V);
  const dhidden = new Float64Array(N * H);
  const dW = new Float64Array(V * H);
  for (let t = 0; t < N; t++)
    for (let j = 0; j < V; j++) {
      const d = r.dlogits[t * V + j]!;
      if (d === 0) continue;
      for (let k = 0; k < H; k++) {
        dhidden[t * H + k] = dhidden[t * H + k]! + d * W[j * H + k]!;
        dW[j * H + k] = dW[j * H + k]! + d * h[t * H + k]!;
      }
    }
  return { ...r, dhidden, dW };
}

/**
 * Labels with the hard parts: runs of −100 at the start of every row (a prompt), scattered −100s, and,
 * when asked, one row that is all −100.
 */
function makeLabels(rows: number, T: number, V: number, random: () => number, ignoredRow = -1): Int32Array {
  const l = new Int32Array(rows * T);
  for (let r = 0; r < rows; r++)
    for (let t = 0; t < T; t++) {
      const ignore = r === ignoredRow || t < Math.min(3, T - 1) || random() < 0.2;
      l[r * T + t] = ignore ? IGNORE_INDEX : Math.floor(random() * V);
    }
  return l;
}

/** Splits W [V, H] into row blocks of the given sizes. */
function splitRows(W: Float32Array, sizes: number[], H: number): Float32Array[] {
  let at = 0;
  return sizes.map((n) => W.slice((at += n) * H - n * H, at * H));
}

interface Case {
  name: string;
  rows: number;
  T: number;
  H: number;
  blocks: number[];
  chunkTokens?: number;
  workspaceTokens?: number;
  ignoredRow?: number;
  dLmHead?: boolean;
  dhiddenSplits?: number;
}

// Ragged everything: vocab sizes and block splits that are multiples of nothing, chunks that split the
// tokens unevenly (33 = 4·7 + 5; 18 = 3·5 + 3), a row with no supervised target, a single chunk.
const TRAIN_CASES: Case[] = [
  { name: 'one block, chunks of 7 over 33 tokens, an all-ignored row', rows: 3, T: 11, H: 19, blocks: [53], chunkTokens: 7, ignoredRow: 1 },
  { name: 'three vocab blocks, chunk size from a workspace budget (5), d(lm_head) accumulated', rows: 2, T: 9, H: 13, blocks: [17, 40, 6], workspaceTokens: 5, dLmHead: true },
  { name: 'one chunk for all tokens, two blocks, wide rows', rows: 2, T: 6, H: 33, blocks: [300, 211] },
  { name: 'dhidden in split-K slices (3 asked), two blocks, chunks of 8', rows: 2, T: 12, H: 20, blocks: [300, 211], chunkTokens: 8, dhiddenSplits: 3 },
  { name: 'split-K asked where chunk × hidden is no whole number of vec4 (the plain matmul runs)', rows: 3, T: 11, H: 19, blocks: [53, 170], chunkTokens: 7, dhiddenSplits: 2 },
];

describe('cross-entropy through lm_head (chunked, fused backward)', () => {
  for (const c of TRAIN_CASES)
    for (const software of [false, true])
    it(`train: ${c.name}${software ? ' (stats one row per invocation, the CPU-adapter kernel)' : ''}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const random = rng(seed);
      const N = c.rows * c.T;
      const V = c.blocks.reduce((a, b) => a + b, 0);
      const h = randn(N * c.H, random);
      const W = randn(V * c.H, random, 0.5);
      const labels = makeLabels(c.rows, c.T, V, random, c.ignoredRow ?? -1);
      const dW0 = randn(V * c.H, random);
      const ref = reference(h, W, labels, N, c.T, c.H, V);
      const hidden = ctx.upload('hidden', [N, c.H], h);
      const blocks = splitRows(W, c.blocks, c.H).map((w, i) => ctx.upload(`lm_head.${i}`, [c.blocks[i]!, c.H], w));
      const dBlocks = c.dLmHead ? splitRows(dW0, c.blocks, c.H).map((w, i) => ctx.upload(`d lm_head.${i}`, [c.blocks[i]!, c.H], w)) : undefined;
      const L = ctx.upload('labels', [N], labels);
      const losses = poisoned(ctx, 'losses', [N]);
      const loss = poisoned(ctx, 'loss', [1]);
      const dhidden = poisoned(ctx, 'dhidden', [N, c.H]);
      const ce = await prepareCrossEntropy(
        ctx,
        { hidden, lmHead: blocks, labels: L, losses, loss, dhidden, ...(dBlocks ? { dLmHead: dBlocks } : {}) },
        { tokens: N, seqLen: c.T, hidden: c.H },
        {
          numSupervised: countSupervised(labels, c.T, V),
          software,
          ...(c.chunkTokens ? { chunkTokens: c.chunkTokens } : {}),
          ...(c.workspaceTokens ? { workspaceBytes: c.workspaceTokens * V * 4 + 3 } : {}),
          ...(c.dhiddenSplits ? { dhiddenSplits: c.dhiddenSplits } : {}),
        },
      );
      if (c.chunkTokens ?? c.workspaceTokens) expect(ce.chunkTokens).toBe(c.chunkTokens ?? c.workspaceTokens);
      else expect(ce.chunks).toBe(1);
      if (c.dhiddenSplits) expect(ce.dispatches.some((d) => d.label.includes('split-K sum'))).toBe(c.H % 4 === 0);
      await ctx.run(ce.dispatches);
      const what = `seed ${seed}`;
      expectClose(await ctx.read(loss), [ref.loss], 1e-5, `loss, ${what}`);
      expectClose(await ctx.read(losses), ref.losses, 1e-5, `losses, ${what}`);
      expectClose(await ctx.read(ce.lse), ref.lse, 1e-5, `lse, ${what}`);
      expectClose(await ctx.read(dhidden), ref.dhidden, 1e-4, `dhidden, ${what}`);
      if (c.ignoredRow !== undefined) {
        const dh = await ctx.read(dhidden);
        const r = c.ignoredRow;
        // The all-ignored row: every target is −100, so its positions get exactly zero gradient.
        expect(dh.subarray(r * c.T * c.H, (r + 1) * c.T * c.H).every((x) => x === 0), 'all-ignored row has zero dhidden').toBe(true);
      }
      if (dBlocks) {
        const got = new Float32Array(V * c.H);
        let at = 0;
        for (const d of dBlocks) {
          const x = await ctx.read(d);
          got.set(x.subarray(0, d.byteSize / 4), at);
          at += d.byteSize / 4;
        }
        expectClose(got, ref.dW.map((x, i) => x + dW0[i]!), 1e-4, `d lm_head (accumulated), ${what}`);
      }

      // The next batch reuses the prepared dispatches: new labels, new count, no re-prepare.
      const labels2 = makeLabels(c.rows, c.T, V, random);
      const ref2 = reference(h, W, labels2, N, c.T, c.H, V);
      ctx.write(L, labels2);
      ce.setNumSupervised(countSupervised(labels2, c.T, V));
      await ctx.run(ce.dispatches);
      expectClose(await ctx.read(loss), [ref2.loss], 1e-5, `loss of batch 2, ${what}`);
      expectClose(await ctx.read(dhidden), ref2.dhidden, 1e-4, `dhidden of batch 2, ${what}`);
      ce.release();
    });

  it('eval mode (no dhidden): loss and per-token losses only, chunked over two blocks', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const random = rng(seed);
    const [rows, T, H, sizes] = [3, 7, 10, [29, 14]];
    const N = rows * T;
    const V = 43;
    const h = randn(N * H, random);
    const W = randn(V * H, random);
    const labels = makeLabels(rows, T, V, random);
    const ref = reference(h, W, labels, N, T, H, V);
    const hidden = ctx.upload('hidden', [N, H], h);
    const blocks = splitRows(W, sizes, H).map((w, i) => ctx.upload(`lm_head.${i}`, [sizes[i]!, H], w));
    const losses = poisoned(ctx, 'losses', [N]);
    const loss = poisoned(ctx, 'loss', [1]);
    const ce = await prepareCrossEntropy(ctx, { hidden, lmHead: blocks, labels: ctx.upload('labels', [N], labels), losses, loss }, { tokens: N, seqLen: T, hidden: H }, {
      numSupervised: countSupervised(labels, T, V),
      chunkTokens: 4,
    });
    await ctx.run(ce.dispatches);
    expectClose(await ctx.read(loss), [ref.loss], 1e-5, `loss, seed ${seed}`);
    expectClose(await ctx.read(losses), ref.losses, 1e-5, `losses, seed ${seed}`);
    expect(await ctx.read(hidden)).toEqual(h); // eval never touches its inputs
    ce.release();
  });

  it('a batch with no supervised target gives loss 0 and zero dhidden', async () => {
    const ctx = await gpu();
    const [rows, T, H, V] = [2, 5, 6, 9];
    const N = rows * T;
    const labels = new Int32Array(N).fill(IGNORE_INDEX);
    labels[0] = 3; // position 0 of a row is never a target
    labels[5] = 4;
    expect(countSupervised(labels, T, V)).toBe(0);
    const losses = poisoned(ctx, 'losses', [N]);
    const loss = poisoned(ctx, 'loss', [1]);
    const dhidden = poisoned(ctx, 'dhidden', [N, H]);
    const r = rng(freshSeed());
    const ce = await prepareCrossEntropy(
      ctx,
      { hidden: ctx.upload('hidden', [N, H], randn(N * H, r)), lmHead: [ctx.upload('w', [V, H], randn(V * H, r))], labels: ctx.upload('labels', [N], labels), losses, loss, dhidden },
      { tokens: N, seqLen: T, hidden: H },
      { numSupervised: 0, chunkTokens: 3 },
    );
    await ctx.run(ce.dispatches);
    expect(Array.from(await ctx.read(loss))).toEqual([0]);
    expect((await ctx.read(losses)).every((x) => x === 0)).toBe(true);
    expect((await ctx.read(dhidden)).every((x) => x === 0)).toBe(true);
    ce.release();
  });

  it('dhidden matches central finite differences of the float64 loss (tiny case)', async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const random = rng(seed);
    const [rows, T, H, V] = [2, 4, 5, 7];
    const N = rows * T;
    const h = randn(N * H, random);
    const W = randn(V * H, random);
    const labels = makeLabels(rows, T, V, random);
    labels[2] = 1; // keep at least one supervised target per row in this tiny batch
    labels[6] = 5;
    const dhidden = poisoned(ctx, 'dhidden', [N, H]);
    const ce = await prepareCrossEntropy(
      ctx,
      { hidden: ctx.upload('hidden', [N, H], h), lmHead: [ctx.upload('w', [V, H], W)], labels: ctx.upload('labels', [N], labels), losses: ctx.tensor('losses', [N]), loss: ctx.tensor('loss', [1]), dhidden },
      { tokens: N, seqLen: T, hidden: H },
      { numSupervised: countSupervised(labels, T, V), chunkTokens: 3 },
    );
    await ctx.run(ce.dispatches);
    const eps = 1e-4;
    const fd = new Float64Array(N * H);
    const hp = Float64Array.from(h);
    for (let i = 0; i < N * H; i++) {
      // Perturb in float64 through a float64 forward (not through Float32Array, which would round eps away).
      const base = hp[i]!;
      hp[i] = base + eps;
      const up = lossF64(hp, W, labels, N, T, H, V);
      hp[i] = base - eps;
      const down = lossF64(hp, W, labels, N, T, H, V);
      hp[i] = base;
      fd[i] = (up - down) / (2 * eps);
    }
    expectClose(await ctx.read(dhidden), fd, 1e-4, `seed ${seed}`);
    ce.release();
  });

  it('reproduces the fixture lora_loss from lora_logits and labels (logits input), and its dlogits', async () => {
    const ctx = await gpu();
    const f = await SafetensorsFile.open(await fileSource(fixturesDir('llama', 'case.safetensors')));
    const shape = f.entry('lora_logits').shape as [number, number, number];
    const [B, T, V] = shape;
    const N = B * T;
    const logits = await f.float32('lora_logits');
    const labels = toInt32(await f.bytes('labels'), f.entry('labels').dtype);
    const expected = (await f.float32('lora_loss'))[0]!;
    const L = ctx.upload('lora_logits', [N, V], logits);
    const losses = poisoned(ctx, 'losses', [N]);
    const loss = poisoned(ctx, 'loss', [1]);
    const ce = await prepareCrossEntropyFromLogits(ctx, { logits: L, labels: ctx.upload('labels', [N], labels), losses, loss }, { tokens: N, seqLen: T, vocab: V }, {
      numSupervised: countSupervised(labels, T, V),
      grad: true,
    });
    await ctx.run(ce.dispatches);
    const got = (await ctx.read(loss))[0]!;
    expect(Math.abs(got - expected) / Math.abs(expected), `loss ${got} vs lora_loss ${expected}`).toBeLessThan(1e-5);
    const ref = referenceFromLogits(Float64Array.from(logits), labels, N, T, V);
    expect(Math.abs(ref.loss - expected) / expected, 'the float64 reference agrees with the fixture').toBeLessThan(1e-5);
    expectClose(await ctx.read(L), ref.dlogits, 1e-4, 'dlogits (in place)');
    ce.release();
  });

  for (const sizes of [[97], [40, 33, 24]])
    it(`logits of the last position of each row for sampling, ${sizes.length} block(s)`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const random = rng(seed);
      const [rows, T, H] = [3, 5, 21];
      const V = sizes.reduce((a, b) => a + b, 0);
      const h = randn(rows * T * H, random);
      const W = randn(V * H, random);
      const out = poisoned(ctx, 'logits', [rows, V]);
      const blocks = splitRows(W, sizes, H).map((w, i) => ctx.upload(`lm_head.${i}`, [sizes[i]!, H], w));
      const p = await prepareLmHeadLogits(ctx, { hidden: ctx.upload('hidden', [rows * T, H], h), lmHead: blocks, out }, { rows, hidden: H, firstRow: T - 1, rowStride: T });
      await ctx.run(p.dispatches);
      const ref = new Float64Array(rows * V);
      for (let r = 0; r < rows; r++)
        for (let j = 0; j < V; j++) {
          let s = 0;
          for (let k = 0; k < H; k++) s += h[(r * T + T - 1) * H + k]! * W[j * H + k]!;
          ref[r * V + j] = s;
        }
      expectClose(await ctx.read(out), ref, 1e-5, `seed ${seed}`);
      p.release();
    });

  it('counts supervised targets the HF way and rejects out-of-range labels', () => {
    // Row 0: positions 1..3 are targets (labels 5, −100, 7) → 2; row 1: label at position 0 is never one.
    const labels = new Int32Array([9, 5, IGNORE_INDEX, 7, 1, IGNORE_INDEX, 2, 3]);
    expect(countSupervised(labels, 4, 10)).toBe(4);
    expect(() => countSupervised(new Int32Array([0, 10]), 2, 10)).toThrow(/outside/);
    expect(() => countSupervised(new Int32Array([0, -1]), 2, 10)).toThrow(/outside/);
    expect(() => countSupervised(new Int32Array(5), 2, 10)).toThrow(/whole rows/);
  });

  it('rejects an lm_head block of the wrong width, naming it', async () => {
    const ctx = await gpu();
    const t = (l: string, s: number[]) => ctx.tensor(l, s);
    await expect(
      prepareCrossEntropy(ctx, { hidden: t('h', [4, 8]), lmHead: [t('lm_head.0', [10, 8]), t('lm_head.1', [10, 7])], labels: ctx.tensor('l', [4], 'i32'), losses: t('ls', [4]), loss: t('lo', [1]) }, { tokens: 4, seqLen: 4, hidden: 8 }, { numSupervised: 1 }),
    ).rejects.toThrow(/lm_head\.1/);
  });
});

/** float64 mean loss with hidden in float64 (for finite differences). */
function lossF64(h: Float64Array, W: Float32Array, labels: Int32Array, N: number, T: number, H: number, V: number): number {
  const logits = new Float64Array(N * V);
  for (let t = 0; t < N; t++)
    for (let j = 0; j < V; j++) {
      let s = 0;
      for (let k = 0; k < H; k++) s += h[t * H + k]! * W[j * H + k]!;
      logits[t * V + j] = s;
    }
  return referenceFromLogits(logits, labels, N, T, V).loss;
}

describe('loss chunk size (ceChunkTokens)', () => {
  it('splits the tokens evenly into the fewest chunks the workspace holds, in whole 128-row tiles where it fits', () => {
    const vocab = 92544; // InternLM2: the default 384 MiB workspace holds 1087 tokens of logits
    expect(ceChunkTokens(vocab, 2048)).toBe(1024); // not 1087 + 961
    expect(ceChunkTokens(vocab, 4096)).toBe(1024);
    expect(ceChunkTokens(vocab, 3000)).toBe(1024); // 3 chunks: 1000 → 1024 still fits
    expect(ceChunkTokens(vocab, 512)).toBe(512);
    expect(ceChunkTokens(vocab, 1087)).toBe(1087);
    expect(ceChunkTokens(vocab, 1088)).toBe(640); // 2 chunks: 544 → 640
    // A budget of 300 tokens over 1000: 4 chunks of 250 → 256; over 590: 2 of 295 (384 does not fit).
    expect(ceChunkTokens(1000, 1000, { workspaceBytes: 300 * 4000 })).toBe(256);
    expect(ceChunkTokens(1000, 590, { workspaceBytes: 300 * 4000 })).toBe(295);
    // An explicit chunk is kept as given.
    expect(ceChunkTokens(vocab, 2048, { chunkTokens: 1087 })).toBe(1087);
    expect(ceChunkTokens(vocab, 100, { chunkTokens: 256 })).toBe(100);
  });
});
