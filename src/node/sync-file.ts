import { closeSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import type { SyncFile } from '../engine/train/moments.ts';

/** A file opened for synchronous random access, shaped like OPFS's FileSystemSyncAccessHandle. */
export function nodeSyncFile(path: string): SyncFile {
  const fd = openSync(path, 'w+');
  return {
    read: (buffer, { at }) => readSync(fd, buffer, 0, buffer.byteLength, at),
    write: (buffer, { at }) => writeSync(fd, buffer, 0, buffer.byteLength, at),
    truncate: (size) => ftruncateSync(fd, size),
    flush: () => fsyncSync(fd),
    close: () => closeSync(fd),
  };
}
