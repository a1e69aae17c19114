/**
 * File import: JSON, JSONL, CSV/TSV, xlsx and plain text into records with their origin. Never throws for
 * a bad row: each one becomes a rejected-row entry naming the file and line/row. JSONL streams (chunks
 * in, records out) so a large file is parsed with progress and without one giant string.
 */
import Papa from 'papaparse';
import readXlsxFile from 'read-excel-file/universal';
import type { RawRecord, RejectedRow, SourceRef } from './types.ts';
import { reject } from './types.ts';

export type FileFormat = 'json' | 'jsonl' | 'csv' | 'tsv' | 'xlsx' | 'text';
export const FILE_FORMATS: readonly FileFormat[] = ['json', 'jsonl', 'csv', 'tsv', 'xlsx', 'text'];

export interface ParseResult {
  records: RawRecord[];
  rejected: RejectedRow[];
}

export type ParseProgress =
  | { status: 'reading'; file: string; bytes: number; totalBytes: number; records: number }
  | { status: 'done'; file: string; bytes: number; totalBytes: number; records: number; rejected: number };

/** Format from the file name, else from the first characters. */
export function detectFormat(fileName: string, head = ''): FileFormat {
  const ext = /\.([a-z0-9]+)$/i.exec(fileName)?.[1]?.toLowerCase();
  switch (ext) {
    case 'jsonl':
    case 'ndjson':
      return 'jsonl';
    case 'json': {
      // Many ".json" datasets are really JSON lines.
      const t = head.trimStart();
      if (t.startsWith('{')) {
        const firstLine = t.split('\n', 1)[0]!.trim();
        try {
          JSON.parse(firstLine);
          if (t.slice(firstLine.length).trim().startsWith('{')) return 'jsonl';
        } catch {
          /* a multi-line JSON object */
        }
      }
      return 'json';
    }
    case 'csv':
      return 'csv';
    case 'tsv':
    case 'tab':
      return 'tsv';
    case 'xlsx':
      return 'xlsx';
    case 'txt':
    case 'md':
    case 'markdown':
    case 'text':
      return 'text';
  }
  const t = head.trimStart();
  if (t.startsWith('[')) return 'json';
  if (t.startsWith('{')) return 'jsonl';
  if (head.startsWith('PK')) return 'xlsx';
  throw new Error(`${fileName}: cannot tell the format from the name; choose one of ${FILE_FORMATS.join(', ')}`);
}

/** Limits on hostile files: one line (JSONL) and the nesting depth of one record. */
export interface ImportLimits {
  /** Bytes in one JSONL line; a longer line is rejected (and skipped without being held in memory). */
  maxLineBytes: number;
  /** Nesting depth of arrays/objects in one record (real chat data is 3–5 deep). */
  maxDepth: number;
}

export const DEFAULT_IMPORT_LIMITS: ImportLimits = { maxLineBytes: 64 * 2 ** 20, maxDepth: 64 };

/** Depth of nested arrays/objects, counted without recursion (so a hostile value cannot overflow the stack). */
export function nestingDepth(value: unknown, stopAt = Infinity): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (d > deepest) deepest = d;
    if (deepest > stopAt) return deepest;
    for (const x of Array.isArray(v) ? v : Object.values(v as Record<string, unknown>)) if (x !== null && typeof x === 'object') stack.push([x, d + 1]);
  }
  return deepest;
}

function tooDeep(value: unknown, limits: ImportLimits): string | null {
  return nestingDepth(value, limits.maxDepth) > limits.maxDepth ? `nested more than ${limits.maxDepth} levels deep` : null;
}

const NEWLINE = 10;

/**
 * Incremental JSON-lines parser: feed text (push) or bytes (pushBytes: each line decoded as strict UTF-8,
 * so a bad byte rejects its line by number), collect records and rejects with line numbers.
 */
export class JsonlParser {
  readonly records: RawRecord[] = [];
  readonly rejected: RejectedRow[] = [];
  private rest = '';
  private line = 0;
  /** Bytes of the current, unfinished line (pushBytes), and their total; null while skipping an over-long line. */
  private pending: Uint8Array[] | null = [];
  private pendingBytes = 0;
  private readonly utf8 = new TextDecoder('utf-8', { fatal: true });
  constructor(
    private readonly file: string,
    private readonly limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
  ) {}

  push(chunk: string): void {
    const text = this.rest + chunk;
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      this.handle(text.slice(start, nl));
      start = nl + 1;
    }
    this.rest = text.slice(start);
  }

  /** Raw file bytes, in any chunking (a newline byte never occurs inside a UTF-8 multi-byte character). */
  pushBytes(chunk: Uint8Array): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, start);
      this.take(chunk.subarray(start, nl < 0 ? chunk.length : nl));
      if (nl < 0) break;
      this.endLine();
      start = nl + 1;
    }
  }

  private take(part: Uint8Array): void {
    if (part.length === 0) return;
    this.pendingBytes += part.length;
    if (this.pending && this.pendingBytes > this.limits.maxLineBytes) this.pending = null; // stop holding it
    this.pending?.push(part.slice());
  }

  private endLine(): void {
    const parts = this.pending;
    const bytes = this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    if (parts === null) {
      this.line++;
      this.rejected.push(reject({ file: this.file, line: this.line }, 'parse', `line is ${bytes.toLocaleString('en')} bytes long (the limit is ${this.limits.maxLineBytes.toLocaleString('en')}); split the record or check that the file is really JSON lines`));
      return;
    }
    const joined = parts.length === 1 ? parts[0]! : new Uint8Array(bytes);
    if (parts.length > 1) {
      let at = 0;
      for (const p of parts) {
        joined.set(p, at);
        at += p.length;
      }
    }
    let text: string;
    try {
      text = this.utf8.decode(joined);
    } catch {
      this.line++;
      const at = firstInvalidUtf8(joined);
      this.rejected.push(reject({ file: this.file, line: this.line }, 'parse', `not valid UTF-8 text (bad byte 0x${joined[at]?.toString(16).padStart(2, '0') ?? '??'} at byte ${at + 1} of the line); save the file as UTF-8`));
      return;
    }
    if (this.line === 0 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    this.handle(text);
  }

  finish(): ParseResult {
    if (this.pendingBytes > 0 || this.pending === null) this.endLine();
    if (this.rest.length) this.handle(this.rest);
    this.rest = '';
    return { records: this.records, rejected: this.rejected };
  }

  private handle(raw: string): void {
    this.line++;
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    const source: SourceRef = { file: this.file, line: this.line };
    if (line.length > this.limits.maxLineBytes) {
      this.rejected.push(reject(source, 'parse', `line is ${line.length.toLocaleString('en')} characters long (the limit is ${this.limits.maxLineBytes.toLocaleString('en')})`));
      return;
    }
    let value: unknown;
    try {
      value = JSON.parse(line) as unknown;
    } catch (err) {
      this.rejected.push(reject(source, 'parse', `invalid JSON: ${(err as Error).message}`));
      return;
    }
    const deep = tooDeep(value, this.limits);
    if (deep) this.rejected.push(reject(source, 'parse', deep));
    else this.records.push({ value, source });
  }
}

/** Index of the first byte where strict UTF-8 decoding fails (bytes.length if none). */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i]!;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    if (n === 0 || i + n > bytes.length) return i;
    if (n > 1) {
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(i, i + n));
      } catch {
        return i;
      }
    }
    i += n;
  }
  return bytes.length;
}

/** Strict UTF-8 decoding of a whole file; a bad byte is an error naming its line. */
export function decodeUtf8(bytes: Uint8Array, file: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    const at = firstInvalidUtf8(bytes);
    let line = 1;
    for (let i = 0; i < at; i++) if (bytes[i] === NEWLINE) line++;
    throw new Error(`${file} line ${line}: not valid UTF-8 text (bad byte 0x${bytes[at]?.toString(16).padStart(2, '0') ?? '??'}); save the file as UTF-8`);
  }
}

function lineOfOffset(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/**
 * A JSON array that does not parse: split its top-level elements with a string-aware bracket scanner and
 * parse each alone, so one broken element is one rejected entry (with its line) and the rest survive.
 */
function salvageArray(text: string, file: string): ParseResult {
  const records: RawRecord[] = [];
  const rejected: RejectedRow[] = [];
  let depth = 0;
  let inString = false;
  let line = 1;
  let start = -1;
  let startLine = 1;
  let index = 0;
  const flush = (end: number) => {
    const src = text.slice(start, end);
    if (src.trim() !== '') {
      const source: SourceRef = { file, line: startLine, item: `[${index}]` };
      try {
        records.push({ value: JSON.parse(src) as unknown, source });
      } catch (err) {
        rejected.push(reject(source, 'parse', `invalid JSON: ${(err as Error).message.split('\n')[0]}`));
      }
      index++;
    }
    start = -1;
  };
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\n') line++;
    if (inString) {
      if (ch === '\\') i++;
      else if (ch === '"') inString = false;
      continue;
    }
    if (depth === 1 && start < 0 && !/\s|,|\]/.test(ch)) {
      start = i;
      startLine = line;
    }
    if (ch === '"') inString = true;
    else if (ch === '[' || ch === '{') depth++;
    else if (ch === ']' || ch === '}') {
      depth--;
      if (depth === 0) {
        if (start >= 0) flush(i);
        break;
      }
    } else if (ch === ',' && depth === 1 && start >= 0) flush(i);
  }
  if (start >= 0) flush(text.length);
  if (depth !== 0) rejected.push(reject({ file, line }, 'parse', 'invalid JSON: the top-level array is not closed'));
  return { records, rejected };
}

export function parseJson(text: string, file: string): ParseResult {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    if (text.trimStart().startsWith('[')) return salvageArray(text, file);
    const msg = (err as Error).message.split('\n')[0]!;
    const pos = /position (\d+)/.exec(msg);
    const source: SourceRef = pos ? { file, line: lineOfOffset(text, Number(pos[1])) } : { file };
    return { records: [], rejected: [reject(source, 'parse', `invalid JSON: ${msg}`)] };
  }
  const records: RawRecord[] = [];
  if (Array.isArray(data)) {
    data.forEach((v, i) => records.push({ value: v, source: { file, item: `[${i}]` } }));
  } else if (data && typeof data === 'object') {
    const entries = Object.entries(data as Record<string, unknown>);
    const arrays = entries.filter(([, v]) => Array.isArray(v)) as [string, unknown[]][];
    const objectArrays = arrays.filter(([, v]) => v.length > 0 && v.every((x) => x !== null && typeof x === 'object' && !Array.isArray(x)));
    if (objectArrays.length > 0 && objectArrays.length === arrays.length && arrays.length === entries.length) {
      // {"train": [...], "test": [...]}: every split, in order.
      for (const [k, v] of objectArrays) v.forEach((x, i) => records.push({ value: x, source: { file, item: `${k}[${i}]` } }));
    } else if (arrays.length === entries.length && arrays.length > 0 && new Set(arrays.map(([, v]) => v.length)).size === 1) {
      // Column-oriented {"question": [...], "answer": [...]}.
      const n = arrays[0]![1].length;
      for (let i = 0; i < n; i++) {
        const row: Record<string, unknown> = {};
        for (const [k, v] of arrays) row[k] = v[i];
        records.push({ value: row, source: { file, item: `[${i}]` } });
      }
    } else {
      records.push({ value: data, source: { file, item: '(root)' } });
    }
  } else {
    return { records: [], rejected: [reject({ file }, 'parse', 'JSON file holds neither an array nor an object')] };
  }
  // One record nested absurdly deep is rejected alone; the rest survive.
  const kept: RawRecord[] = [];
  const rejected: RejectedRow[] = [];
  for (const r of records) {
    const deep = tooDeep(r.value, DEFAULT_IMPORT_LIMITS);
    if (deep) rejected.push(reject(r.source, 'parse', deep));
    else kept.push(r);
  }
  return { records: kept, rejected };
}

export function parseDelimited(text: string, file: string, delimiter: ',' | '\t' | ''): ParseResult {
  const res = Papa.parse<Record<string, unknown>>(text, { header: true, skipEmptyLines: 'greedy', delimiter, dynamicTyping: false });
  const rejected: RejectedRow[] = [];
  const bad = new Map<number, string>();
  for (const e of res.errors) {
    if (e.type === 'Delimiter') continue; // "could not detect the delimiter, used ','": not a row error
    if (e.row === undefined || e.row === null) rejected.push(reject({ file }, 'parse', `${e.code}: ${e.message}`));
    else bad.set(e.row, `${e.code}: ${e.message}`);
  }
  const records: RawRecord[] = [];
  res.data.forEach((value, i) => {
    const source: SourceRef = { file, row: i + 2 };
    const err = bad.get(i);
    if (err !== undefined) rejected.push(reject(source, 'parse', err));
    else records.push({ value, source });
  });
  return { records, rejected };
}

/** One text document per file (continued pretraining). */
export function parseText(text: string, file: string): ParseResult {
  if (text.trim() === '') return { records: [], rejected: [reject({ file }, 'parse', 'empty text file')] };
  return { records: [{ value: text, source: { file, line: 1 } }], rejected: [] };
}

export function parseTextByFormat(text: string, file: string, format: Exclude<FileFormat, 'xlsx'>): ParseResult {
  switch (format) {
    case 'json':
      return parseJson(text, file);
    case 'jsonl': {
      const p = new JsonlParser(file);
      p.push(text);
      return p.finish();
    }
    case 'csv':
      return parseDelimited(text, file, '');
    case 'tsv':
      return parseDelimited(text, file, '\t');
    case 'text':
      return parseText(text, file);
  }
}

function cellValue(v: unknown): unknown {
  if (v instanceof Date) return v.toISOString();
  return v;
}

/** Excel .xlsx: the first sheet (or the named one); the first row holds the column titles. */
export async function parseXlsx(data: ArrayBuffer, file: string, sheetName?: string): Promise<ParseResult> {
  let sheets: { sheet: string; data: unknown[][] }[];
  try {
    sheets = (await readXlsxFile(data)) as unknown as { sheet: string; data: unknown[][] }[];
  } catch (err) {
    return { records: [], rejected: [reject({ file }, 'parse', `not a readable .xlsx file: ${(err as Error).message}`)] };
  }
  const sheet = sheetName === undefined ? sheets.find((s) => s.data.length > 0) ?? sheets[0] : sheets.find((s) => s.sheet === sheetName);
  if (!sheet) {
    const why = sheetName === undefined ? 'no sheets' : `no sheet named '${sheetName}' (has ${sheets.map((s) => s.sheet).join(', ')})`;
    return { records: [], rejected: [reject({ file }, 'parse', why)] };
  }
  const [header, ...rows] = sheet.data;
  if (!header) return { records: [], rejected: [reject({ file, sheet: sheet.sheet }, 'parse', 'empty sheet')] };
  const titles = header.map((h, i) => (h === null || h === undefined || String(h).trim() === '' ? `column ${i + 1}` : String(h).trim()));
  const records: RawRecord[] = [];
  rows.forEach((r, i) => {
    if (r.every((c) => c === null || c === undefined || c === '')) return;
    const value: Record<string, unknown> = {};
    titles.forEach((t, k) => {
      const c = r[k];
      if (c !== null && c !== undefined) value[t] = cellValue(c);
    });
    records.push({ value, source: { file, sheet: sheet.sheet, row: i + 2 } });
  });
  return { records, rejected: [] };
}

/**
 * Parses a byte stream (a browser File's `stream()` or a Node read stream wrapped as one) with progress.
 * JSONL is parsed as it arrives; other text formats are parsed once read; xlsx is read whole.
 */
export async function parseStream(
  stream: ReadableStream<Uint8Array>,
  file: string,
  format: FileFormat,
  totalBytes: number,
  onProgress?: (p: ParseProgress) => void,
): Promise<ParseResult> {
  const reader = stream.getReader();
  const jsonl = format === 'jsonl' ? new JsonlParser(file) : null;
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  let lastReport = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes += value.byteLength;
    if (jsonl) jsonl.pushBytes(value);
    else chunks.push(value);
    const now = Date.now();
    if (onProgress && now - lastReport > 100) {
      lastReport = now;
      onProgress({ status: 'reading', file, bytes, totalBytes, records: jsonl ? jsonl.records.length : 0 });
    }
  }
  let result: ParseResult;
  const whole = () => {
    const buf = new Uint8Array(bytes);
    let at = 0;
    for (const c of chunks) {
      buf.set(c, at);
      at += c.byteLength;
    }
    return buf;
  };
  if (format === 'xlsx') {
    result = await parseXlsx(whole().buffer, file);
  } else if (jsonl) {
    result = jsonl.finish();
  } else {
    let text = decodeUtf8(whole(), file);
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    result = parseTextByFormat(text, file, format as Exclude<FileFormat, 'xlsx'>);
  }
  onProgress?.({ status: 'done', file, bytes, totalBytes, records: result.records.length, rejected: result.rejected.length });
  return result;
}
