/**
 * Zip archives for adapter downloads and uploads. Writing uses fflate. Reading is our own walk over the
 * central directory, because uploads come from strangers: every declared size, the entry count and the
 * total are checked against caps *before* anything is inflated, and inflation itself is counted chunk by
 * chunk and stopped the moment an entry produces more than it declared (a zip bomb can lie in its headers).
 */
import { Inflate, zipSync, type Zippable } from 'fflate';
import type { ByteSource } from '../../formats/bytes.ts';

export class ZipError extends Error {
  override name = 'ZipError';
}

export interface ZipLimits {
  /** Most entries accepted (default 256). */
  maxEntries: number;
  /** Largest uncompressed entry (default 4 GiB). */
  maxEntryBytes: number;
  /** Largest uncompressed total (default 8 GiB). */
  maxTotalBytes: number;
}

export const DEFAULT_ZIP_LIMITS: ZipLimits = { maxEntries: 256, maxEntryBytes: 4 * 2 ** 30, maxTotalBytes: 8 * 2 ** 30 };

export interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly crc: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localOffset: number;
}

/** Writes files into a zip; names ending in .safetensors (incompressible floats) are stored, the rest deflated. */
export function writeZip(files: ReadonlyMap<string, Uint8Array>): Uint8Array {
  const z: Zippable = {};
  for (const [name, data] of files) z[name] = [data, { level: name.endsWith('.safetensors') || name.endsWith('.gguf') ? 0 : 6 }];
  // A fixed timestamp makes the archive a pure function of its contents.
  return zipSync(z, { mtime: new Date(Date.UTC(2020, 0, 1)) });
}

const fmt = (n: number) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${n} bytes`);

/** Lists a zip's entries from its central directory, checking declared sizes against the caps. */
export async function listZip(src: ByteSource, limits: ZipLimits = DEFAULT_ZIP_LIMITS): Promise<ZipEntry[]> {
  const fail = (msg: string): never => {
    throw new ZipError(`${src.name}: ${msg}`);
  };
  if (src.size < 22) fail('too short to be a zip archive');
  const tailLen = Math.min(src.size, 22 + 65535);
  const tail = await src.read(src.size - tailLen, tailLen);
  const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) fail('no end-of-central-directory record: not a zip archive, or truncated');
  const count = tv.getUint16(eocd + 10, true);
  const cdSize = tv.getUint32(eocd + 12, true);
  const cdOffset = tv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) fail('ZIP64 archives are not supported (adapters are far below 4 GiB)');
  if (count > limits.maxEntries) fail(`${count} entries; at most ${limits.maxEntries} are accepted`);
  if (cdOffset + cdSize > src.size) fail('central directory runs past the end of the file: truncated');
  const cd = await src.read(cdOffset, cdSize);
  const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const entries: ZipEntry[] = [];
  let at = 0;
  let total = 0;
  for (let i = 0; i < count; i++) {
    if (at + 46 > cd.length || dv.getUint32(at, true) !== 0x02014b50) fail(`central directory entry ${i} is damaged`);
    const flags = dv.getUint16(at + 8, true);
    const method = dv.getUint16(at + 10, true);
    const crc = dv.getUint32(at + 16, true);
    const compressedSize = dv.getUint32(at + 20, true);
    const size = dv.getUint32(at + 24, true);
    const nameLen = dv.getUint16(at + 28, true);
    const extraLen = dv.getUint16(at + 30, true);
    const commentLen = dv.getUint16(at + 32, true);
    const localOffset = dv.getUint32(at + 42, true);
    const name = new TextDecoder().decode(cd.subarray(at + 46, at + 46 + nameLen));
    at += 46 + nameLen + extraLen + commentLen;
    if (flags & 1) fail(`'${name}' is encrypted`);
    if (compressedSize === 0xffffffff || size === 0xffffffff || localOffset === 0xffffffff) fail(`'${name}': ZIP64 entries are not supported`);
    if (method !== 0 && method !== 8) fail(`'${name}' uses compression method ${method}; only stored (0) and deflate (8) are supported`);
    if (size > limits.maxEntryBytes) fail(`'${name}' declares ${fmt(size)} uncompressed, over the ${fmt(limits.maxEntryBytes)} cap per file`);
    total += size;
    if (total > limits.maxTotalBytes) fail(`the entries declare more than ${fmt(limits.maxTotalBytes)} uncompressed in all (cap); refusing to inflate`);
    if (name.endsWith('/')) continue; // directory
    entries.push({ name, method, crc, compressedSize, size, localOffset });
  }
  return entries;
}

/** Inflates one entry; stops as soon as it produces more than it declared; checks the CRC. */
export async function readZipEntry(src: ByteSource, e: ZipEntry): Promise<Uint8Array> {
  const fail = (msg: string): never => {
    throw new ZipError(`${src.name}: '${e.name}': ${msg}`);
  };
  if (e.localOffset + 30 > src.size) fail('local header lies past the end of the archive: truncated or damaged');
  const lh = await src.read(e.localOffset, 30);
  const lv = new DataView(lh.buffer, lh.byteOffset, 30);
  if (lv.getUint32(0, true) !== 0x04034b50) fail('local header is damaged');
  const dataAt = e.localOffset + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
  if (dataAt + e.compressedSize > src.size) fail('compressed data runs past the end of the archive: truncated');
  const packed = await src.read(dataAt, e.compressedSize);
  let out: Uint8Array;
  if (e.method === 0) {
    if (e.compressedSize !== e.size) fail(`stored entry has ${e.compressedSize} bytes but declares ${e.size}`);
    out = packed.slice();
  } else {
    out = new Uint8Array(e.size);
    let filled = 0;
    let ended = false;
    const inf = new Inflate((chunk, final) => {
      if (filled + chunk.length > e.size) fail(`inflates to more than the ${e.size} bytes it declares (a zip bomb?); stopped`);
      out.set(chunk, filled);
      filled += chunk.length;
      if (final) ended = true;
    });
    // Feed in slices so a lying entry is stopped after at most one slice of output past its declaration.
    const step = 1 << 16;
    try {
      for (let i = 0; i < packed.length; i += step) inf.push(packed.subarray(i, Math.min(packed.length, i + step)), i + step >= packed.length);
      if (packed.length === 0) inf.push(new Uint8Array(0), true);
    } catch (err) {
      if (err instanceof ZipError) throw err;
      fail(`the compressed data is damaged (${(err as Error).message})`);
    }
    if (!ended || filled !== e.size) fail(`inflated to ${filled} bytes, but declares ${e.size}: damaged`);
  }
  if (crc32(out) !== e.crc) fail('CRC mismatch: the archive is damaged');
  return out;
}

/** Every file of a zip (directories skipped), with the caps applied. */
export async function readZip(src: ByteSource, limits: ZipLimits = DEFAULT_ZIP_LIMITS): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const e of await listZip(src, limits)) out.set(e.name, await readZipEntry(src, e));
  return out;
}

let crcTable: Uint32Array | null = null;

export function crc32(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
