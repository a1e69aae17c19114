// The buffer pool hands a released buffer to the next allocation of its size: a second release of the
// same buffer would give it to two owners (silent aliasing), so it is refused naming the buffer.
import { expect, it } from 'vitest';
import { gpu } from '../helpers/gpu.ts';

it('a buffer released twice is an error naming it; reuse after a release is fine', async () => {
  const ctx = await gpu();
  const a = ctx.tensor('scratch a', [64]);
  ctx.release(a);
  expect(() => ctx.release(a)).toThrow(/'scratch a' released twice/);
  const b = ctx.tensor('scratch b', [64]); // takes a's buffer from the free list
  const c = ctx.tensor('scratch c', [64]);
  expect(b.buffer).not.toBe(c.buffer);
  ctx.release(b);
  ctx.release(c);
});
