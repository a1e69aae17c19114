/**
 * Where exports go: a `SinkFactory` opens one output file by name and returns a `WritableSink` that takes
 * its bytes in order. Exports never hold more than one tensor in memory, so the sink decides where the
 * bytes live: OPFS in the browser (then offered as downloads), a folder in Node (node.ts), or memory in tests.
 */
export interface WritableSink {
  write(chunk: Uint8Array): Promise<void>;
  /** Completes the file. */
  close(): Promise<void>;
  /** Drops a partly written file. */
  abort(reason?: unknown): Promise<void>;
}

export type SinkFactory = (fileName: string) => Promise<WritableSink>;

/** Files collected in memory (tests, small exports). */
export function memorySinks(): { open: SinkFactory; files: Map<string, Uint8Array> } {
  const files = new Map<string, Uint8Array>();
  const open: SinkFactory = async (name) => {
    const parts: Uint8Array[] = [];
    return {
      async write(chunk) {
        parts.push(chunk.slice());
      },
      async close() {
        const n = parts.reduce((a, p) => a + p.length, 0);
        const out = new Uint8Array(n);
        let at = 0;
        for (const p of parts) {
          out.set(p, at);
          at += p.length;
        }
        files.set(name, out);
      },
      async abort() {
        parts.length = 0;
      },
    };
  };
  return { open, files };
}

/**
 * Files in an OPFS directory (navigator.storage.getDirectory() or a sub-folder of it). createWritable()
 * writes to a swap file that replaces the real one only on close(), so an interrupted export leaves no
 * half-written file under the final name.
 */
export function opfsSinks(dir: FileSystemDirectoryHandle): SinkFactory {
  return async (name) => {
    const handle = await dir.getFileHandle(name, { create: true });
    const w = await handle.createWritable({ keepExistingData: false });
    return {
      async write(chunk) {
        await w.write(chunk as Uint8Array<ArrayBuffer>);
      },
      async close() {
        await w.close();
      },
      async abort(reason) {
        await w.abort(reason);
      },
    };
  };
}

/**
 * The same sinks, appending each file's name to `written` once it is complete (to undo a failed export).
 * `onChange` is awaited as a file opens (with its name) and once it is complete (with null): the folder
 * export keeps its note of what it wrote with it (export-note.ts).
 */
export function recordingSinks(open: SinkFactory, written: string[], onChange?: (writing: string | null) => Promise<void>): SinkFactory {
  return async (name) => {
    await onChange?.(name);
    const sink = await open(name);
    return {
      write: (chunk) => sink.write(chunk),
      async close() {
        await sink.close();
        written.push(name);
        await onChange?.(null);
      },
      abort: (reason) => sink.abort(reason),
    };
  };
}

/** Writes a whole file through a sink factory. */
export async function writeFileTo(open: SinkFactory, name: string, data: Uint8Array): Promise<void> {
  const s = await open(name);
  try {
    await s.write(data);
  } catch (e) {
    await s.abort(e).catch(() => {});
    throw e;
  }
  await s.close();
}
