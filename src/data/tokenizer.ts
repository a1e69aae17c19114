/**
 * Tokenizer + chat template, the one code path for training data and for chat prompting.
 *
 * Tokenization is `@huggingface/tokenizers` on a tokenizer.json; chat templates are rendered with
 * `@huggingface/jinja` the way transformers' `apply_chat_template` does: the special tokens of
 * tokenizer_config.json (bos_token, eos_token, ...) are template variables, plus `messages`,
 * `add_generation_prompt` and `tools`. @huggingface/jinja itself provides transformers' globals
 * `raise_exception` and `strftime_now` and applies its `trim_blocks` / `lstrip_blocks`.
 *
 * `decode` matches the Rust backend's `decode` (no `clean_up_tokenization_spaces`), which is what the
 * reference fixtures record.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { renderTemplate } from './templates.ts';
import type { ChatMessage } from './types.ts';

export interface TokenizerSource {
  /** tokenizer.json, as text or parsed. */
  tokenizerJson: string | object;
  /** tokenizer_config.json (parsed), or null when the model has none. */
  tokenizerConfig: object | null;
  /** Overrides the config's chat_template (a `chat_template.jinja` file, a built-in or a custom one). */
  chatTemplate?: string;
}

export interface SpecialTokens {
  bos: string | null;
  eos: string | null;
  pad: string | null;
  unk: string | null;
  /** Every added token flagged `special` in tokenizer.json, content → id. */
  all: Map<string, number>;
}

export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  tools?: unknown[];
  /** Extra template variables (e.g. `enable_thinking: false`). */
  extra?: Record<string, unknown>;
}

export interface TokenOffsets {
  /** UTF-16 offsets into the encoded text, per token: [starts[i], ends[i]). */
  starts: Int32Array;
  ends: Int32Array;
}

export interface LoadedTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string;
  /** eos_token plus the end-of-turn tokens the vocabulary has (<|im_end|>, <|eot_id|>, ...): stop ids. */
  eosTokenIds: number[];
  /** The config's eos_token id alone (null if none). */
  eosTokenId: number | null;
  bosTokenId: number | null;
  padTokenId: number | null;
  specialTokens: SpecialTokens;
  /** Tokens that end a turn (eos and the known end-of-turn names present): supervised after assistant content. */
  endOfTurnTokens: Map<string, number>;
  chatTemplate: string | null;
  /** The same tokenizer (shared vocabulary, no reload) with another chat template. */
  withChatTemplate(template: string | null): LoadedTokenizer;
  vocabSize: number;
  idToToken(id: number): string | undefined;
  tokenToId(token: string): number | undefined;
  /**
   * Character span of each token of `ids = encode(text, {addSpecialTokens:false})` in `text`, or null when
   * the tokens cannot be aligned byte-for-byte with the text (a normalizer rewrote it); callers then fall
   * back to prefix encoding.
   */
  offsets(text: string, ids: readonly number[]): TokenOffsets | null;
}

/** Tokens that, by their names, end a turn in the templates we know. */
const END_OF_TURN_NAMES = [
  '<|im_end|>', '<|eot_id|>', '<|eom_id|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>',
  '</s>', '<|END_OF_TURN_TOKEN|>', '<|im_sep|>',
];

type Json = Record<string, unknown>;

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

function pickTemplate(t: unknown): string | null {
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    // transformers' named templates: [{name, template}]; "default" is the one apply_chat_template uses.
    const named = t as { name?: string; template?: string }[];
    const def = named.find((x) => x.name === 'default') ?? named[0];
    return def?.template ?? null;
  }
  if (t && typeof t === 'object') {
    const rec = t as Record<string, string>;
    return rec.default ?? Object.values(rec)[0] ?? null;
  }
  return null;
}

/**
 * GPT-2's byte → printable-unicode table (the ByteLevel pre-tokenizer/decoder): the character that stands for
 * each byte value 0..255 in a byte-level vocabulary.
 */
export function byteLevelAlphabet(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const byByte: string[] = new Array<string>(256);
  bs.forEach((b, i) => (byByte[b] = String.fromCharCode(cs[i]!)));
  return byByte;
}

/** The same table the other way: character → byte value. */
function unicodeToBytes(): Map<string, number> {
  return new Map(byteLevelAlphabet().map((ch, b) => [ch, b]));
}

function usesByteLevel(json: Json): boolean {
  const has = (c: unknown): boolean => {
    if (!c || typeof c !== 'object') return false;
    const o = c as Json;
    if (o.type === 'ByteLevel') return true;
    for (const key of ['pretokenizers', 'decoders']) {
      const list = o[key];
      if (Array.isArray(list) && list.some(has)) return true;
    }
    return false;
  };
  return has(json.pre_tokenizer) || has(json.decoder);
}

export function loadTokenizer(source: TokenizerSource): LoadedTokenizer {
  let json: Json;
  try {
    json = (typeof source.tokenizerJson === 'string' ? JSON.parse(source.tokenizerJson) : source.tokenizerJson) as Json;
  } catch (err) {
    throw new Error(`tokenizer.json: invalid JSON (${(err as Error).message})`);
  }
  if (!json || typeof json !== 'object' || !json.model) throw new Error('tokenizer.json: no "model" field; is this a tokenizer.json file?');
  const config = (source.tokenizerConfig ?? {}) as Json;
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, config);
    tok.encode('Hello, wörld 123 \u4f60\u597d');
  } catch (err) {
    // A malformed file fails deep inside the library (TypeError on a missing field): say which file.
    throw new Error(`tokenizer.json: malformed; the tokenizer cannot be built from it (${(err as Error).message})`);
  }

  const all = new Map<string, number>();
  const addedIds = new Set<number>();
  const addedContent = new Map<number, string>();
  for (const t of (json.added_tokens ?? []) as { id: number; content: string; special?: boolean }[]) {
    addedIds.add(t.id);
    addedContent.set(t.id, t.content);
    if (t.special) all.set(t.content, t.id);
  }
  const idOf = (s: string | null): number | null => {
    if (s === null) return null;
    const id = tok.token_to_id(s);
    return id === undefined ? null : id;
  };
  const specialTokens: SpecialTokens = {
    bos: tokenString(config.bos_token),
    eos: tokenString(config.eos_token),
    pad: tokenString(config.pad_token),
    unk: tokenString(config.unk_token),
    all,
  };
  const bosTokenId = idOf(specialTokens.bos);
  const eosTokenId = idOf(specialTokens.eos);
  const padTokenId = idOf(specialTokens.pad);
  const endOfTurnTokens = new Map<string, number>();
  if (specialTokens.eos !== null && eosTokenId !== null) endOfTurnTokens.set(specialTokens.eos, eosTokenId);
  for (const name of END_OF_TURN_NAMES) {
    const id = all.get(name);
    if (id !== undefined) endOfTurnTokens.set(name, id);
  }
  const eosTokenIds = [...new Set([...(eosTokenId !== null ? [eosTokenId] : []), ...endOfTurnTokens.values()])];


  // Template variables transformers passes from the special tokens map.
  const templateTokens: Record<string, unknown> = {};
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']) {
    const s = tokenString(config[key]);
    if (s !== null) templateTokens[key] = s;
  }
  if (Array.isArray(config.additional_special_tokens)) {
    templateTokens.additional_special_tokens = config.additional_special_tokens.map(tokenString).filter((s) => s !== null);
  }

  const byteLevel = usesByteLevel(json);
  const u2b = byteLevel ? unicodeToBytes() : null;
  const encoder = new TextEncoder();
  const pieceCache = new Map<number, Uint8Array>();
  const pieceBytes = (id: number): Uint8Array => {
    let b = pieceCache.get(id);
    if (b) return b;
    const added = addedContent.get(id);
    if (added !== undefined) b = encoder.encode(added);
    else {
      const t = tok.id_to_token(id) ?? '';
      if (u2b) {
        b = new Uint8Array(t.length);
        let k = 0;
        for (const ch of t) {
          const v = u2b.get(ch);
          if (v === undefined) return (b = encoder.encode(t));
          b[k++] = v;
        }
        b = b.subarray(0, k);
      } else {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
        b = m ? Uint8Array.of(parseInt(m[1]!, 16)) : encoder.encode(t.replace(/\u2581/g, ' '));
      }
    }
    pieceCache.set(id, b);
    return b;
  };

  const build = (chatTemplate: string | null): LoadedTokenizer => {
    let compiled: Template | null = null;
    return {
      withChatTemplate: (t) => build(t),
      encode(text, options) {
        return tok.encode(text, { add_special_tokens: options?.addSpecialTokens ?? false }).ids;
      },
      decode(ids, options) {
        const arr = Array.from(ids);
        if (arr.length === 0) return '';
        return tok.decode(arr, { skip_special_tokens: options?.skipSpecialTokens ?? false, clean_up_tokenization_spaces: false });
      },
      applyChatTemplate(messages, options) {
        if (chatTemplate === null) {
          throw new Error('this tokenizer has no chat_template (tokenizer_config.json); choose a built-in template or write one');
        }
        try {
          compiled ??= new Template(chatTemplate);
        } catch (err) {
          throw new Error(`chat template does not parse: ${(err as Error).message}`);
        }
        const vars: Record<string, unknown> = {
          ...templateTokens,
          ...(options?.extra ?? {}),
          messages,
          add_generation_prompt: options?.addGenerationPrompt ?? false,
        };
        if (options?.tools) vars.tools = options.tools;
        try {
          return renderTemplate(compiled, vars);
        } catch (err) {
          throw new Error(`chat template: ${(err as Error).message}`);
        }
      },
      eosTokenIds,
      eosTokenId,
      bosTokenId,
      padTokenId,
      specialTokens,
      endOfTurnTokens,
      chatTemplate,
      vocabSize: tok.get_vocab(true).size,
      idToToken: (id) => tok.id_to_token(id),
      tokenToId: (t) => tok.token_to_id(t),
      offsets(text, ids) {
        const textBytes = encoder.encode(text);
        // byte offset → UTF-16 offset
        const byteToChar = new Int32Array(textBytes.length + 1);
        {
          let bi = 0;
          let ci = 0;
          while (ci < text.length) {
            const cp = text.codePointAt(ci)!;
            const nb = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
            for (let k = 0; k < nb; k++) byteToChar[bi + k] = ci;
            bi += nb;
            ci += cp >= 0x10000 ? 2 : 1;
          }
          byteToChar[bi] = ci;
        }
        const starts = new Int32Array(ids.length);
        const ends = new Int32Array(ids.length);
        let pos = 0;
        for (let i = 0; i < ids.length; i++) {
          const b = pieceBytes(ids[i]!);
          let start = -1;
          for (let k = 0; k < b.length; k++) {
            if (pos < textBytes.length && textBytes[pos] === b[k]) {
              if (start < 0) start = pos;
              pos++;
            } else if (b[k] === 0x20 && !u2b) {
              // SentencePiece's prepended "▁": a space with no counterpart in the text.
              continue;
            } else {
              return null;
            }
          }
          if (start < 0) start = pos;
          starts[i] = byteToChar[start]!;
          // A token ending inside a multi-byte character owns the whole character.
          let endByte = pos;
          while (endByte < textBytes.length && (textBytes[endByte]! & 0xc0) === 0x80) endByte++;
          ends[i] = byteToChar[endByte]!;
        }
        if (pos !== textBytes.length) return null;
        return { starts, ends };
      },
    };
  };
  return build(source.chatTemplate ?? pickTemplate(config.chat_template));
}
