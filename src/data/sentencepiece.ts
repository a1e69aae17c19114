/**
 * SentencePiece `tokenizer.model` → tokenizer.json, in TypeScript, for repositories that ship only the
 * .model file (InternLM2-Chat-1.8B). Mirrors transformers' converters (`convert_slow_tokenizer.py`):
 *
 * - BPE models (model_type 2): `LlamaConverter` / InternLM2's converter in its legacy form: normalizer
 *   Prepend("▁") (when add_dummy_prefix) + Replace(" " → "▁"); no pre-tokenizer; a BPE model with
 *   byte_fallback, merges generated from the vocabulary and scores exactly as
 *   `SentencePieceExtractor.extract` does; decoder Replace("▁" → " "), ByteFallback, Fuse, Strip(1 left);
 *   post-processor TemplateProcessing with BOS (and EOS) per add_bos_token / add_eos_token.
 * - Unigram models (model_type 1): `SpmConverter`'s form: Precompiled normalizer (when the model has a
 *   charsmap), Strip(right), Replace(" {2,}" → "▁"), Metaspace pre-tokenizer and decoder, Unigram model
 *   (byte_fallback as the model says; transformers' generic converter leaves it off).
 *
 * Control and user-defined pieces (e.g. <|im_start|>) become added tokens (control ones special), like
 * transformers. Limitations: the protobuf's `normalization_rule_tsv` and custom normalizers other than
 * the precompiled charsmap are not applied; the BPE path assumes the Llama-style legacy behaviour.
 */

interface Piece {
  piece: string;
  score: number;
  /** 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte. */
  type: number;
}

export interface SentencePieceModel {
  pieces: Piece[];
  modelType: number;
  byteFallback: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  precompiledCharsmap: Uint8Array | null;
}

class Reader {
  pos = 0;
  constructor(private readonly b: Uint8Array, private readonly end = b.length) {}
  done(): boolean {
    return this.pos >= this.end;
  }
  varint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const byte = this.b[this.pos++]!;
      if (shift < 28) result |= (byte & 0x7f) << shift;
      else result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) break;
      shift += 7;
      if (shift > 63) throw new Error('varint too long');
    }
    return result;
  }
  /** Signed int32 stored as a 64-bit varint (negative ids like -1 for "none"). */
  int32(): number {
    let low = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const byte = this.b[this.pos++]!;
      if (shift < 32) low |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) break;
      shift += 7;
      if (shift > 63) throw new Error('varint too long');
    }
    return low | 0;
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (this.pos + n > this.end) throw new Error('truncated field');
    const out = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  float(): number {
    if (this.pos + 4 > this.end) throw new Error('truncated float');
    const v = new DataView(this.b.buffer, this.b.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return v;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw new Error(`unsupported protobuf wire type ${wire}`);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Parses the ModelProto fields the conversion needs. */
export function parseSentencePieceModel(data: Uint8Array): SentencePieceModel {
  const m: SentencePieceModel = {
    pieces: [], modelType: 1, byteFallback: false, unkId: 0, bosId: 1, eosId: 2, padId: -1,
    addDummyPrefix: true, removeExtraWhitespaces: true, precompiledCharsmap: null,
  };
  const r = new Reader(data);
  try {
    while (!r.done()) {
      const key = r.varint();
      const field = key >>> 3;
      const wire = key & 7;
      if (field === 1 && wire === 2) {
        const sub = r.bytes();
        const pr = new Reader(sub);
        const p: Piece = { piece: '', score: 0, type: 1 };
        while (!pr.done()) {
          const k = pr.varint();
          if (k >>> 3 === 1 && (k & 7) === 2) p.piece = utf8.decode(pr.bytes());
          else if (k >>> 3 === 2 && (k & 7) === 5) p.score = pr.float();
          else if (k >>> 3 === 3 && (k & 7) === 0) p.type = pr.varint();
          else pr.skip(k & 7);
        }
        m.pieces.push(p);
      } else if (field === 2 && wire === 2) {
        const tr = new Reader(r.bytes());
        while (!tr.done()) {
          const k = tr.varint();
          const f = k >>> 3;
          const w = k & 7;
          if (w !== 0) {
            tr.skip(w);
            continue;
          }
          const v = tr.int32();
          if (f === 3) m.modelType = v;
          else if (f === 35) m.byteFallback = v !== 0;
          else if (f === 40) m.unkId = v;
          else if (f === 41) m.bosId = v;
          else if (f === 42) m.eosId = v;
          else if (f === 43) m.padId = v;
        }
      } else if (field === 3 && wire === 2) {
        const nr = new Reader(r.bytes());
        while (!nr.done()) {
          const k = nr.varint();
          const f = k >>> 3;
          const w = k & 7;
          if (f === 2 && w === 2) m.precompiledCharsmap = nr.bytes().slice();
          else if (f === 3 && w === 0) m.addDummyPrefix = nr.varint() !== 0;
          else if (f === 4 && w === 0) m.removeExtraWhitespaces = nr.varint() !== 0;
          else nr.skip(w);
        }
      } else {
        r.skip(wire);
      }
    }
  } catch (err) {
    throw new Error(`tokenizer.model: not a SentencePiece model (${(err as Error).message} at byte ${r.pos})`);
  }
  if (m.pieces.length === 0) throw new Error('tokenizer.model: no pieces; not a SentencePiece model');
  return m;
}

const codePoints = (s: string) => Array.from(s);

/** transformers' `generate_merges` with scores (SentencePieceExtractor.extract(vocab_scores)). */
export function bpeMerges(vocab: Map<string, number>, vocabScores: [string, number][]): [string, string][] {
  const merges: { l: string; r: string; score: number; ll: number; rl: number; order: number }[] = [];
  // dict(vocab_scores): the last score wins for duplicate pieces; iteration in first-insertion order.
  const scores = new Map<string, number>();
  for (const [p, s] of vocabScores) scores.set(p, s);
  let order = 0;
  for (const [merge, score] of scores) {
    const cps = codePoints(merge);
    const local: { l: string; r: string; li: number; ri: number }[] = [];
    for (let i = 1; i < cps.length; i++) {
      const l = cps.slice(0, i).join('');
      const r = cps.slice(i).join('');
      const li = vocab.get(l);
      const ri = vocab.get(r);
      if (li !== undefined && ri !== undefined) local.push({ l, r, li, ri });
    }
    local.sort((a, b) => a.li - b.li || a.ri - b.ri);
    for (const x of local) merges.push({ l: x.l, r: x.r, score, ll: codePoints(x.l).length, rl: codePoints(x.r).length, order: order++ });
  }
  // sorted(key=(score, len(l), len(r)), reverse=True): descending keys, stable for ties.
  merges.sort((a, b) => b.score - a.score || b.ll - a.ll || b.rl - a.rl || a.order - b.order);
  return merges.map((x) => [x.l, x.r]);
}

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/** Converts a SentencePiece model (bytes of tokenizer.model) to a tokenizer.json object. */
export function sentencePieceToTokenizerJson(data: Uint8Array, tokenizerConfig: Record<string, unknown> = {}): Record<string, unknown> {
  const m = parseSentencePieceModel(data);
  const configSpecials = new Set(
    ['bos_token', 'eos_token', 'unk_token', 'pad_token'].map((k) => tokenString(tokenizerConfig[k])).filter((s): s is string => s !== null),
  );
  const added = m.pieces
    .map((p, id) => ({ p, id }))
    .filter(({ p }) => p.type === 2 || p.type === 3 || p.type === 4)
    .map(({ p, id }) => ({
      id, content: p.piece, single_word: false, lstrip: false, rstrip: false, normalized: false,
      special: p.type !== 4 || configSpecials.has(p.piece),
    }));
  const unkPiece = m.pieces[m.unkId]?.piece ?? '<unk>';
  const bos = m.bosId >= 0 ? m.pieces[m.bosId]?.piece : undefined;
  const eos = m.eosId >= 0 ? m.pieces[m.eosId]?.piece : undefined;
  // Llama-style BPE models add BOS unless told not to (LlamaTokenizerFast); transformers' generic
  // converter for Unigram models adds nothing unless the config asks.
  const addBos = (m.modelType === 2 ? tokenizerConfig.add_bos_token !== false : tokenizerConfig.add_bos_token === true) && bos !== undefined;
  const addEos = tokenizerConfig.add_eos_token === true && eos !== undefined;
  const single: unknown[] = [];
  const pair: unknown[] = [];
  const specialTokens: Record<string, unknown> = {};
  if (addBos) {
    single.push({ SpecialToken: { id: bos, type_id: 0 } });
    pair.push({ SpecialToken: { id: bos, type_id: 0 } });
    specialTokens[bos!] = { id: bos, ids: [m.bosId], tokens: [bos] };
  }
  single.push({ Sequence: { id: 'A', type_id: 0 } });
  pair.push({ Sequence: { id: 'A', type_id: 0 } });
  if (addEos) {
    single.push({ SpecialToken: { id: eos, type_id: 0 } });
    pair.push({ SpecialToken: { id: eos, type_id: 0 } });
    specialTokens[eos!] = { id: eos, ids: [m.eosId], tokens: [eos] };
  }
  if (addBos) pair.push({ SpecialToken: { id: bos, type_id: 1 } });
  pair.push({ Sequence: { id: 'B', type_id: 1 } });
  if (addEos) pair.push({ SpecialToken: { id: eos, type_id: 1 } });
  const postProcessor = { type: 'TemplateProcessing', single, pair, special_tokens: specialTokens };

  if (m.modelType === 2) {
    // LlamaConverter.vocab: the first three pieces are renamed <unk>, <s>, </s> with score 0.
    const vocabScores: [string, number][] = m.pieces.map((p, i) => {
      if (i < 3 && m.unkId === 0 && m.bosId === 1 && m.eosId === 2) return [['<unk>', '<s>', '</s>'][i]!, 0];
      return [p.piece, p.score];
    });
    const original = new Map<string, number>();
    m.pieces.forEach((p, i) => original.set(p.piece, i));
    const vocab: Record<string, number> = {};
    vocabScores.forEach(([p], i) => (vocab[p] = i));
    const merges = bpeMerges(original, vocabScores);
    const normalizers: unknown[] = [];
    if (m.addDummyPrefix) normalizers.push({ type: 'Prepend', prepend: '\u2581' });
    normalizers.push({ type: 'Replace', pattern: { String: ' ' }, content: '\u2581' });
    const decoders: unknown[] = [
      { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
      { type: 'ByteFallback' },
      { type: 'Fuse' },
    ];
    if (m.addDummyPrefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: { type: 'Sequence', normalizers },
      pre_tokenizer: null,
      post_processor: postProcessor,
      decoder: { type: 'Sequence', decoders },
      model: {
        type: 'BPE', dropout: null, unk_token: unkPiece, continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: true, byte_fallback: m.byteFallback, ignore_merges: false, vocab, merges,
      },
    };
  }
  if (m.modelType === 1) {
    // SpmConverter: [Precompiled charsmap] + Strip(right) + Replace(" {2,}" → "▁"), Metaspace around a Unigram.
    const normalizers: unknown[] = [];
    if (m.precompiledCharsmap && m.precompiledCharsmap.length) {
      let bin = '';
      for (const b of m.precompiledCharsmap) bin += String.fromCharCode(b);
      normalizers.push({ type: 'Precompiled', precompiled_charsmap: btoa(bin) });
    }
    normalizers.push({ type: 'Strip', strip_left: false, strip_right: true });
    normalizers.push({ type: 'Replace', pattern: { Regex: ' {2,}' }, content: '\u2581' });
    const prepend = m.addDummyPrefix ? 'always' : 'never';
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: { type: 'Sequence', normalizers },
      pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: prepend, split: true },
      post_processor: addBos || addEos ? postProcessor : null,
      decoder: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: prepend, split: true },
      model: { type: 'Unigram', unk_id: m.unkId, vocab: m.pieces.map((p) => [p.piece, p.score]), byte_fallback: m.byteFallback },
    };
  }
  throw new Error(`tokenizer.model: SentencePiece model type ${m.modelType} (word/char) is not supported; only BPE and Unigram`);
}
