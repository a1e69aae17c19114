import { expect } from 'vitest';
import { seededRandom } from '../../src/engine/random.ts';

/** The engine's seeded PRNG (mulberry32), so a failing case can be replayed from its printed seed. */
export const rng = seededRandom;

/** A fresh seed per call (tests print it in their names/messages), so each run sees new inputs. */
export function freshSeed(): number {
  return (Math.random() * 2 ** 31) >>> 0;
}

export function randn(n: number, random: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(random(), 1e-12);
    const v = random();
    const r = Math.sqrt(-2 * Math.log(u)) * scale;
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

export function uniform(n: number, random: () => number, lo = -1, hi = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * random();
  return out;
}

/** ‖out − ref‖ / ‖ref‖ in float64; NaN anywhere (or a zero reference with nonzero output) gives Infinity/NaN. */
export function relError(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new Error(`relError: length ${out.length} vs reference ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = out[i]! - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return Math.sqrt(num / den);
}

export function countNaN(a: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) n++;
  return n;
}

/** Asserts no non-finite values and relative error under tol, with a message that says which and by how much. */
export function expectClose(out: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what = 'output'): void {
  const bad = countNaN(out);
  expect(bad, `${what}: ${bad} non-finite values`).toBe(0);
  const err = relError(out, ref);
  expect(err, `${what}: relative error ${err.toExponential(3)} (tolerance ${tol})`).toBeLessThan(tol);
}
