/**
 * The note a folder export keeps in its folder while it runs (WEBTUNE-EXPORT-INCOMPLETE.txt): written first,
 * rewritten as each file opens and completes, removed last. A tab closed mid-export cannot clean up after
 * itself; the note then says, to a person and to the next page load, which files that export wrote, so
 * removeExportLeftovers can delete exactly those (and nothing the user put there).
 */

export const INCOMPLETE_EXPORT_NOTE = 'WEBTUNE-EXPORT-INCOMPLETE.txt';

const HEADER =
  'This folder holds a WebTune merged-model export that did not finish (the tab was closed or the\n' +
  'browser stopped). Its files are not a complete checkpoint: delete them and export again.\n' +
  'WebTune offers to remove them the next time the Share section opens. Files of that export:\n';

export interface ExportNote {
  /** Files the export completed. */
  written: string[];
  /** The file it was writing (its bytes may sit in the browser's swap file, name.crswap), or null. */
  writing: string | null;
}

export function exportNoteText(written: readonly string[], writing: string | null): string {
  return HEADER + written.map((n) => `written: ${n}\n`).join('') + (writing ? `writing: ${writing}\n` : '');
}

/** A plain file name in the folder (no path, no parent): the only names a note may make us delete. */
function plainName(n: string): boolean {
  return n.length > 0 && n !== '.' && n !== '..' && !/[/\\]/.test(n);
}

export function parseExportNote(text: string): ExportNote {
  const note: ExportNote = { written: [], writing: null };
  for (const line of text.split('\n')) {
    const m = /^(written|writing): (.+)$/.exec(line);
    if (!m || !plainName(m[2]!)) continue;
    if (m[1] === 'written') note.written.push(m[2]!);
    else note.writing = m[2]!;
  }
  return note;
}

/** What removeExportLeftovers needs of a folder (a FileSystemDirectoryHandle has it). */
export interface ExportFolder {
  getFileHandle(name: string): Promise<{ getFile(): Promise<Blob> }>;
  removeEntry(name: string): Promise<void>;
}

/**
 * Removes the files an unfinished export wrote into `dir` (by its note), then the note. Returns the names
 * removed, or null when the folder has no note (the export finished, or it was cleaned up already).
 */
export async function removeExportLeftovers(dir: ExportFolder): Promise<string[] | null> {
  let text: string;
  try {
    text = await (await (await dir.getFileHandle(INCOMPLETE_EXPORT_NOTE)).getFile()).text();
  } catch (e) {
    if (e instanceof DOMException && e.name === 'NotFoundError') return null;
    throw e;
  }
  const note = parseExportNote(text);
  const candidates = [...note.written, ...(note.writing ? [note.writing, `${note.writing}.crswap`] : [])];
  const removed: string[] = [];
  for (const name of candidates) {
    try {
      await dir.removeEntry(name);
      removed.push(name);
    } catch (e) {
      if (!(e instanceof DOMException && e.name === 'NotFoundError')) throw e;
    }
  }
  await dir.removeEntry(INCOMPLETE_EXPORT_NOTE);
  return removed;
}
