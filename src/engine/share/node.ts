/** Node implementations of the share layer's storage: a folder as a BlobStore and as export sinks (CLI, tests). */
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import type { BlobInfo, BlobStore } from './checkpoint.ts';
import type { SinkFactory } from './sinks.ts';

export class NodeDirBlobStore implements BlobStore {
  constructor(readonly dir: string) {}
  private path(name: string) {
    if (name.split('/').some((p) => p === '..' || p === '')) throw new Error(`bad blob name '${name}'`);
    return join(this.dir, ...name.split('/'));
  }
  async put(name: string, data: Uint8Array) {
    const p = this.path(name);
    await mkdir(dirname(p), { recursive: true });
    const tmp = `${p}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
    await writeFile(tmp, data);
    await rename(tmp, p); // atomic on POSIX file systems
  }
  async get(name: string) {
    try {
      return new Uint8Array(await readFile(this.path(name)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }
  async list(prefix = '') {
    const out: BlobInfo[] = [];
    const walk = async (d: string) => {
      let entries;
      try {
        entries = await readdir(d, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const full = join(d, e.name);
        if (e.isDirectory()) await walk(full);
        else if (!e.name.includes('.tmp-')) {
          const name = relative(this.dir, full).split(sep).join('/');
          if (name.startsWith(prefix)) out.push({ name, size: (await stat(full)).size });
        }
      }
    };
    await walk(this.dir);
    return out;
  }
  async delete(name: string) {
    await rm(this.path(name), { force: true });
  }
}

/** Export sinks writing into a folder; a file appears under its name only once complete. */
export function nodeDirSinks(dir: string): SinkFactory {
  return async (name) => {
    await mkdir(dir, { recursive: true });
    const final = join(dir, name);
    const tmp = `${final}.partial`;
    const fh = await open(tmp, 'w');
    return {
      async write(chunk) {
        let done = 0;
        while (done < chunk.length) done += (await fh.write(chunk, done, chunk.length - done)).bytesWritten;
      },
      async close() {
        await fh.close();
        await rename(tmp, final);
      },
      async abort() {
        await fh.close().catch(() => {});
        await rm(tmp, { force: true });
      },
    };
  };
}
