import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadTokenizer } from '../../../src/data/tokenizer.ts';
import { tokenizerSourceFromFiles, type TokenizerFiles } from '../../../src/data/tokenizer-files.ts';
import { fallbackTokenizerSource } from '../../../src/data/fallback-tokenizer.ts';
import { tokenizerDir } from './helpers.ts';

const fallbackJson = JSON.stringify(fallbackTokenizerSource().tokenizerJson);

describe('tokenizer files → TokenizerSource', () => {
  it('chat_template.jinja wins over the config template, as in transformers', () => {
    const src = tokenizerSourceFromFiles(new Map([
      ['tokenizer.json', fallbackJson],
      ['tokenizer_config.json', JSON.stringify({ eos_token: '<|im_end|>', chat_template: 'CONFIG' })],
      ['chat_template.jinja', 'JINJA {{ messages[0].content }}'],
    ]));
    expect(loadTokenizer(src).applyChatTemplate([{ role: 'user', content: 'x' }])).toBe('JINJA x');
  });
  it('chat_template.json (processor style) is read; special_tokens_map.json supplies missing specials', () => {
    const src = tokenizerSourceFromFiles(new Map([
      ['tokenizer.json', fallbackJson],
      ['tokenizer_config.json', JSON.stringify({ pad_token: '<|endoftext|>' })],
      ['special_tokens_map.json', JSON.stringify({ eos_token: { content: '<|im_end|>', lstrip: false }, pad_token: '<|im_start|>' })],
      ['chat_template.json', JSON.stringify({ chat_template: 'T{{ eos_token }}' })],
    ]));
    const tok = loadTokenizer(src);
    expect(tok.applyChatTemplate([])).toBe('T<|im_end|>');
    expect(tok.specialTokens.pad).toBe('<|endoftext|>'); // the config wins over special_tokens_map
    expect(tok.eosTokenId).toBe(258);
  });
  it('the real Qwen3 folder loads like the direct path', () => {
    const dir = tokenizerDir('qwen3');
    const files: TokenizerFiles = new Map(['tokenizer.json', 'tokenizer_config.json'].map((n) => [n, fs.readFileSync(path.join(dir, n), 'utf8')]));
    const tok = loadTokenizer(tokenizerSourceFromFiles(files));
    expect(tok.encode('Hello world')).toEqual([9707, 1879]);
  }, 60_000);
  it('clear errors for missing or broken files', () => {
    expect(() => tokenizerSourceFromFiles(new Map(), 'models/x')).toThrow('models/x: no tokenizer.json or tokenizer.model');
    expect(() => tokenizerSourceFromFiles(new Map([['tokenizer.json', fallbackJson], ['tokenizer_config.json', '{oops']]), 'm')).toThrow(/^m\/tokenizer_config.json: invalid JSON/);
    expect(() => loadTokenizer({ tokenizerJson: '{"a":1}', tokenizerConfig: null })).toThrow(/no "model" field/);
    expect(() => loadTokenizer({ tokenizerJson: 'nope', tokenizerConfig: null })).toThrow(/^tokenizer.json: invalid JSON/);
    const noTemplate = loadTokenizer({ tokenizerJson: fallbackJson, tokenizerConfig: {} });
    expect(() => noTemplate.applyChatTemplate([])).toThrow(/no chat_template/);
    expect(() => noTemplate.withChatTemplate('{% if %}').applyChatTemplate([])).toThrow(/chat template does not parse/);
  });
});
