/**
 * A tiny built-in tokenizer for demos and tests when no model is loaded: byte-level, one token per
 * UTF-8 byte (no merges), ChatML special tokens and the ChatML template. Real runs use the model's own.
 */
import { byteLevelAlphabet, type TokenizerSource } from './tokenizer.ts';
import { builtinTemplate } from './templates.ts';

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
