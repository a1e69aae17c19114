/**
 * A merged export into a folder, remembered while it runs (IndexedDB keeps the folder's handle): a record
 * still there when a page opens means the tab closed mid-export, and the Share section offers to remove
 * what that export wrote (by the note it keeps in the folder, src/engine/share/export-note.ts).
 */
import { idbKeyValue, type KeyValueStore } from './kv.ts';

export interface PendingExport<Folder = FileSystemDirectoryHandle> {
  folder: Folder;
  /** The folder's name, for the message (the handle says nothing until permission is granted again). */
  folderName: string;
  startedAt: string;
}

const KEY = 'merged-export';

export class PendingExports<Folder = FileSystemDirectoryHandle> {
  constructor(private readonly kv: KeyValueStore = idbKeyValue('webtune-exports')) {}

  get(): Promise<PendingExport<Folder> | undefined> {
    return this.kv.get<PendingExport<Folder>>(KEY);
  }

  begin(folder: Folder, folderName: string, now = new Date()): Promise<void> {
    return this.kv.set(KEY, { folder, folderName, startedAt: now.toISOString() });
  }

  /** The export ended in this page (finished, or failed/cancelled and cleaned up by the worker). */
  end(): Promise<void> {
    return this.kv.delete(KEY);
  }
}
