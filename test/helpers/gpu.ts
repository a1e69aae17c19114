import { afterAll } from 'vitest';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import type { Tensor } from '../../src/engine/gpu/tensor.ts';
import { createNodeGpuContext } from '../../src/node/gpu.ts';

let ctxPromise: Promise<GpuContext> | null = null;

/**
 * The GPU for this test file: Dawn on whatever Vulkan driver there is (SwiftShader on CI). Never skipped:
 * if no adapter can be had the error says what to install.
 */
export function gpu(): Promise<GpuContext> {
  if (!ctxPromise) {
    ctxPromise = createNodeGpuContext();
    afterAll(async () => {
      const ctx = await ctxPromise!.catch(() => null);
      ctx?.destroy();
      ctxPromise = null;
    });
  }
  return ctxPromise;
}

/** Uploads data into a fresh tensor and an output tensor poisoned with NaN, so unwritten elements show. */
export function poisoned(ctx: GpuContext, label: string, shape: readonly number[]): Tensor {
  const t = ctx.tensor(label, shape);
  ctx.fill32(t, Number.NaN);
  return t;
}
