/**
 * Where AdamW's moments live when they are offloaded from the GPU: in CPU memory, or on disk (a file in
 * Node, an OPFS file through a sync access handle in the browser's worker). The optimizer streams them
 * through the GPU one chunk (one layer's LoRA parameters) at a time: upload m and v, update, read back.
 */
export type OptimizerOffload = 'gpu' | 'cpu' | 'disk';

export interface MomentStore {
  /** Total elements of m (and of v). */
  readonly length: number;
  read(offset: number, length: number, m: Float32Array, v: Float32Array): void;
  write(offset: number, m: Float32Array, v: Float32Array): void;
  close(): void;
}

/** Moments in two Float32Arrays (zero-initialised, as torch's AdamW starts). */
export function memoryMomentStore(length: number): MomentStore {
  const M = new Float32Array(length);
  const V = new Float32Array(length);
  return {
    length,
    read(offset, n, m, v) {
      m.set(M.subarray(offset, offset + n));
      v.set(V.subarray(offset, offset + n));
    },
    write(offset, m, v) {
      M.set(m, offset);
      V.set(v, offset);
    },
    close() {},
  };
}

/**
 * Random-access byte storage with synchronous reads and writes at offsets: a Node file descriptor or an
 * OPFS FileSystemSyncAccessHandle (which has exactly this shape: read/write(buffer, {at}), truncate, close).
 */
export interface SyncFile {
  read(buffer: Uint8Array, options: { at: number }): number;
  write(buffer: Uint8Array, options: { at: number }): number;
  truncate(size: number): void;
  flush?(): void;
  close(): void;
}

/** Moments in one file: m at [0, 4·length), v at [4·length, 8·length). The file is zeroed first. */
export function fileMomentStore(file: SyncFile, length: number, what = 'optimizer state file'): MomentStore {
  file.truncate(0);
  file.truncate(length * 8);
  const io = (op: 'read' | 'write', at: number, a: Float32Array) => {
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const n = file[op](bytes, { at });
    if (n !== bytes.byteLength) throw new Error(`${what}: ${op} of ${bytes.byteLength} bytes at ${at} moved ${n} (disk full?)`);
  };
  return {
    length,
    read(offset, n, m, v) {
      io('read', offset * 4, m.subarray(0, n));
      io('read', (length + offset) * 4, v.subarray(0, n));
    },
    write(offset, m, v) {
      io('write', offset * 4, m);
      io('write', (length + offset) * 4, v);
    },
    close() {
      file.flush?.();
      file.close();
    },
  };
}
