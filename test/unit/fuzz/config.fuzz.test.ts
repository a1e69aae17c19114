/**
 * config.json from strangers: any field replaced by a hostile value, removed, or the whole text mutated;
 * the result is a sane ModelSpec or a ModelConfigError naming the file.
 */
import { readFileSync, readdirSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ModelConfigError, parameterCount, parseModelConfig, ropeInvFreq, type ModelSpec } from '../../../src/engine/model/config.ts';
import { fuzz, hostileJsonValue, isOurs, mutatedBytes } from './harness.ts';

const DIR = new URL('../../../src/engine/model/curated/', import.meta.url);
const configs = readdirSync(DIR).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(readFileSync(new URL(f, DIR), 'utf8')) as Record<string, unknown>);
const clear = isOurs([ModelConfigError], ['config.json']);

/** What the engine relies on from a spec: positive integer sizes, consistent heads, finite rope. */
function checkSpec(s: ModelSpec): void {
  for (const [k, v] of Object.entries({ layers: s.layers, hidden: s.hidden, heads: s.nHeads, kvHeads: s.nKvHeads, headDim: s.headDim, intermediate: s.intermediate, vocab: s.vocabSize })) {
    expect(Number.isSafeInteger(v) && v > 0, `${k} = ${v}`).toBe(true);
  }
  expect(s.nHeads % s.nKvHeads).toBe(0);
  expect(Number.isFinite(parameterCount(s))).toBe(true);
  expect(ropeInvFreq(s, 16).every(Number.isFinite)).toBe(true);
}

describe('fuzz: config.json', () => {
  it('fields replaced by hostile values or removed', () => {
    const edit = fc.tuple(fc.nat({ max: configs.length - 1 }), fc.array(fc.tuple(fc.string({ maxLength: 3 }), fc.option(hostileJsonValue(), { nil: undefined })), { minLength: 1, maxLength: 4 }), fc.array(fc.nat(), { minLength: 4, maxLength: 4 }));
    const r = fuzz({
      name: 'config.json (field edits)',
      cases: 3000,
      arbitrary: edit,
      run: ([which, edits, picks]) => {
        const c = structuredClone(configs[which]!);
        const keys = Object.keys(c);
        edits.forEach(([, v], i) => {
          const k = keys[picks[i]! % keys.length]!;
          if (v === undefined) delete c[k];
          else c[k] = v;
        });
        checkSpec(parseModelConfig(JSON.stringify(c), 'config.json'));
      },
      clearError: clear,
    });
    expect(r.crashes).toBe(0);
    expect(r.parsed).toBeGreaterThan(0);
  });

  it('mutated text', () => {
    const text = new TextEncoder().encode(JSON.stringify(configs[0]));
    const r = fuzz({ name: 'config.json (byte mutations)', cases: 1500, arbitrary: mutatedBytes(text), run: (b) => checkSpec(parseModelConfig(new TextDecoder().decode(b), 'config.json')), clearError: clear });
    expect(r.crashes).toBe(0);
  });
});
