/**
 * The Hub cache in the Origin Private File System. Small blobs (manifests, refs) go through the checkpoint
 * store's OpfsBlobStore (atomic createWritable swap); downloads are written in place so that what arrived
 * before a drop or a reload is still there to resume from:
 * - in a dedicated worker (the engine worker) with a sync access handle: every write lands in the file;
 * - elsewhere with createWritable({ keepExistingData: true }), whose bytes are committed on close (the
 *   downloader closes a writer at least every part of 64 MiB, so a reload loses at most one part).
 * Reading back is `getFile()`: a lazy, disk-backed File.
 */
import { OpfsBlobStore, type BlobInfo } from '../engine/share/checkpoint.ts';
import type { FileWriter, ResumableStore } from './store.ts';

interface SyncAccessHandle {
  write(buffer: Uint8Array, options: { at: number }): number;
  truncate(size: number): void;
  flush(): void;
  close(): void;
}

export class OpfsResumableStore implements ResumableStore {
  private readonly blobs: OpfsBlobStore;

  constructor(private readonly root: FileSystemDirectoryHandle) {
    this.blobs = new OpfsBlobStore(root);
  }

  /** The store under `folder` of this origin's OPFS root (created when absent). */
  static async open(folder = 'webtune'): Promise<OpfsResumableStore> {
    const root = await navigator.storage.getDirectory();
    return new OpfsResumableStore(await root.getDirectoryHandle(folder, { create: true }));
  }

  put(name: string, data: Uint8Array) {
    return this.blobs.put(name, data);
  }
  get(name: string) {
    return this.blobs.get(name);
  }
  list(prefix?: string): Promise<BlobInfo[]> {
    return this.blobs.list(prefix);
  }
  delete(name: string) {
    return this.blobs.delete(name);
  }

  private async fileHandle(name: string, create: boolean): Promise<FileSystemFileHandle | null> {
    const parts = name.split('/');
    const file = parts.pop()!;
    try {
      let dir = this.root;
      for (const p of parts) dir = await dir.getDirectoryHandle(p, { create });
      return await dir.getFileHandle(file, { create });
    } catch (e) {
      if (!create && ((e as DOMException).name === 'NotFoundError' || (e as DOMException).name === 'TypeMismatchError')) return null;
      throw e;
    }
  }

  async size(name: string): Promise<number | null> {
    const h = await this.fileHandle(name, false);
    return h ? (await h.getFile()).size : null;
  }

  async blob(name: string): Promise<Blob | null> {
    const h = await this.fileHandle(name, false);
    return h ? h.getFile() : null;
  }

  async openWriter(name: string, offset: number): Promise<FileWriter> {
    const h = (await this.fileHandle(name, true))!;
    const createSync = (h as unknown as { createSyncAccessHandle?: () => Promise<SyncAccessHandle> }).createSyncAccessHandle;
    if (typeof createSync === 'function') {
      let sync: SyncAccessHandle | null = null;
      try {
        sync = await createSync.call(h);
      } catch {
        sync = null; // not a dedicated worker (or the file is locked): fall back to createWritable
      }
      if (sync) {
        const s = sync;
        s.truncate(offset);
        let at = offset;
        return {
          async write(chunk) {
            let done = 0;
            while (done < chunk.length) done += s.write(chunk.subarray(done), { at: at + done });
            at += chunk.length;
          },
          async close() {
            s.flush();
            s.close();
          },
        };
      }
    }
    const w = await h.createWritable({ keepExistingData: true });
    await w.truncate(offset);
    await w.seek(offset);
    return {
      write: (chunk) => w.write(chunk as Uint8Array<ArrayBuffer>),
      close: () => w.close(),
    };
  }

  async available(): Promise<number | null> {
    const est = await navigator.storage.estimate?.();
    if (!est || est.quota === undefined) return null;
    return Math.max(0, est.quota - (est.usage ?? 0));
  }
}
