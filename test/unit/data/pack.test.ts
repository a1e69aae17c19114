import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IGNORE_INDEX } from '../../../src/data/mask.ts';
import { buildRows, fitToLength, type TokenizedSample } from '../../../src/data/pack.ts';
import { lengthHistogram, prepareDataset } from '../../../src/data/pipeline.ts';
import { shuffled } from '../../../src/data/rng.ts';
import { rowsFromJsonl, rowsToJsonl } from '../../../src/data/rows.ts';
import type { Sample } from '../../../src/data/types.ts';
import { realTokenizer } from './helpers.ts';

const src = (i: number) => ({ file: 'f.jsonl', line: i + 1 });
function sample(i: number, n: number, supervisedFrom = 0, kind: 'chat' | 'text' = 'chat'): TokenizedSample {
  const ids = Array.from({ length: n }, (_, t) => 1000 * (i + 1) + t);
  return { inputIds: ids, labels: ids.map((x, t) => (t >= supervisedFrom ? x : IGNORE_INDEX)), source: src(i), kind };
}

describe('truncation', () => {
  it('truncates chat samples at the end and reports each one', () => {
    const f = fitToLength(sample(0, 10, 2), 6);
    expect(f.samples[0]!.inputIds).toEqual([1000, 1001, 1002, 1003, 1004, 1005]);
    expect(f.report).toEqual({ source: src(0), from: 10, to: 6, action: 'truncated' });
    expect(fitToLength(sample(0, 6, 2), 6).report).toBeNull();
  });
  it('drops a sample whose supervised tokens all fall past the cut, saying why', () => {
    const f = fitToLength(sample(3, 10, 8), 6);
    expect(f.samples).toEqual([]);
    expect(f.dropReason).toBe('over-long: 10 tokens; no supervised token left after truncation to 6');
  });
  it('splits pretraining text into max-length chunks instead of losing it', () => {
    const f = fitToLength(sample(0, 13, 0, 'text'), 5);
    expect(f.samples.map((s) => s.inputIds.length)).toEqual([5, 5, 3]);
    expect(f.samples.flatMap((s) => s.inputIds)).toEqual(sample(0, 13).inputIds);
    expect(f.report).toEqual({ source: src(0), from: 13, to: 3, action: 'split' });
  });
});

describe('rows and packing', () => {
  it('unpacked rows: positions from 0, one document, first label masked', () => {
    const [r] = buildRows([sample(0, 4)], { maxLength: null, pack: false, padToMaxLength: false, padTokenId: 0 });
    expect(Array.from(r!.positionIds)).toEqual([0, 1, 2, 3]);
    expect(Array.from(r!.documentIds)).toEqual([0, 0, 0, 0]);
    expect(Array.from(r!.labels)).toEqual([IGNORE_INDEX, 1001, 1002, 1003]);
  });
  it('packs greedily in order; each document restarts positions; padding is -1 / -100 / pad id', () => {
    const rows = buildRows([sample(0, 3), sample(1, 4), sample(2, 5), sample(3, 2)], { maxLength: 8, pack: true, padToMaxLength: true, padTokenId: 7 });
    expect(rows).toHaveLength(2);
    const [a, b] = rows as [NonNullable<(typeof rows)[0]>, NonNullable<(typeof rows)[0]>];
    expect(Array.from(a.inputIds)).toEqual([1000, 1001, 1002, 2000, 2001, 2002, 2003, 7]);
    expect(Array.from(a.positionIds)).toEqual([0, 1, 2, 0, 1, 2, 3, 0]);
    expect(Array.from(a.documentIds)).toEqual([0, 0, 0, 1, 1, 1, 1, -1]);
    expect(Array.from(a.labels)).toEqual([-100, 1001, 1002, -100, 2001, 2002, 2003, -100]);
    expect(Array.from(b.documentIds)).toEqual([0, 0, 0, 0, 0, 1, 1, -1]);
    expect(Array.from(b.positionIds)).toEqual([0, 1, 2, 3, 4, 0, 1, 0]);
  });
  it('pad id == an end-of-turn id inside the samples: those tokens keep their labels, only padding is masked', () => {
    const eos = 1002;
    const rows = buildRows([sample(0, 3), sample(1, 2)], { maxLength: 8, pack: true, padToMaxLength: true, padTokenId: eos });
    const r = rows[0]!;
    expect(Array.from(r.inputIds)).toEqual([1000, 1001, eos, 2000, 2001, eos, eos, eos]);
    expect(Array.from(r.labels)).toEqual([-100, 1001, eos, -100, 2001, -100, -100, -100]);
    expect(Array.from(r.documentIds)).toEqual([0, 0, 0, 1, 1, -1, -1, -1]);
  });
  it('property: packing keeps every token in order, never exceeds max length, positions/documents consistent', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 30 }), fc.integer({ min: 16, max: 40 }), (lens, maxLength) => {
        const samples = lens.map((n, i) => sample(i, n));
        const rows = buildRows(samples, { maxLength, pack: true, padToMaxLength: false, padTokenId: 0 });
        const all = rows.flatMap((r) => Array.from(r.inputIds));
        expect(all).toEqual(samples.flatMap((s) => s.inputIds));
        for (const r of rows) {
          expect(r.inputIds.length).toBeLessThanOrEqual(maxLength);
          for (let t = 0; t < r.inputIds.length; t++) {
            const d = r.documentIds[t]!;
            if (t === 0) expect(d).toBe(0);
            else if (d !== r.documentIds[t - 1]) {
              expect(d).toBe(r.documentIds[t - 1]! + 1);
              expect(r.positionIds[t]).toBe(0);
            } else expect(r.positionIds[t]).toBe(r.positionIds[t - 1]! + 1);
          }
        }
      }),
      { numRuns: 200 },
    );
  });
  it('rows JSONL round trip; bad rows name file and line', () => {
    const rows = buildRows([sample(0, 3), sample(1, 2)], { maxLength: 8, pack: true, padToMaxLength: true, padTokenId: 5 });
    const text = rowsToJsonl(rows);
    expect(text.split('\n')[0]).toBe('{"input_ids":[1000,1001,1002,2000,2001,5,5,5],"labels":[-100,1001,1002,-100,2001,-100,-100,-100],"position_ids":[0,1,2,0,1,0,0,0],"document_ids":[0,0,0,1,1,-1,-1,-1],"sources":["f.jsonl, line 1","f.jsonl, line 2"]}');
    expect(rowsFromJsonl(text)).toEqual(rows);
    expect(() => rowsFromJsonl('{"input_ids":[1],"labels":[1],"position_ids":[0],"document_ids":[0]}\n{"input_ids":[1]}', 'r.jsonl')).toThrow(
      "r.jsonl line 2: field 'labels' must be an array of integers",
    );
    expect(() => rowsFromJsonl('{"input_ids":[1,2],"labels":[1],"position_ids":[0],"document_ids":[0]}', 'r.jsonl')).toThrow(/line 1: .*same length/);
  });
});

describe('seeded shuffle', () => {
  it('same seed, same order; different seed, different order; a permutation', () => {
    const xs = Array.from({ length: 50 }, (_, i) => i);
    expect(shuffled(xs, 1)).toEqual(shuffled(xs, 1));
    expect(shuffled(xs, 1)).not.toEqual(shuffled(xs, 2));
    expect(shuffled(xs, 1)).not.toEqual(xs);
    expect([...shuffled(xs, 3)].sort((a, b) => a - b)).toEqual(xs);
    // Pinned so that the order cannot change silently between versions (or between browser and Node).
    expect(shuffled([0, 1, 2, 3, 4, 5, 6, 7], 42)).toEqual([2, 7, 1, 0, 6, 5, 3, 4]);
  });
});

describe('prepareDataset', () => {
  const tok = realTokenizer('qwen3');
  const chats: Sample[] = Array.from({ length: 10 }, (_, i) => ({
    kind: 'chat',
    source: src(i),
    messages: [
      { role: 'user', content: `Question number ${i}?` },
      { role: 'assistant', content: `Answer ${i}. `.repeat(1 + i) },
    ],
  }));
  it('stats, truncation report, eval split, seeded order', () => {
    const a = prepareDataset(tok, chats, { maxLength: 40, pack: false, seed: 7, evalSplit: 0.2 });
    const b = prepareDataset(tok, chats, { maxLength: 40, pack: false, seed: 7, evalSplit: 0.2 });
    expect(a.train).toEqual(b.train);
    expect(a.stats.samples).toBe(10);
    expect(a.stats.trainSamples).toBe(8);
    expect(a.stats.evalSamples).toBe(2);
    expect(a.stats.truncated).toBe(a.lengthReports.length);
    expect(a.stats.truncated).toBeGreaterThan(0);
    for (const r of a.lengthReports) expect(r.from).toBeGreaterThan(40);
    expect(a.stats.supervisedTokens).toBe([...a.train, ...a.eval].reduce((n, r) => n + r.labels.filter((l) => l !== -100).length, 0));
    expect(a.stats.lengthHistogram.counts.reduce((x, y) => x + y, 0)).toBe(10);
    const c = prepareDataset(tok, chats, { maxLength: 40, pack: false, seed: 8, evalSplit: 0.2 });
    expect(c.train.map((r) => r.inputIds.join())).not.toEqual(a.train.map((r) => r.inputIds.join()));
  });
  it('packing preserves the per-sample tokens and labels', () => {
    const plain = prepareDataset(tok, chats, { maxLength: 128, pack: false, seed: null, evalSplit: 0 });
    const packed = prepareDataset(tok, chats, { maxLength: 128, pack: true, seed: null, evalSplit: 0 });
    expect(packed.train.length).toBeLessThan(plain.train.length);
    const strip = (rs: typeof plain.train) => rs.flatMap((r) => Array.from(r.labels).filter((_, t) => r.documentIds[t] !== -1));
    expect(strip(packed.train)).toEqual(strip(plain.train));
    expect(packed.stats.supervisedTokens).toBe(plain.stats.supervisedTokens);
    for (const r of packed.train) expect(r.inputIds.length).toBe(128);
  });
  it('template failures and over-long drops go to the rejected report', () => {
    const bad: Sample[] = [
      { kind: 'chat', source: src(0), messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y' }] },
      { kind: 'chat', source: src(1), messages: [{ role: 'user', content: 'long '.repeat(100) }, { role: 'assistant', content: 'y' }] },
    ];
    const r = prepareDataset(tok.withChatTemplate("{{ raise_exception('nope') }}"), bad.slice(0, 1), { maxLength: 32, pack: false, seed: null, evalSplit: 0 });
    expect(r.rejected).toEqual([{ file: 'f.jsonl', line: 1, stage: 'template', reason: 'chat template: nope' }]);
    const r2 = prepareDataset(tok, bad, { maxLength: 32, pack: false, seed: null, evalSplit: 0 });
    expect(r2.rejected).toEqual([expect.objectContaining({ line: 2, stage: 'truncate', reason: expect.stringMatching(/^over-long/) })]);
    expect(r2.stats.dropped).toBe(1);
    expect(r2.train).toHaveLength(1);
  });
  it('histogram bins cover every length', () => {
    const h = lengthHistogram([0, 5, 99, 100], 10);
    expect(h.counts.reduce((a, b) => a + b, 0)).toBe(4);
    expect(h.edges[h.edges.length - 1]).toBeGreaterThan(100);
  });
});
