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
  const rows: BenchRow[] = [{ name: `copyBufferToBuffer ${size >> 20} MiB`, ms: times[1]!, bytes: 2 * size, note: 'read + write' }];
  // Host memory over the bus, as the offloaded optimizer moves AdamW's moments: from a mappable upload buffer
  // into GPU memory, and from GPU memory into a mappable readback buffer (bytes counted once: the bus's).
  const up = ctx.device.createBuffer({ size, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC });
  const down = ctx.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const bus = async (from: GPUBuffer, to: GPUBuffer) => {
    const run = async () => {
      const enc = ctx.device.createCommandEncoder();
      enc.copyBufferToBuffer(from, 0, to, 0, size);
      const t0 = performance.now();
      ctx.device.queue.submit([enc.finish()]);
      await ctx.device.queue.onSubmittedWorkDone();
      return performance.now() - t0;
    };
    await run();
    return [await run(), await run(), await run()].sort((a, b) => a - b)[1]!;
  };
  rows.push({ name: `host → GPU ${size >> 20} MiB (upload buffer)`, ms: await bus(up, src), bytes: size, note: 'bus bytes' });
  rows.push({ name: `GPU → host ${size >> 20} MiB (readback buffer)`, ms: await bus(src, down), bytes: size, note: 'bus bytes' });
  for (const b of [src, dst, up, down]) b.destroy();
  return rows;
}
