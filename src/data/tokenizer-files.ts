/**
 * A model's tokenizer files → TokenizerSource. Reads tokenizer.json (or converts a SentencePiece
 * tokenizer.model when there is no tokenizer.json), tokenizer_config.json, and the chat template from
 * `chat_template.jinja` (newer repositories) or `chat_template.json` when present, which win over the
 * config's `chat_template`, as in transformers.
 */
import { sentencePieceToTokenizerJson } from './sentencepiece.ts';
import type { TokenizerSource } from './tokenizer.ts';

/** File name (no directory) → contents; text files as strings, tokenizer.model as bytes. */
export type TokenizerFiles = Map<string, string | Uint8Array>;

export const TOKENIZER_FILE_NAMES = ['tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja', 'chat_template.json', 'tokenizer.model', 'special_tokens_map.json'];

function text(v: string | Uint8Array): string {
  return typeof v === 'string' ? v : new TextDecoder().decode(v);
}

function parse(name: string, v: string | Uint8Array): Record<string, unknown> {
  try {
    return JSON.parse(text(v)) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${name}: invalid JSON (${(err as Error).message})`);
  }
}

export function tokenizerSourceFromFiles(files: TokenizerFiles, where = 'tokenizer'): TokenizerSource {
  const cfgRaw = files.get('tokenizer_config.json');
  let config: Record<string, unknown> | null = cfgRaw === undefined ? null : parse(`${where}/tokenizer_config.json`, cfgRaw);
  const stm = files.get('special_tokens_map.json');
  if (stm !== undefined) {
    // Older repositories keep bos/eos/pad here; the config's own values win.
    config = { ...parse(`${where}/special_tokens_map.json`, stm), ...(config ?? {}) };
  }
  let tokenizerJson: string | object;
  const tj = files.get('tokenizer.json');
  const model = files.get('tokenizer.model');
  if (tj !== undefined) tokenizerJson = text(tj);
  else if (model !== undefined) {
    if (typeof model === 'string') throw new Error(`${where}/tokenizer.model must be read as bytes`);
    tokenizerJson = sentencePieceToTokenizerJson(model, config ?? {});
  } else {
    throw new Error(`${where}: no tokenizer.json or tokenizer.model`);
  }
  const src: TokenizerSource = { tokenizerJson, tokenizerConfig: config };
  const jinja = files.get('chat_template.jinja');
  const ctj = files.get('chat_template.json');
  if (jinja !== undefined) src.chatTemplate = text(jinja);
  else if (ctj !== undefined) {
    const t = parse(`${where}/chat_template.json`, ctj).chat_template;
    if (typeof t === 'string') src.chatTemplate = t;
  }
  return src;
}
