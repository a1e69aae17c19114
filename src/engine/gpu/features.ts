import type { GpuFeatures } from './context.ts';

/**
 * Whether this device can run the int8 kernels, and if not why (for the WebGPU badge): the adapter must
 * offer `chromium-experimental-subgroup-matrix` with an i8→i32 16×16×32 configuration and a fixed subgroup
 * size of 32 (quant4_mma.wgsl's layout). Plain data in, so the UI can say it too.
 */
export function int8MatmulSupport(f: GpuFeatures): { ok: boolean; why: string } {
  if (!f.subgroupMatrix) return { ok: false, why: 'no subgroup matrices (chromium-experimental-subgroup-matrix; in Chrome behind --enable-unsafe-webgpu)' };
  const cfg = f.subgroupMatrixConfigs.some((c) => c.componentType === 'i8' && c.resultComponentType === 'i32' && c.M === 16 && c.N === 16 && c.K === 32);
  if (!cfg) return { ok: false, why: `no i8→i32 16×16×32 subgroup-matrix configuration (offered: ${f.subgroupMatrixConfigs.map((c) => `${c.componentType}→${c.resultComponentType} ${c.M}×${c.N}×${c.K}`).join(', ') || 'none'})` };
  if (f.subgroupMinSize !== 32 || f.subgroupMaxSize !== 32) return { ok: false, why: `subgroup size ${f.subgroupMinSize}–${f.subgroupMaxSize}, the kernels need exactly 32` };
  return { ok: true, why: 'int8 tensor-core matmuls available' };
}

