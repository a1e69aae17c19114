/**
 * A tiny built-in tokenizer for demos and tests when no model is loaded: byte-level, one token per
 * UTF-8 byte (no merges), ChatML special tokens and the ChatML template. Real runs use the model's own.
 */
import type { TokenizerSource } from './tokenizer.ts';
import { builtinTemplate } from './templates.ts';

function byteLevelAlphabet(): string[] {
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

export function fallbackTokenizerSource(): TokenizerSource {
  const vocab: Record<string, number> = {};
  byteLevelAlphabet().forEach((ch, b) => (vocab[ch] = b));
  const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
  const added = specials.map((content, i) => ({ id: 256 + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  for (const a of added) vocab[a.content] = a.id;
  const tokenizerJson = {
    version: '1.0',
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
  return {
    tokenizerJson,
    tokenizerConfig: { eos_token: '<|im_end|>', pad_token: '<|endoftext|>', bos_token: null },
    chatTemplate: builtinTemplate('chatml'),
  };
}
