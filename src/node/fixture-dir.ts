import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { fileSource } from './files.ts';
import type { ReferenceRunOptions } from '../engine/reference-run.ts';

/** File access for a model / fixture directory on disk. */
export function directoryAccess(dir: string): Pick<ReferenceRunOptions, 'open' | 'exists'> {
  return {
    open: (name) => fileSource(join(dir, name)),
    exists: async (name) => {
      try {
        await access(join(dir, name));
        return true;
      } catch {
        return false;
      }
    },
  };
}
