/**
 * Where Hub downloads are kept. A `ResumableStore` is the checkpoint `BlobStore` (small atomic blobs:
 * manifests, refs) plus what a multi-GB download needs: writing a file from a given offset (to resume
 * after a drop or a reload), its current size, and reading it back lazily as a Blob (never the whole file
 * in memory). OPFS implements it in the browser (store-opfs.ts); the memory store below serves the tests,
 * so the same download code runs in Node.
 */
import { MemoryBlobStore, type BlobStore } from '../engine/share/checkpoint.ts';

export interface FileWriter {
  /** Appends bytes at the writer's position. */
  write(chunk: Uint8Array): Promise<void>;
  /** Makes what was written durable and releases the file. Bytes written before a failure are kept. */
  close(): Promise<void>;
}

export interface ResumableStore extends BlobStore {
  /** The stored size of a file, or null when there is none. */
  size(name: string): Promise<number | null>;
  /** A file's bytes as a Blob (lazy where the platform allows: OPFS File), or null. */
  blob(name: string): Promise<Blob | null>;
  /** Opens a file for writing at `offset`: anything stored past `offset` is dropped first. */
  openWriter(name: string, offset: number): Promise<FileWriter>;
  /** Bytes this origin may still store (quota − usage), or null when the platform does not say. */
  available(): Promise<number | null>;
}

/** The error a full store raises (the same name OPFS uses), so callers handle both alike. */
export function quotaExceeded(message: string): DOMException {
  return new DOMException(message, 'QuotaExceededError');
}

export const isQuotaError = (e: unknown): boolean => (e as { name?: string } | null)?.name === 'QuotaExceededError';

/**
 * In memory, for tests and for Node callers that keep nothing. `quotaBytes` makes it fail like a full
 * OPFS: a write that would take the total past the quota throws QuotaExceededError.
 */
export class MemoryResumableStore extends MemoryBlobStore implements ResumableStore {
  constructor(readonly quotaBytes: number | null = null) {
    super();
  }

  private used(): number {
    let n = 0;
    for (const b of this.blobs.values()) n += b.length;
    return n;
  }

  override async put(name: string, data: Uint8Array): Promise<void> {
    if (this.quotaBytes !== null && this.used() - (this.blobs.get(name)?.length ?? 0) + data.length > this.quotaBytes) throw quotaExceeded(`${name}: quota exceeded`);
    return super.put(name, data);
  }

  async size(name: string): Promise<number | null> {
    return this.blobs.get(name)?.length ?? null;
  }

  async blob(name: string): Promise<Blob | null> {
    const b = this.blobs.get(name);
    return b ? new Blob([b.slice()]) : null;
  }

  async openWriter(name: string, offset: number): Promise<FileWriter> {
    const old = this.blobs.get(name) ?? new Uint8Array(0);
    if (offset > old.length) throw new RangeError(`${name}: cannot write at ${offset}, the file has ${old.length} bytes`);
    // A growing buffer (capacity doubles), published to the blob map after every write.
    let buf = old.slice(0, offset);
    let length = offset;
    this.blobs.set(name, buf);
    return {
      write: async (chunk) => {
        if (this.quotaBytes !== null && this.used() + chunk.length > this.quotaBytes) throw quotaExceeded(`${name}: quota exceeded`);
        if (length + chunk.length > buf.length) {
          const grown = new Uint8Array(Math.max(length + chunk.length, 2 * buf.length));
          grown.set(buf.subarray(0, length));
          buf = grown;
        }
        buf.set(chunk, length);
        length += chunk.length;
        this.blobs.set(name, buf.subarray(0, length)); // every write is at once "durable", like a sync access handle
      },
      close: async () => {},
    };
  }

  async available(): Promise<number | null> {
    return this.quotaBytes === null ? null : this.quotaBytes - this.used();
  }
}
