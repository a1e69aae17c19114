import { describe, expect, it } from 'vitest';
import { detectFormat, parseJson, parseStream, parseTextByFormat, parseXlsx, type ParseProgress } from '../../../src/data/import.ts';
import { detectMapper, mapRecords } from '../../../src/data/mappers.ts';
import { makeXlsx } from './xlsx.ts';

function streamOf(text: string, chunk: number): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= bytes.length) return c.close();
      c.enqueue(bytes.slice(at, at + chunk));
      at += chunk;
    },
  });
}

describe('format detection', () => {
  it('by extension and by content', () => {
    expect(detectFormat('a.jsonl')).toBe('jsonl');
    expect(detectFormat('a.json', '[{"a":1}]')).toBe('json');
    expect(detectFormat('a.json', '{"a":1}\n{"a":2}\n')).toBe('jsonl');
    expect(detectFormat('a.json', '{\n "a": 1\n}')).toBe('json');
    expect(detectFormat('a.CSV')).toBe('csv');
    expect(detectFormat('a.tsv')).toBe('tsv');
    expect(detectFormat('a.xlsx')).toBe('xlsx');
    expect(detectFormat('notes.md')).toBe('text');
    expect(() => detectFormat('blob.bin', 'zzz')).toThrow(/blob.bin: cannot tell the format/);
  });
});

describe('JSON', () => {
  it('array, split object, column object, single object', () => {
    expect(parseJson('[{"a":1},{"a":2}]', 'f.json').records.map((r) => r.source.item)).toEqual(['[0]', '[1]']);
    const split = parseJson('{"train":[{"a":1}],"test":[{"a":2}]}', 'f.json');
    expect(split.records.map((r) => [r.source.item, r.value])).toEqual([['train[0]', { a: 1 }], ['test[0]', { a: 2 }]]);
    const cols = parseJson('{"q":["x","y"],"a":["1","2"]}', 'f.json');
    expect(cols.records.map((r) => r.value)).toEqual([{ q: 'x', a: '1' }, { q: 'y', a: '2' }]);
    expect(parseJson('{"conversation":[{"input":"q","output":"a"}]}', 'f.json').records).toHaveLength(1);
  });
  it('a broken element of a JSON array is rejected with its line; the other elements survive', () => {
    const r = parseJson('[\n{"a":1},\n{"a": tru},\n{"b":"x, ]}"}\n]', 'bad.json');
    expect(r.records.map((x) => [x.source.line, x.value])).toEqual([[2, { a: 1 }], [4, { b: 'x, ]}' }]]);
    expect(r.rejected).toHaveLength(1);
    expect(r.rejected[0]).toMatchObject({ file: 'bad.json', line: 3, item: '[1]', stage: 'parse' });
    expect(r.rejected[0]!.reason).toMatch(/^invalid JSON/);
  });
  it('an unclosed array and a broken object file are reported', () => {
    const r = parseJson('[\n{"a":1},\n{"a":\n', 'cut.json');
    expect(r.records.map((x) => x.value)).toEqual([{ a: 1 }]);
    expect(r.rejected.map((x) => x.reason)).toEqual([expect.stringMatching(/^invalid JSON/), 'invalid JSON: the top-level array is not closed']);
    const o = parseJson('{"a": }', 'o.json');
    expect(o.rejected[0]).toMatchObject({ file: 'o.json', stage: 'parse' });
  });
});

describe('CSV / TSV', () => {
  it('header row; quoted newlines; a row with the wrong field count is rejected with its row number', () => {
    const csv = 'question,answer\n"What is 2+2?",4\n"multi\nline",yes\nonly-one-field\n';
    const r = parseTextByFormat(csv, 'qa.csv', 'csv');
    expect(r.records.map((x) => x.value)).toEqual([{ question: 'What is 2+2?', answer: '4' }, { question: 'multi\nline', answer: 'yes' }]);
    expect(r.records.map((x) => x.source.row)).toEqual([2, 3]);
    expect(r.rejected).toHaveLength(1);
    expect(r.rejected[0]).toMatchObject({ file: 'qa.csv', row: 4, stage: 'parse' });
    expect(r.rejected[0]!.reason).toMatch(/TooFewFields/);
  });
  it('TSV', () => {
    const r = parseTextByFormat('instruction\tinput\toutput\nSay hi\t\thi\n', 'a.tsv', 'tsv');
    expect(r.records[0]!.value).toEqual({ instruction: 'Say hi', input: '', output: 'hi' });
    expect(detectMapper(r.records).choice?.id).toBe('alpaca');
  });
});

describe('xlsx', () => {
  it('reads the first sheet with titles; a MedQA-style sheet maps through the column mapper', async () => {
    const buf = makeXlsx('MedQA', [
      ['question', 'options', 'answer'],
      ['Which drug?', 'A. x; B. y', 'A'],
      [null, null, null],
      ['Dose?', 'A. 1; B. 2', 2],
    ]);
    const r = await parseXlsx(buf, 'medqa.xlsx');
    expect(r.rejected).toEqual([]);
    expect(r.records.map((x) => [x.source.sheet, x.source.row, x.value])).toEqual([
      ['MedQA', 2, { question: 'Which drug?', options: 'A. x; B. y', answer: 'A' }],
      ['MedQA', 4, { question: 'Dose?', options: 'A. 1; B. 2', answer: 2 }],
    ]);
    const d = detectMapper(r.records);
    const m = mapRecords(r.records, d.choice!);
    expect(m.samples[1]!.kind === 'chat' && m.samples[1]!.messages).toEqual([
      { role: 'user', content: 'Dose?\nA. 1; B. 2' },
      { role: 'assistant', content: '2' },
    ]);
  });
  it('a file that is not xlsx is a clear rejected entry', async () => {
    const r = await parseXlsx(new TextEncoder().encode('not a zip').buffer as ArrayBuffer, 'x.xlsx');
    expect(r.rejected[0]!.reason).toMatch(/^not a readable .xlsx file/);
  });
});

describe('streaming parse with progress', () => {
  it('JSONL split across arbitrary chunks (multi-byte characters too), with increasing progress', async () => {
    const lines = Array.from({ length: 500 }, (_, i) => JSON.stringify({ text: `第${i}行 🤖 line ${i}` }));
    lines.splice(10, 0, '{broken');
    const text = lines.join('\r\n') + '\n';
    const events: ParseProgress[] = [];
    const r = await parseStream(streamOf(text, 7), 'big.jsonl', 'jsonl', text.length, (p) => events.push(p));
    expect(r.records).toHaveLength(500);
    expect(r.records[499]!.value).toEqual({ text: '第499行 🤖 line 499' });
    expect(r.records[10]!.source.line).toBe(12);
    expect(r.rejected).toEqual([expect.objectContaining({ file: 'big.jsonl', line: 11, stage: 'parse' })]);
    const last = events[events.length - 1]!;
    expect(last.status).toBe('done');
    for (let i = 1; i < events.length; i++) expect(events[i]!.bytes).toBeGreaterThanOrEqual(events[i - 1]!.bytes);
  });
  it('CSV through the stream path strips a BOM', async () => {
    const r = await parseStream(streamOf('\ufeffq,a\nx,y\n', 3), 'a.csv', 'csv', 10);
    expect(r.records[0]!.value).toEqual({ q: 'x', a: 'y' });
  });
});
