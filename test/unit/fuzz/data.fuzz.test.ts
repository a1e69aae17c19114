/**
 * Dataset files and tokenizer files from strangers. Import never throws for a bad row (each is a
 * rejected row naming file and line); mapping never throws; tokenizer.json either loads or fails naming
 * tokenizer.json; chat templates that throw or run away stop with a reason.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeUtf8, JsonlParser, parseDelimited, parseJson, parseStream, DEFAULT_IMPORT_LIMITS } from '../../../src/data/import.ts';
import { detectMapper, mapRecords } from '../../../src/data/mappers.ts';
import { fallbackTokenizerSource } from '../../../src/data/fallback-tokenizer.ts';
import { loadTokenizer } from '../../../src/data/tokenizer.ts';
import { realTokenizer } from '../data/helpers.ts';
import { fuzz, fuzzAsync, isOurs, mutatedBytes } from './harness.ts';

const FILE = 'data.jsonl';
const noThrow = () => false; // import and mapping must never throw: any exception is a crash

function checkRejects(rejected: readonly { file: string; line?: number; row?: number; item?: string; reason: string }[]): void {
  for (const r of rejected) {
    expect(r.file).toBe(FILE);
    expect(typeof r.reason).toBe('string');
  }
}

const sampleJsonl = new TextEncoder().encode(
  [
    '{"instruction": "Say hi", "input": "", "output": "hi"}',
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
    '{"conversation": [{"system": "s", "input": "q", "output": "a"}]}',
    '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
    '{"text": "plain"}',
  ].join('\n'),
);

describe('fuzz: dataset import and mapping', () => {
  it('JSONL bytes (mutated, in random chunkings): never throws; every reject names file and line; then mapping never throws', () => {
    const r = fuzz({
      name: 'jsonl import + mapping (byte mutations)',
      cases: 1500,
      arbitrary: fc.tuple(mutatedBytes(sampleJsonl), fc.array(fc.nat({ max: 200 }), { maxLength: 5 })),
      run: ([bytes, cuts]) => {
        const p = new JsonlParser(FILE);
        let at = 0;
        for (const c of [...cuts].sort((a, b) => a - b)) {
          p.pushBytes(bytes.subarray(at, Math.max(at, Math.min(c, bytes.length))));
          at = Math.max(at, Math.min(c, bytes.length));
        }
        p.pushBytes(bytes.subarray(at));
        const res = p.finish();
        checkRejects(res.rejected);
        for (const x of res.rejected) expect(x.line).toBeGreaterThan(0);
        const d = detectMapper(res.records);
        for (const id of ['xtuner', 'openai', 'sharegpt', 'alpaca', 'oasst1', 'text'] as const) {
          const m = mapRecords(res.records, d.choice?.id === id ? d.choice : { id });
          expect(m.samples.length + m.rejected.length).toBeGreaterThanOrEqual(0);
        }
      },
      clearError: noThrow,
    });
    expect(r.crashes).toBe(0);
  });

  it('JSON and CSV text (arbitrary and mutated): never throws', () => {
    const arrays = new TextEncoder().encode('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]');
    const csv = new TextEncoder().encode('instruction,output\n"a, quoted",b\nc,d\n');
    const r = fuzz({
      name: 'json/csv import (mutated and arbitrary text)',
      cases: 1500,
      arbitrary: fc.oneof(mutatedBytes(arrays).map((b) => new TextDecoder().decode(b)), mutatedBytes(csv).map((b) => new TextDecoder().decode(b)), fc.string({ maxLength: 200 }), fc.json()),
      run: (text) => {
        checkRejects(parseJson(text, FILE).rejected);
        checkRejects(parseDelimited(text, FILE, '').rejected);
        checkRejects(parseDelimited(text, FILE, '\t').rejected);
      },
      clearError: noThrow,
    });
    expect(r.crashes).toBe(0);
  });

  it('invalid UTF-8, huge lines and deep nesting: rejected by line number, the other rows kept', async () => {
    const bad = new Uint8Array([...new TextEncoder().encode('{"text": "ok"}\n{"text": "caf'), 0xe9, ...new TextEncoder().encode('"}\n{"text": "fine"}\n')]);
    const p = new JsonlParser(FILE);
    p.pushBytes(bad);
    const res = p.finish();
    expect(res.records.map((r) => r.source.line)).toEqual([1, 3]);
    expect(res.rejected).toEqual([expect.objectContaining({ file: FILE, line: 2, stage: 'parse', reason: expect.stringMatching(/not valid UTF-8 text \(bad byte 0xe9 at byte 14 of the line\)/) })]);
    // Through the streaming entry point, in 7-byte chunks.
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bad.length; i += 7) c.enqueue(bad.slice(i, i + 7));
        c.close();
      },
    });
    const streamed = await parseStream(stream, FILE, 'jsonl', bad.length);
    expect(streamed.rejected.map((r) => r.line)).toEqual([2]);
    // Whole-file formats name the line of the bad byte.
    await expect(parseStream(new Blob([bad]).stream() as ReadableStream<Uint8Array>, 'd.csv', 'csv', bad.length)).rejects.toThrow('d.csv line 2: not valid UTF-8 text (bad byte 0xe9)');
    expect(() => decodeUtf8(bad, 'x.json')).toThrow(/x.json line 2/);

    const limits = { ...DEFAULT_IMPORT_LIMITS, maxLineBytes: 1000 };
    const huge = new JsonlParser(FILE, limits);
    huge.pushBytes(new TextEncoder().encode('{"text": "a"}\n{"text": "'));
    for (let i = 0; i < 100; i++) huge.pushBytes(new Uint8Array(100).fill(0x61)); // 10 KB line, in pieces
    huge.pushBytes(new TextEncoder().encode('"}\n{"text": "b"}'));
    const h = huge.finish();
    expect(h.records.map((r) => r.source.line)).toEqual([1, 3]);
    expect(h.rejected[0]).toMatchObject({ line: 2, reason: expect.stringMatching(/line is 10,\d+ bytes long \(the limit is 1,000\)/) });

    const deep = new JsonlParser(FILE);
    deep.push('{"text": "x"}\n' + '['.repeat(100_000) + ']'.repeat(100_000) + '\n' + `{"a": ${'{"a": '.repeat(70)}1${'}'.repeat(70)}}\n`);
    const dres = deep.finish();
    expect(dres.records.length).toBe(1);
    expect(dres.rejected.map((r) => [r.line, r.reason])).toEqual([
      [2, 'nested more than 64 levels deep'],
      [3, 'nested more than 64 levels deep'],
    ]);
    expect(parseJson(`[{"text": "x"}, ${'['.repeat(5000)}${']'.repeat(5000)}]`, FILE).rejected).toEqual([expect.objectContaining({ item: '[1]', reason: 'nested more than 64 levels deep' })]);
  });
});

describe('fuzz: tokenizer.json and chat templates', () => {
  const good = fallbackTokenizerSource();
  const goodText = typeof good.tokenizerJson === 'string' ? good.tokenizerJson : JSON.stringify(good.tokenizerJson);

  it('mutated tokenizer.json: loads and encodes, or an error naming tokenizer.json', async () => {
    const r = await fuzzAsync({
      name: 'tokenizer.json (byte mutations)',
      cases: 400,
      arbitrary: mutatedBytes(new TextEncoder().encode(goodText)),
      run: async (bytes) => {
        const tok = loadTokenizer({ ...good, tokenizerJson: new TextDecoder().decode(bytes) });
        tok.encode('Hello, wörld');
      },
      clearError: isOurs([Error], ['tokenizer.json']),
    });
    expect(r.crashes).toBe(0);
  }, 60_000);

  it('hostile chat templates stop with a reason, quickly', () => {
    const tok = loadTokenizer(good);
    const msgs = [{ role: 'user', content: 'hi' }];
    expect(tok.applyChatTemplate(msgs)).toContain('hi');
    const cases: [string, RegExp][] = [
      ["{% for a in range(300) %}{% for b in range(300) %}{% for c in messages %}{{ c.content }}{% endfor %}{% endfor %}{% endfor %}", /did not finish within 250,000 steps/],
      ["{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}", /range\(\) calls asked for 101,000 items in all/],
      ['{% for a in range(1000000000) %}x{% endfor %}', /range\(\) calls asked for 1,000,000,000 items in all/],
      ["{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", /a string of [\d,]+ characters/],
      ['{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}', /chat template: /],
      ["{{ raise_exception('roles must alternate') }}", /chat template: roles must alternate/],
      ['{{ messages[0].content.nope() }}', /chat template: /],
    ];
    const tenTurns = Array.from({ length: 10 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `turn ${i}` }));
    for (const [template, reason] of cases) {
      const t0 = performance.now();
      expect(() => tok.withChatTemplate(template).applyChatTemplate(tenTurns), template).toThrow(reason);
      expect(performance.now() - t0, template).toBeLessThan(5000);
    }
    expect(() => tok.withChatTemplate('{% for %}').applyChatTemplate(msgs)).toThrow(/chat template does not parse/);
    // Real templates stay far inside the limits: Qwen3's (tools, thinking) over a 200-turn conversation.
    const long = Array.from({ length: 200 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `turn ${i} `.repeat(50) }));
    expect(realTokenizer('qwen3').applyChatTemplate(long).length).toBeGreaterThan(200 * 300);
    console.log(`hostile chat templates: ${cases.length + 1} cases, each stopped with a reason`);
  }, 60_000);
});
