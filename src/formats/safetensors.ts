/**
 * The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header mapping
 * tensor names to {dtype, shape, data_offsets}, then the raw tensor bytes. We read it strictly, because
 * these files come from strangers: every check below names the file and the tensor it failed on.
 */
import type { ByteSource } from './bytes.ts';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

export const SAFETENSORS_DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** Byte offsets relative to the start of the data section. */
  readonly begin: number;
  readonly end: number;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

/** 100 MB: far above any real header (a 7B model's is ~40 KB), far below what would exhaust memory. */
export const MAX_HEADER_BYTES = 100_000_000;

export class SafetensorsFile {
  private constructor(
    readonly source: ByteSource,
    readonly entries: ReadonlyMap<string, SafetensorsEntry>,
    readonly metadata: Readonly<Record<string, string>>,
    /** Absolute offset of the data section. */
    readonly dataOffset: number,
  ) {}

  static async open(source: ByteSource, maxHeaderBytes = MAX_HEADER_BYTES): Promise<SafetensorsFile> {
    const fail = (msg: string): never => {
      throw new SafetensorsError(`${source.name}: ${msg}`);
    };
    if (source.size < 8) fail(`file is ${source.size} bytes, too short for a safetensors header`);
    const lenBytes = await source.read(0, 8);
    const headerLen = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
    if (headerLen > maxHeaderBytes) fail(`header length ${headerLen} exceeds the ${maxHeaderBytes}-byte limit`);
    if (8 + headerLen > source.size) fail(`header length ${headerLen} runs past the end of the file (${source.size} bytes): truncated or not safetensors`);
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await source.read(8, headerLen)));
    } catch (e) {
      fail(`header is not valid UTF-8 JSON (${(e as Error).message})`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) fail('header is not a JSON object');
    const dataOffset = 8 + headerLen;
    const dataSize = source.size - dataOffset;
    const entries: SafetensorsEntry[] = [];
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('__metadata__ must be an object of strings');
        for (const [k, v] of Object.entries(raw as Record<string, unknown>)) if (typeof v !== 'string') fail(`__metadata__.${k} is not a string`);
        metadata = raw as Record<string, string>;
        continue;
      }
      const where = `tensor '${name}'`;
      if (typeof raw !== 'object' || raw === null) fail(`${where}: entry is not an object`);
      const { dtype, shape, data_offsets: offs } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof dtype !== 'string' || !(dtype in SAFETENSORS_DTYPE_BYTES)) fail(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) fail(`${where}: data_offsets ${JSON.stringify(offs)} must be two non-negative integers`);
      const [begin, end] = offs as [number, number];
      const numel = (shape as number[]).reduce((a, b) => a * b, 1);
      const expected = numel * SAFETENSORS_DTYPE_BYTES[dtype as SafetensorsDType];
      if (end < begin) fail(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
      if (end - begin !== expected) fail(`${where}: ${end - begin} bytes of data for shape [${(shape as number[]).join(', ')}] ${dtype}, which needs ${expected}`);
      entries.push({ name, dtype: dtype as SafetensorsDType, shape: shape as number[], begin, end });
    }
    entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
    let cursor = 0;
    for (const e of entries) {
      if (e.begin !== cursor) {
        fail(e.begin < cursor ? `tensor '${e.name}' overlaps the tensor before it (starts at ${e.begin}, previous ends at ${cursor})` : `gap before tensor '${e.name}' (starts at ${e.begin}, previous ends at ${cursor})`);
      }
      cursor = e.end;
    }
    if (cursor !== dataSize) {
      fail(cursor > dataSize ? `truncated: tensors need ${cursor} bytes of data but the file has ${dataSize}` : `${dataSize - cursor} bytes after the last tensor`);
    }
    return new SafetensorsFile(source, new Map(entries.map((e) => [e.name, e])), metadata, dataOffset);
  }

  get names(): string[] {
    return [...this.entries.keys()];
  }

  entry(name: string): SafetensorsEntry {
    const e = this.entries.get(name);
    if (!e) throw new SafetensorsError(`${this.source.name}: no tensor named '${name}'`);
    return e;
  }

  /** The raw bytes of one tensor, copied into their own 8-byte-aligned buffer so typed views are safe. */
  async bytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const view = await this.source.read(this.dataOffset + e.begin, e.end - e.begin);
    return view.byteOffset % 8 === 0 ? view : view.slice();
  }

  /** Throws naming the tensor when it holds NaN or ±∞ (a corrupted or diverged checkpoint). */
  async checkFinite(name: string): Promise<void> {
    const e = this.entry(name);
    const { count, first } = nonFiniteValues(await this.bytes(name), e.dtype);
    if (count > 0) throw new SafetensorsError(`${this.source.name}: tensor '${name}' holds ${count} values that are NaN or infinite (the first at index ${first}); the file is damaged or the model diverged`);
  }

  /** One tensor converted to float32 (from F32, F16, BF16, F64 or integer types). */
  async float32(name: string): Promise<Float32Array> {
    const e = this.entry(name);
    return toFloat32(await this.bytes(name), e.dtype, `${this.source.name}: tensor '${name}'`);
  }
}

const f16Table = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
})();

export function f16ToF32(bits: number): number {
  return f16Table[bits & 0xffff]!;
}

/** Converts raw little-endian tensor bytes to float32. */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDType, what = 'tensor'): Float32Array {
  const buf = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  const n = buf.byteLength / SAFETENSORS_DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
    case 'F16': {
      const src = new Uint16Array(buf.buffer, buf.byteOffset, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16Table[src[i]!]!;
      return out;
    }
    case 'BF16': {
      const src = new Uint16Array(buf.buffer, buf.byteOffset, n);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i]! << 16;
      return new Float32Array(out.buffer);
    }
    case 'F64':
      return Float32Array.from(new Float64Array(buf.buffer, buf.byteOffset, n));
    case 'I64':
      return Float32Array.from(new BigInt64Array(buf.buffer, buf.byteOffset, n), (v) => Number(v));
    case 'I32':
      return Float32Array.from(new Int32Array(buf.buffer, buf.byteOffset, n));
    case 'I8':
      return Float32Array.from(new Int8Array(buf.buffer, buf.byteOffset, n));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(buf);
    default:
      throw new SafetensorsError(`${what}: cannot convert ${dtype} to float32`);
  }
}

/** Integer tensors (token ids, labels) as Int32Array, from I64/I32/I16/I8/U8. */
export function toInt32(bytes: Uint8Array, dtype: SafetensorsDType, what = 'tensor'): Int32Array {
  const buf = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  const n = buf.byteLength / SAFETENSORS_DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'I64':
      return Int32Array.from(new BigInt64Array(buf.buffer, buf.byteOffset, n), (v) => Number(v));
    case 'I32':
      return new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
    case 'I16':
      return Int32Array.from(new Int16Array(buf.buffer, buf.byteOffset, n));
    case 'I8':
      return Int32Array.from(new Int8Array(buf.buffer, buf.byteOffset, n));
    case 'U8':
    case 'BOOL':
      return Int32Array.from(buf);
    default:
      throw new SafetensorsError(`${what}: ${dtype} is not an integer type`);
  }
}

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
  data: ArrayBufferView;
}

/** Header bytes for the given tensors, in order (the header is padded with spaces to 8 bytes, as the Rust library does). */
function headerFor(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): { header: Uint8Array; dataSize: number } {
  const obj: Record<string, unknown> = {};
  if (metadata) obj.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const need = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== need) throw new SafetensorsError(`writing '${t.name}': ${t.data.byteLength} bytes for shape [${t.shape.join(', ')}] ${t.dtype} (needs ${need})`);
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + need] };
    offset += need;
  }
  let json = JSON.stringify(obj);
  json += ' '.repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  return { header: new TextEncoder().encode(json), dataSize: offset };
}

/** Serialises tensors into one safetensors file in memory (adapters, test results). */
export function writeSafetensors(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const { header, dataSize } = headerFor(tensors, metadata);
  const out = new Uint8Array(8 + header.byteLength + dataSize);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.byteLength), true);
  out.set(header, 8);
  let at = 8 + header.byteLength;
  for (const t of tensors) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

/** NaN/±∞ in raw float tensor bytes (integer dtypes have none): how many, and the first index (−1 if none). */
export function nonFiniteValues(bytes: Uint8Array, dtype: SafetensorsDType): { count: number; first: number } {
  const buf = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  let count = 0;
  let first = -1;
  const scan = (n: number, bad: (i: number) => boolean) => {
    for (let i = 0; i < n; i++) {
      if (bad(i)) {
        if (first < 0) first = i;
        count++;
      }
    }
  };
  switch (dtype) {
    case 'F32': {
      const u = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >> 2);
      scan(u.length, (i) => (u[i]! & 0x7f800000) === 0x7f800000);
      break;
    }
    case 'F16': {
      const u = new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength >> 1);
      scan(u.length, (i) => (u[i]! & 0x7c00) === 0x7c00);
      break;
    }
    case 'BF16': {
      const u = new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength >> 1);
      scan(u.length, (i) => (u[i]! & 0x7f80) === 0x7f80);
      break;
    }
    case 'F64': {
      const f = new Float64Array(buf.buffer, buf.byteOffset, buf.byteLength >> 3);
      scan(f.length, (i) => !Number.isFinite(f[i]!));
      break;
    }
    default:
      break;
  }
  return { count, first };
}
