import { GpuOutOfMemoryError } from './errors.ts';

const STORAGE_USAGE = 0x80 /* STORAGE */ | 0x4 /* COPY_SRC */ | 0x8; /* COPY_DST */

/**
 * Owns every storage buffer the engine allocates. It counts live bytes and their high-water mark (the
 * number behind "trains in under 8 GB"), and keeps released buffers in per-size free lists so that a
 * training step allocates nothing after the first one.
 */
export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  /** Buffers in the free lists: a second release would hand one buffer to two owners. */
  private idle = new Set<GPUBuffer>();
  private sizes = new WeakMap<GPUBuffer, number>();
  private live = 0;
  private peak = 0;
  private cached = 0;
  /** Open allocation scopes (openScope), innermost last: the buffers each handed out and still holds. */
  private scopes: Set<GPUBuffer>[] = [];

  /**
   * Live bytes allowed at once (null: as many as the device grants). An allocation beyond it throws
   * GpuOutOfMemoryError before touching the device: a smaller GPU simulated on a bigger one (tests), or a
   * cap the user set so other tabs and the desktop keep their share.
   */
  budgetBytes: number | null = null;

  constructor(private readonly device: GPUDevice) {}

  /** Bytes in buffers handed out and not yet released. */
  get liveBytes(): number {
    return this.live;
  }
  /** The most bytes that were live at once since creation or the last resetPeak(). */
  get peakBytes(): number {
    return this.peak;
  }
  /** Bytes held in free lists (allocated on the device, reusable). */
  get cachedBytes(): number {
    return this.cached;
  }

  resetPeak(): void {
    this.peak = this.live;
  }

  /** Sizes are rounded up to 16 bytes, so vec4 loads never run past a binding. */
  static roundSize(bytes: number): number {
    return Math.max(16, Math.ceil(bytes / 16) * 16);
  }

  alloc(label: string, bytes: number): GPUBuffer {
    const size = BufferPool.roundSize(bytes);
    if (this.budgetBytes !== null && this.live + size > this.budgetBytes) throw new GpuOutOfMemoryError(label, size, this.live, this.budgetBytes);
    const reuse = this.free.get(size)?.pop();
    let buffer: GPUBuffer;
    if (reuse) {
      this.idle.delete(reuse);
      this.cached -= size;
      buffer = reuse;
      buffer.label = label;
    } else {
      const max = this.device.limits.maxBufferSize;
      if (size > max) throw new GpuOutOfMemoryError(`${label} (larger than this adapter's maxBufferSize)`, size, this.live);
      buffer = this.device.createBuffer({ label, size, usage: STORAGE_USAGE });
      this.sizes.set(buffer, size);
    }
    this.live += size;
    this.peak = Math.max(this.peak, this.live);
    this.scopes[this.scopes.length - 1]?.add(buffer);
    return buffer;
  }

  /**
   * Starts recording the buffers handed out from now on. `rollback()` releases those still held (a model
   * load or a step plan that failed half-way leaves nothing behind); `commit()` keeps them (an enclosing
   * scope then owns them). Scopes nest; an allocation belongs to the innermost open one, so only work that
   * is not interleaved with other allocating work should use them (model loads and step plans are serialized).
   */
  openScope(): { commit(): void; rollback(): void } {
    const held = new Set<GPUBuffer>();
    this.scopes.push(held);
    const close = (): Set<GPUBuffer> | undefined => {
      const at = this.scopes.indexOf(held);
      if (at >= 0) this.scopes.splice(at, 1);
      return at > 0 ? this.scopes[at - 1] : undefined;
    };
    return {
      commit: () => {
        const outer = close();
        if (outer) for (const b of held) outer.add(b);
      },
      rollback: () => {
        close();
        for (const b of held) this.release(b);
      },
    };
  }

  release(buffer: GPUBuffer): void {
    const size = this.sizes.get(buffer);
    if (size === undefined) throw new Error(`BufferPool.release: '${buffer.label}' was not allocated by this pool`);
    if (this.idle.has(buffer)) throw new Error(`BufferPool.release: '${buffer.label}' released twice`);
    this.idle.add(buffer);
    for (const scope of this.scopes) scope.delete(buffer);
    this.live -= size;
    this.cached += size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buffer);
  }

  /** Destroys the buffers in the free lists (returns their memory to the device). */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
    this.idle.clear();
    this.cached = 0;
  }
}
