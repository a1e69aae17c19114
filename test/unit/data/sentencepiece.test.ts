/**
 * The SentencePiece converter: on a tiny hand-built tokenizer.model (protobuf reading, merge generation,
 * dummy prefix, byte fallback, user-defined tokens, BOS, decoding), and against transformers' conversion of
 * a small model trained with the sentencepiece library (fixtures/spm; no real model's .model file is
 * available offline, none is in node_modules).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bpeMerges, parseSentencePieceModel, sentencePieceToTokenizerJson } from '../../../src/data/sentencepiece.ts';
import { loadTokenizer } from '../../../src/data/tokenizer.ts';
import { tokenizerSourceFromFiles } from '../../../src/data/tokenizer-files.ts';

// --- a minimal protobuf writer --------------------------------------------------------------------
const varint = (n: number): number[] => {
  const out: number[] = [];
  let v = n < 0 ? BigInt.asUintN(64, BigInt(n)) : BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
};
const key = (field: number, wire: number) => varint((field << 3) | wire);
const lenField = (field: number, bytes: number[]) => [...key(field, 2), ...varint(bytes.length), ...bytes];
const intField = (field: number, v: number) => [...key(field, 0), ...varint(v)];
const floatField = (field: number, v: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, v, true);
  return [...key(field, 5), ...b];
};
const str = (s: string) => Array.from(new TextEncoder().encode(s));

interface P { piece: string; score: number; type: number }
function buildModel(pieces: P[], opts: { modelType?: number; byteFallback?: boolean; addDummyPrefix?: boolean } = {}): Uint8Array {
  const out: number[] = [];
  for (const p of pieces) out.push(...lenField(1, [...lenField(1, str(p.piece)), ...floatField(2, p.score), ...intField(3, p.type)]));
  // an unknown trainer field (vocab_size, field 4) and a string field (model_prefix) must be skipped
  const trainer = [...lenField(2, str('m')), ...intField(3, opts.modelType ?? 2), ...intField(4, pieces.length), ...intField(35, opts.byteFallback === false ? 0 : 1),
    ...intField(40, 0), ...intField(41, 1), ...intField(42, 2), ...intField(43, -1)];
  out.push(...lenField(2, trainer));
  out.push(...lenField(3, [...lenField(1, str('identity')), ...intField(3, opts.addDummyPrefix === false ? 0 : 1)]));
  return Uint8Array.from(out);
}

const bytePieces: P[] = Array.from({ length: 256 }, (_, b) => ({ piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: 6 }));
const words = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', '▁h', 'll', '▁he', 'llo', '▁hello', '▁w', 'or', '▁wor', '▁world'];
const pieces: P[] = [
  { piece: '<unk>', score: 0, type: 2 },
  { piece: '<s>', score: 0, type: 3 },
  { piece: '</s>', score: 0, type: 3 },
  { piece: '<|im_start|>', score: 0, type: 4 },
  { piece: '<|im_end|>', score: 0, type: 4 },
  ...bytePieces,
  // BPE scores: later merges have lower scores (sentencepiece stores -rank).
  ...words.map((w, i) => ({ piece: w, score: -i, type: 1 })),
];
const idOf = (p: string) => pieces.findIndex((x) => x.piece === p);

describe('SentencePiece tokenizer.model → tokenizer.json', () => {
  const model = buildModel(pieces);

  it('reads the protobuf: pieces, scores, types, trainer and normalizer specs', () => {
    const m = parseSentencePieceModel(model);
    expect(m.pieces).toHaveLength(pieces.length);
    expect(m.pieces[idOf('▁hello')]).toEqual({ piece: '▁hello', score: -12, type: 1 });
    expect(m.modelType).toBe(2);
    expect(m.byteFallback).toBe(true);
    expect([m.unkId, m.bosId, m.eosId, m.padId]).toEqual([0, 1, 2, -1]);
    expect(m.addDummyPrefix).toBe(true);
  });

  it('rejects a file that is not a SentencePiece model with a clear message', () => {
    expect(() => parseSentencePieceModel(new TextEncoder().encode('{"model": {}}'))).toThrow(/tokenizer.model: not a SentencePiece model/);
    expect(() => parseSentencePieceModel(new Uint8Array(0))).toThrow(/no pieces/);
  });

  it('generates merges like transformers (highest score first, pieces split at every code point)', () => {
    const vocab = new Map(pieces.map((p, i) => [p.piece, i]));
    const merges = bpeMerges(vocab, pieces.map((p) => [p.piece, p.score]));
    // '▁h' (score -8) = ▁ + h; 'll' (-9); '▁he' (-10) = ▁h + e; 'llo' (-11) = ll + o;
    // '▁hello' (-12): ▁he + llo and ▁h + ... only splits whose halves are in the vocabulary.
    expect(merges.slice(0, 6)).toEqual([
      ['▁', 'h'], ['l', 'l'], ['▁h', 'e'], ['ll', 'o'], ['▁he', 'llo'], ['▁', 'w'],
    ]);
    expect(merges).toContainEqual(['▁w', 'or']);
    expect(merges.find((m) => m.join('') === '▁world')).toBeUndefined(); // 'ld' is not a piece: no merge makes ▁world
  });

  it('the converted tokenizer: dummy prefix, merges, byte fallback, user-defined tokens, BOS, decode', () => {
    const json = sentencePieceToTokenizerJson(model, { bos_token: '<s>', eos_token: '</s>' });
    const tok = loadTokenizer({ tokenizerJson: json, tokenizerConfig: { bos_token: '<s>', eos_token: '</s>' } });
    expect(tok.encode('hello', { addSpecialTokens: true })).toEqual([1, idOf('▁hello')]);
    expect(tok.encode('hello hello')).toEqual([idOf('▁hello'), idOf('▁hello')]);
    // 'é' is not a piece: UTF-8 bytes C3 A9 through byte fallback.
    expect(tok.encode('hé')).toEqual([idOf('▁h'), idOf('<0xC3>'), idOf('<0xA9>')]);
    expect(tok.encode('<|im_start|>hello<|im_end|>')).toEqual([3, idOf('▁hello'), 4]);
    expect(tok.decode(tok.encode('hello hé'))).toBe('hello hé');
    expect(tok.decode([1, idOf('▁hello')], { skipSpecialTokens: true })).toBe('hello');
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenId).toBe(2);
    // Token offsets still align with the text (the dummy-prefix space has no counterpart).
    const ids = tok.encode('hello hé');
    const off = tok.offsets('hello hé', ids)!;
    expect(off).not.toBeNull();
    expect(Array.from(off.starts)).toEqual([0, 5, 7, 7]); // both bytes of 'é' start at its character
  });

  it('without byte fallback unknown characters become <unk>; add_dummy_prefix=false is honoured', () => {
    const json = sentencePieceToTokenizerJson(buildModel(pieces, { byteFallback: false, addDummyPrefix: false }), {});
    const tok = loadTokenizer({ tokenizerJson: json, tokenizerConfig: {} });
    expect(tok.encode('hé')).toEqual([idOf('h'), 0]);
  });

  it('is what tokenizerSourceFromFiles uses when there is no tokenizer.json', () => {
    const src = tokenizerSourceFromFiles(new Map<string, string | Uint8Array>([
      ['tokenizer.model', model],
      ['tokenizer_config.json', JSON.stringify({ bos_token: '<s>', eos_token: '</s>', chat_template: 'unused' })],
      ['chat_template.jinja', '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}'],
    ]));
    const tok = loadTokenizer(src);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'hello' }])).toBe('<s>hello');
    expect(tok.encode('<s>hello')).toEqual([1, idOf('▁hello')]);
  });

  it('unsupported model types are refused by name', () => {
    expect(() => sentencePieceToTokenizerJson(buildModel(pieces, { modelType: 3 }))).toThrow(/model type 3/);
  });
});

/**
 * Against the reference: a SentencePiece BPE model trained by the sentencepiece library (byte fallback,
 * ChatML user-defined symbols, English + Chinese) and converted by transformers' LlamaConverter
 * (fixtures/make_spm_fixture.py, run on the lent machine: transformers 5.17, sentencepiece 0.2.2).
 */
describe('SentencePiece conversion vs transformers (fixtures/spm)', () => {
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'spm');
  for (const f of ['tokenizer.model', 'tokenizer.json', 'cases.json']) {
    if (!fs.existsSync(path.join(dir, f))) throw new Error(`missing ${path.join(dir, f)}: regenerate with fixtures/make_spm_fixture.py`);
  }
  const model = new Uint8Array(fs.readFileSync(path.join(dir, 'tokenizer.model')));
  const reference = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as Record<string, any>;
  const cases = (JSON.parse(fs.readFileSync(path.join(dir, 'cases.json'), 'utf8')) as { cases: { text: string; sp_ids: number[]; hf_ids: number[]; hf_ids_with_special: number[]; hf_decode: string }[] }).cases;
  const converted = sentencePieceToTokenizerJson(model, { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' }) as Record<string, any>;

  it('same vocabulary, merges (order included), normalizer, decoder and post-processor as transformers', () => {
    expect(converted.model.vocab).toEqual(reference.model.vocab);
    expect(converted.model.merges).toEqual(reference.model.merges);
    expect(converted.model.byte_fallback).toBe(true);
    expect(converted.normalizer).toEqual(reference.normalizer);
    expect(converted.decoder).toEqual(reference.decoder);
    expect(converted.pre_tokenizer).toEqual(reference.pre_tokenizer);
    expect(converted.post_processor).toEqual(reference.post_processor);
    // transformers adds <unk> as a special token when the tokenizer is built; the rest are identical.
    const byId = (ts: { id: number }[]) => ts.filter((t) => t.id !== 0).sort((a, b) => a.id - b.id);
    expect(byId(converted.added_tokens)).toEqual(byId(reference.added_tokens));
  });

  it('encodes and decodes every test string exactly like the reference tokenizer.json', () => {
    const tok = loadTokenizer({ tokenizerJson: converted, tokenizerConfig: { bos_token: '<s>', eos_token: '</s>' } });
    expect(cases.length).toBeGreaterThan(10);
    for (const c of cases) {
      expect(tok.encode(c.text), JSON.stringify(c.text)).toEqual(c.hf_ids);
      expect(tok.encode(c.text, { addSpecialTokens: true }), JSON.stringify(c.text)).toEqual(c.hf_ids_with_special);
      expect(tok.decode(c.hf_ids)).toBe(c.hf_decode);
    }
    // And like the sentencepiece library itself, except where transformers' legacy mode differs from it
    // (a user-defined token at the very start of the text gets no dummy-prefix "▁" in transformers).
    const same = cases.filter((c) => JSON.stringify(c.sp_ids) === JSON.stringify(c.hf_ids));
    expect(same.length).toBe(cases.length - 1);
  });
});

describe('SentencePiece Unigram conversion vs transformers (fixtures/spm/unigram)', () => {
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'spm', 'unigram');
  for (const f of ['tokenizer.model', 'tokenizer.reference.json', 'cases.json']) {
    if (!fs.existsSync(path.join(dir, f))) throw new Error(`missing ${path.join(dir, f)}: regenerate with fixtures/make_spm_fixture.py`);
  }
  // The reference's 320 kB precompiled charsmap is stored as the sha256 of its base64 text.
  const reference = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.reference.json'), 'utf8')) as Record<string, any>;
  const cases = (JSON.parse(fs.readFileSync(path.join(dir, 'cases.json'), 'utf8')) as { cases: { text: string; sp_ids: number[]; hf_ids: number[] }[] }).cases;
  const converted = sentencePieceToTokenizerJson(new Uint8Array(fs.readFileSync(path.join(dir, 'tokenizer.model'))), {}) as Record<string, any>;

  it('same normalizer (charsmap included), Metaspace pre-tokenizer/decoder, Unigram vocabulary and scores', () => {
    const norms = structuredClone(converted.normalizer.normalizers) as Record<string, any>[];
    const pc = norms[0]!;
    expect(pc.type).toBe('Precompiled');
    pc.precompiled_charsmap = {
      sha256_of_base64: createHash('sha256').update(pc.precompiled_charsmap as string).digest('hex'),
      length: (pc.precompiled_charsmap as string).length,
    };
    expect(norms).toEqual(reference.normalizer.normalizers);
    expect(converted.pre_tokenizer).toEqual(reference.pre_tokenizer);
    expect(converted.decoder).toEqual(reference.decoder);
    expect(converted.post_processor).toBeNull();
    expect(converted.model.vocab).toEqual(reference.model.vocab);
    expect(converted.model.unk_id).toBe(reference.model.unk_id);
  });

  it('encodes every test string like transformers and the sentencepiece library', () => {
    const tok = loadTokenizer({ tokenizerJson: converted, tokenizerConfig: {} });
    for (const c of cases) {
      expect(tok.encode(c.text), JSON.stringify(c.text)).toEqual(c.hf_ids);
      expect(c.hf_ids).toEqual(c.sp_ids);
    }
  });
});
