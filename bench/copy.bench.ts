import type { GpuContext } from '../src/engine/gpu/context.ts';
import type { BenchRow } from './harness.ts';

/** Copy bandwidth ceiling: copyBufferToBuffer of a large buffer (bytes counted as read + write). */
export async function bench(ctx: GpuContext, quick = false): Promise<BenchRow[]> {
  const size = quick ? 16 << 20 : 256 << 20;
  const src = ctx.device.createBuffer({ size, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  const dst = ctx.device.createBuffer({ size, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  const reps = quick ? 2 : 20;
  const once = async () => {
    const enc = ctx.device.createCommandEncoder();
    for (let i = 0; i < reps; i++) enc.copyBufferToBuffer(src, 0, dst, 0, size);
    const t0 = performance.now();
    ctx.device.queue.submit([enc.finish()]);
    await ctx.device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / reps;
  };
  await once();
  const times = [await once(), await once(), await once()].sort((a, b) => a - b);
  src.destroy();
  dst.destroy();
  return [{ name: `copyBufferToBuffer ${size >> 20} MiB`, ms: times[1]!, bytes: 2 * size, note: 'read + write' }];
}
