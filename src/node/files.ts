import { open, stat } from 'node:fs/promises';
import type { ByteSource } from '../formats/bytes.ts';

/** A file on disk as a ByteSource: reads only the ranges asked for. */
export async function fileSource(path: string): Promise<ByteSource> {
  const { size } = await stat(path);
  return {
    name: path,
    size,
    async read(offset, length) {
      if (offset < 0 || offset + length > size) throw new RangeError(`${path}: read of ${length} bytes at ${offset} is past the end (${size} bytes)`);
      const fh = await open(path, 'r');
      try {
        const buf = new Uint8Array(length);
        let done = 0;
        while (done < length) {
          const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
          if (bytesRead === 0) throw new RangeError(`${path}: file shrank while reading`);
          done += bytesRead;
        }
        return buf;
      } finally {
        await fh.close();
      }
    },
  };
}
