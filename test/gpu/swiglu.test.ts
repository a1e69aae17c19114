import { describe, expect, it } from 'vitest';
import { swigluBackward, swigluForward } from '../../src/engine/kernels/swiglu.ts';
import { gpu, poisoned } from '../helpers/gpu.ts';
import { expectClose, freshSeed, randn, rng } from '../helpers/numeric.ts';

const sig = (g: number) => 1 / (1 + Math.exp(-g));

/** float64 forward and backward of h = silu(g)·u. */
function reference(g: ArrayLike<number>, u: ArrayLike<number>, dh: ArrayLike<number>) {
  const n = g.length;
  const h = new Float64Array(n);
  const dg = new Float64Array(n);
  const du = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = sig(g[i]!);
    h[i] = g[i]! * s * u[i]!;
    dg[i] = dh[i]! * u[i]! * s * (1 + g[i]! * (1 - s));
    du[i] = dh[i]! * g[i]! * s;
  }
  return { h, dg, du };
}

/** Rows `gate | up` of a fused [tokens, 2·inter] tensor from separate gate/up. */
function fuse(a: ArrayLike<number>, b: ArrayLike<number>, tokens: number, inter: number): Float32Array {
  const out = new Float32Array(2 * tokens * inter);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < inter; j++) {
      out[2 * t * inter + j] = a[t * inter + j]!;
      out[(2 * t + 1) * inter + j] = b[t * inter + j]!;
    }
  return out;
}

function inputs(seed: number, tokens: number, inter: number) {
  const r = rng(seed);
  const g = randn(tokens * inter, r, 3);
  // A few saturated gates (σ → 0 or 1, exp overflow) must stay finite.
  if (g.length > 2) {
    g[0] = 90;
    g[1] = -90;
  }
  return { g, u: randn(tokens * inter, r), dh: randn(tokens * inter, r) };
}

const TOKENS = [1, 7, 33];
const INTERS = [64, 72, 130];

describe('swiglu', () => {
  for (const fused of [false, true])
    for (const tokens of TOKENS)
      for (const inter of INTERS) {
        it(`${fused ? 'fused gate|up' : 'separate gate, up'} tokens=${tokens} inter=${inter}`, async () => {
          const ctx = await gpu();
          const seed = freshSeed();
          const { g, u, dh } = inputs(seed, tokens, inter);
          const ref = reference(g, u, dh);
          const H = poisoned(ctx, 'h', [tokens, inter]);
          const DH = ctx.upload('dh', [tokens, inter], dh);
          if (fused) {
            const GU = ctx.upload('gate|up', [tokens, 2 * inter], fuse(g, u, tokens, inter));
            const DGU = poisoned(ctx, 'd(gate|up)', [tokens, 2 * inter]);
            await swigluForward(ctx, { fused: GU }, H, { tokens, inter });
            await swigluBackward(ctx, DH, { fused: GU }, { dfused: DGU }, { tokens, inter });
            expectClose(await ctx.read(H), ref.h, 1e-5, `h, seed ${seed}`);
            expectClose(await ctx.read(DGU), fuse(ref.dg, ref.du, tokens, inter), 1e-5, `d(gate|up), seed ${seed}`);
            for (const t of [GU, DGU]) ctx.release(t);
          } else {
            const G = ctx.upload('gate', [tokens, inter], g);
            const U = ctx.upload('up', [tokens, inter], u);
            const DG = poisoned(ctx, 'dgate', [tokens, inter]);
            const DU = poisoned(ctx, 'dup', [tokens, inter]);
            await swigluForward(ctx, { gate: G, up: U }, H, { tokens, inter });
            await swigluBackward(ctx, DH, { gate: G, up: U }, { dgate: DG, dup: DU }, { tokens, inter });
            expectClose(await ctx.read(H), ref.h, 1e-5, `h, seed ${seed}`);
            expectClose(await ctx.read(DG), ref.dg, 1e-5, `dgate, seed ${seed}`);
            expectClose(await ctx.read(DU), ref.du, 1e-5, `dup, seed ${seed}`);
            for (const t of [G, U, DG, DU]) ctx.release(t);
          }
          for (const t of [H, DH]) ctx.release(t);
        });
      }

  for (const [tokens, inter] of [[3, 4], [2, 5]] as [number, number][]) {
    it(`backward matches finite differences of the float64 forward (loss = Σ h·dh) tokens=${tokens} inter=${inter}`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const g = randn(tokens * inter, r, 2);
      const u = randn(tokens * inter, r);
      const dh = randn(tokens * inter, r);
      const loss = (gg: ArrayLike<number>, uu: ArrayLike<number>) => {
        let s = 0;
        for (let i = 0; i < gg.length; i++) s += gg[i]! * sig(gg[i]!) * uu[i]! * dh[i]!;
        return s;
      };
      const h = 1e-6;
      const central = (base: Float32Array, i: number, f: (v: Float64Array) => number) => {
        const p = Float64Array.from(base);
        const m = Float64Array.from(base);
        p[i] = p[i]! + h;
        m[i] = m[i]! - h;
        return (f(p) - f(m)) / (2 * h);
      };
      const fdg = Float64Array.from(g, (_, i) => central(g, i, (v) => loss(v, u)));
      const fdu = Float64Array.from(u, (_, i) => central(u, i, (v) => loss(g, v)));
      const GU = ctx.upload('gate|up', [tokens, 2 * inter], fuse(g, u, tokens, inter));
      const DH = ctx.upload('dh', [tokens, inter], dh);
      const DGU = poisoned(ctx, 'd(gate|up)', [tokens, 2 * inter]);
      await swigluBackward(ctx, DH, { fused: GU }, { dfused: DGU }, { tokens, inter });
      expectClose(await ctx.read(DGU), fuse(fdg, fdu, tokens, inter), 1e-4, `seed ${seed}`);
    });
  }

  it('rejects a fused input with separate gradients', async () => {
    const ctx = await gpu();
    const GU = ctx.tensor('gu', [2, 8]);
    const DH = ctx.tensor('dh', [2, 4]);
    const DG = ctx.tensor('dg', [2, 4]);
    const DU = ctx.tensor('du', [2, 4]);
    await expect(swigluBackward(ctx, DH, { fused: GU }, { dgate: DG, dup: DU }, { tokens: 2, inter: 4 })).rejects.toThrow(/fused/);
  });
});
