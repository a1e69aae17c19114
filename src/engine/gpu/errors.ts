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
  ) {
    super(
      `out of GPU memory allocating ${what} (${formatBytes(requestedBytes)}; ${formatBytes(liveBytes)} already in use)`,
    );
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
