import type { GpuContext } from '../gpu/context.ts';

/**
 * Workgroup counts for `groups` one-dimensional workgroups laid out as a 2D grid, because one dimension
 * allows at most maxComputeWorkgroupsPerDimension (65535) groups. The dense-op shaders linearise it back as
 * `group = wg.y * num_workgroups.x + wg.x` and skip the few surplus groups of the last row.
 */
export function grid1d(ctx: GpuContext, groups: number, label: string): [number, number, number] {
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  const g = Math.max(1, groups);
  if (g <= max) return [g, 1, 1];
  const y = Math.ceil(g / max);
  if (y > max) throw new Error(`${label}: needs ${g} workgroups, more than this adapter can dispatch (${max}²)`);
  return [Math.ceil(g / y), y, 1];
}

