/** Errors raised by the GPU runtime. Each names the kernel or buffer involved so a user report is actionable. */
export class GpuUnavailableError extends Error {
  override name = 'GpuUnavailableError';
}

export class KernelError extends Error {
  override name = 'KernelError';
  constructor(
    readonly kernel: string,
    message: string,
  ) {
    super(`${kernel}: ${message}`);
  }
}

export class GpuOutOfMemoryError extends Error {
  override name = 'GpuOutOfMemoryError';
  constructor(
    readonly what: string,
    readonly requestedBytes: number,
    readonly liveBytes: number,
    /** The pool's byte budget when one was set (BufferPool.budgetBytes), else null: the device itself refused. */
    readonly budgetBytes: number | null = null,
  ) {
    const asked = requestedBytes > 0 ? `${formatBytes(requestedBytes)}; ` : '';
    const budget = budgetBytes === null ? '' : ` of a ${formatBytes(budgetBytes)} budget`;
    super(`out of GPU memory allocating ${what} (${asked}${formatBytes(liveBytes)} already in use${budget})`);
  }
}

export class DeviceLostError extends Error {
  override name = 'DeviceLostError';
  constructor(
    readonly reason: string,
    detail: string,
  ) {
    super(`the GPU device was lost (${reason}): ${detail}`);
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}
