import colsumWgsl from '../../../shaders/colsum.wgsl';
import type { GpuContext } from '../gpu/context.ts';

/** The two-pass deterministic column sum that elementwise.wgsl and rmsnorm.wgsl `#include "colsum.wgsl"`. */
export const COLSUM_SHADER = { name: 'colsum.wgsl', code: colsumWgsl };

/** Makes `#include "colsum.wgsl"` resolvable in this context's pipeline cache (idempotent). */
export function registerColsumInclude(ctx: GpuContext): void {
  ctx.pipelines.registerInclude(COLSUM_SHADER);
}

/** `shader` (a file that `#include`s colsum.wgsl) after registering the include: for every pipeline of such a file. */
export function withColsum<T>(ctx: GpuContext, shader: T): T {
  registerColsumInclude(ctx);
  return shader;
}
