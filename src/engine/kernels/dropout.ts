import dropoutWgsl from '../../../shaders/dropout.wgsl';
import type { GpuContext } from '../gpu/context.ts';

/** The dropout hash that lora.wgsl and quant4.wgsl `#include "dropout.wgsl"` (one definition of the mask). */
export const DROPOUT_SHADER = { name: 'dropout.wgsl', code: dropoutWgsl };

/** Makes `#include "dropout.wgsl"` resolvable in this context's pipeline cache (idempotent). */
export function registerDropoutInclude(ctx: GpuContext): void {
  ctx.pipelines.registerInclude(DROPOUT_SHADER);
}
