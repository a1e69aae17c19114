import type { GpuContext } from './context.ts';

export interface Timing {
  label: string;
  ms: number;
}

/**
 * Times compute passes on the GPU with timestamp queries when the device has them; otherwise the caller
 * falls back to wall-clock around submit + onSubmittedWorkDone (see timeSubmission).
 */
export class PassTimer {
  private readonly querySet: GPUQuerySet;
  private readonly resolveBuffer: GPUBuffer;
  private readonly readBuffer: GPUBuffer;
  private labels: string[] = [];

  constructor(
    private readonly ctx: GpuContext,
    private readonly capacity = 256,
  ) {
    if (!ctx.features.timestampQuery) throw new Error('PassTimer needs the timestamp-query feature');
    const d = ctx.device;
    this.querySet = d.createQuerySet({ label: 'pass timer', type: 'timestamp', count: capacity * 2 });
    this.resolveBuffer = d.createBuffer({ label: 'pass timer resolve', size: capacity * 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    this.readBuffer = d.createBuffer({ label: 'pass timer read', size: capacity * 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  }

  /** A pass descriptor whose begin/end timestamps are recorded under `label`. */
  pass(label: string): GPUComputePassDescriptor {
    const i = this.labels.length;
    if (i >= this.capacity) throw new Error(`PassTimer: more than ${this.capacity} passes timed`);
    this.labels.push(label);
    return { label, timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } };
  }

  /** Call once after the timed passes, in the same (or a later) encoder. */
  resolve(encoder: GPUCommandEncoder): void {
    const n = this.labels.length * 2;
    if (n === 0) return;
    encoder.resolveQuerySet(this.querySet, 0, n, this.resolveBuffer, 0);
    encoder.copyBufferToBuffer(this.resolveBuffer, 0, this.readBuffer, 0, n * 8);
  }

  /** Reads the timings of the passes recorded since the last read, and starts over. */
  async read(): Promise<Timing[]> {
    const n = this.labels.length;
    await this.readBuffer.mapAsync(GPUMapMode.READ, 0, n * 16);
    const t = new BigUint64Array(this.readBuffer.getMappedRange(0, n * 16).slice(0));
    this.readBuffer.unmap();
    const out = this.labels.map((label, i) => ({ label, ms: Number(t[2 * i + 1]! - t[2 * i]!) / 1e6 }));
    this.labels = [];
    return out;
  }

  destroy(): void {
    this.querySet.destroy();
    this.resolveBuffer.destroy();
    this.readBuffer.destroy();
  }
}

/** Wall-clock milliseconds of one submission, from submit to onSubmittedWorkDone. */
export async function timeSubmission(ctx: GpuContext, record: (encoder: GPUCommandEncoder) => void): Promise<number> {
  const encoder = ctx.device.createCommandEncoder();
  record(encoder);
  const t0 = performance.now();
  ctx.device.queue.submit([encoder.finish()]);
  await ctx.device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}
