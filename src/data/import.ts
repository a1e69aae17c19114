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

/** Incremental JSON-lines parser: feed text chunks, collect records and rejects with line numbers. */
export class JsonlParser {
  readonly records: RawRecord[] = [];
  readonly rejected: RejectedRow[] = [];
  private rest = '';
  private line = 0;
  constructor(private readonly file: string) {}

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

  finish(): ParseResult {
    if (this.rest.length) this.handle(this.rest);
    this.rest = '';
    return { records: this.records, rejected: this.rejected };
  }

  private handle(raw: string): void {
    this.line++;
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    const source: SourceRef = { file: this.file, line: this.line };
    try {
      this.records.push({ value: JSON.parse(line) as unknown, source });
    } catch (err) {
      this.rejected.push(reject(source, 'parse', `invalid JSON: ${(err as Error).message}`));
    }
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
  return { records, rejected: [] };
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
  const decoder = new TextDecoder('utf-8');
  const jsonl = format === 'jsonl' ? new JsonlParser(file) : null;
  const parts: string[] = [];
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  let lastReport = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes += value.byteLength;
    if (format === 'xlsx') chunks.push(value);
    else {
      const s = decoder.decode(value, { stream: true });
      if (jsonl) jsonl.push(s);
      else parts.push(s);
    }
    const now = Date.now();
    if (onProgress && now - lastReport > 100) {
      lastReport = now;
      onProgress({ status: 'reading', file, bytes, totalBytes, records: jsonl ? jsonl.records.length : 0 });
    }
  }
  let result: ParseResult;
  if (format === 'xlsx') {
    const buf = new Uint8Array(bytes);
    let at = 0;
    for (const c of chunks) {
      buf.set(c, at);
      at += c.byteLength;
    }
    result = await parseXlsx(buf.buffer, file);
  } else if (jsonl) {
    jsonl.push(decoder.decode());
    result = jsonl.finish();
  } else {
    parts.push(decoder.decode());
    let text = parts.join('');
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    result = parseTextByFormat(text, file, format as Exclude<FileFormat, 'xlsx'>);
  }
  onProgress?.({ status: 'done', file, bytes, totalBytes, records: result.records.length, rejected: result.rejected.length });
  return result;
}
