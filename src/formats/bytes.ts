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

/**
 * A file behind a URL, read with HTTP Range requests (a Hub checkpoint streamed tensor by tensor without
 * downloading it whole). `size` comes from the caller (the Hub's file listing) or a HEAD request.
 */
export async function urlSource(url: string, opts: { size?: number; fetch?: typeof fetch; headers?: Record<string, string> } = {}): Promise<ByteSource> {
  const get = opts.fetch ?? fetch;
  let size = opts.size;
  if (size === undefined) {
    const head = await get(url, { method: 'HEAD', headers: opts.headers });
    if (!head.ok) throw new Error(`${url}: HTTP ${head.status} ${head.statusText}`);
    size = Number(head.headers.get('content-length'));
    if (!Number.isSafeInteger(size) || size < 0) throw new Error(`${url}: the server did not say how large the file is`);
  }
  const total = size;
  return {
    name: url,
    size: total,
    async read(offset, length) {
      if (offset < 0 || offset + length > total) throw new RangeError(`${url}: read of ${length} bytes at ${offset} is past the end (${total} bytes)`);
      if (length === 0) return new Uint8Array(0);
      const res = await get(url, { headers: { ...opts.headers, Range: `bytes=${offset}-${offset + length - 1}` } });
      if (res.status !== 206 && !(res.status === 200 && offset === 0 && length === total)) {
        throw new Error(`${url}: expected a partial response for bytes ${offset}-${offset + length - 1}, got HTTP ${res.status}`);
      }
      const bytes = new Uint8Array(await res.arrayBuffer());
      if (bytes.byteLength !== length) throw new Error(`${url}: asked for ${length} bytes at ${offset}, received ${bytes.byteLength} (connection cut?)`);
      return bytes;
    },
  };
}
