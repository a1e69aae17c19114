/**
 * Random-access bytes from anywhere a model or dataset can come from: a File/Blob (drag and drop, OPFS
 * getFile()), memory, or (in Node) a file on disk. Readers never need the whole file in memory.
 */
export interface ByteSource {
  /** For messages: the file name or URL. */
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
}

export function bytesSource(bytes: Uint8Array, name = 'buffer'): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    async read(offset, length) {
      if (offset < 0 || offset + length > bytes.byteLength) throw new RangeError(`${name}: read of ${length} bytes at ${offset} is past the end (${bytes.byteLength} bytes)`);
      return bytes.subarray(offset, offset + length);
    },
  };
}

export function blobSource(blob: Blob, name = (blob as File).name ?? 'blob'): ByteSource {
  return {
    name,
    size: blob.size,
    async read(offset, length) {
      if (offset < 0 || offset + length > blob.size) throw new RangeError(`${name}: read of ${length} bytes at ${offset} is past the end (${blob.size} bytes)`);
      return new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer());
    },
  };
}
