import { describe, expect, it } from 'vitest';
import { exportNoteText, INCOMPLETE_EXPORT_NOTE, parseExportNote, removeExportLeftovers, type ExportFolder } from '../../../src/engine/share/export-note.ts';
import { memorySinks, recordingSinks, writeFileTo } from '../../../src/engine/share/sinks.ts';
import { PendingExports } from '../../../src/ui/store/pending-export.ts';
import { memoryKeyValue } from '../../../src/ui/store/kv.ts';

/** A folder in memory with the two calls removeExportLeftovers makes (NotFoundError as the browser throws it). */
function folder(files: Record<string, string>): ExportFolder & { names: () => string[] } {
  const map = new Map(Object.entries(files));
  const missing = (name: string) => new DOMException(`${name} not found`, 'NotFoundError');
  return {
    names: () => [...map.keys()].sort(),
    async getFileHandle(name) {
      if (!map.has(name)) throw missing(name);
      return { getFile: async () => new Blob([map.get(name)!]) };
    },
    async removeEntry(name) {
      if (!map.delete(name)) throw missing(name);
    },
  };
}

describe('the unfinished-export note', () => {
  it('the folder export keeps it up to date: each file as it opens, then as written', async () => {
    const mem = memorySinks();
    const written: string[] = [];
    const notes: string[] = [];
    const sinks = recordingSinks(mem.open, written, async (writing) => void notes.push(exportNoteText(written, writing)));
    await writeFileTo(sinks, 'config.json', new Uint8Array([1]));
    const s = await sinks('model-00001-of-00002.safetensors');
    await s.write(new Uint8Array([2]));
    // The tab closes here: the last note names the finished file and the one being written.
    expect(parseExportNote(notes[notes.length - 1]!)).toEqual({ written: ['config.json'], writing: 'model-00001-of-00002.safetensors' });
    await s.close();
    expect(parseExportNote(notes[notes.length - 1]!)).toEqual({ written: ['config.json', 'model-00001-of-00002.safetensors'], writing: null });
    expect(notes[0]).toMatch(/did not finish/);
  });

  it('a note edited by hand cannot name anything outside the folder', () => {
    const text = `${exportNoteText(['a.json'], 'b.safetensors')}written: ../up.txt\nwritten: sub/x\nwriting: ..\nsomething else\n`;
    expect(parseExportNote(text)).toEqual({ written: ['a.json'], writing: 'b.safetensors' });
  });

  it('removes exactly the files the export wrote (and its swap file), then the note; the user’s files stay', async () => {
    const dir = folder({
      [INCOMPLETE_EXPORT_NOTE]: exportNoteText(['config.json', 'model-00001-of-00002.safetensors'], 'model-00002-of-00002.safetensors'),
      'config.json': '{}',
      'model-00001-of-00002.safetensors': 'x',
      'model-00002-of-00002.safetensors.crswap': 'partial',
      'my-notes.txt': 'mine',
    });
    expect(await removeExportLeftovers(dir)).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors.crswap']);
    expect(dir.names()).toEqual(['my-notes.txt']);
    // Again (or a folder whose export finished): no note, nothing to do.
    expect(await removeExportLeftovers(dir)).toBeNull();
    expect(dir.names()).toEqual(['my-notes.txt']);
  });

  it('the page remembers a folder export while it runs', async () => {
    const pending = new PendingExports<{ name: string }>(memoryKeyValue());
    expect(await pending.get()).toBeUndefined();
    await pending.begin({ name: 'merged' }, 'merged', new Date('2026-11-23T10:00:00Z'));
    expect(await pending.get()).toEqual({ folder: { name: 'merged' }, folderName: 'merged', startedAt: '2026-11-23T10:00:00.000Z' });
    await pending.end();
    expect(await pending.get()).toBeUndefined();
  });
});
