import { describe, expect, it } from 'vitest';
import { readFixture, realTokenizer } from './helpers.ts';
import type { ChatMessage } from '../../../src/data/types.ts';

interface Fixture {
  encode: { text: string; ids: number[]; ids_with_special: number[] }[];
  chat: { messages: ChatMessage[]; add_generation_prompt: boolean; text: string | null; ids: number[] | null }[];
  decode: { ids: number[]; text: string }[];
}

const fixtures = readFixture<Record<string, Fixture>>('tokenizers.json');

for (const name of ['qwen3', 'llama3'] as const) {
  describe(`${name} tokenizer vs reference (Rust tokenizers + transformers)`, () => {
    const fx = fixtures[name];
    if (!fx) throw new Error(`tokenizers.json has no '${name}' entry`);
    const tok = realTokenizer(name);

    it('encodes every text exactly, with and without special tokens', () => {
      expect(fx.encode.length).toBeGreaterThan(10);
      for (const e of fx.encode) {
        expect(tok.encode(e.text, { addSpecialTokens: false }), JSON.stringify(e.text)).toEqual(e.ids);
        expect(tok.encode(e.text, { addSpecialTokens: true }), JSON.stringify(e.text)).toEqual(e.ids_with_special);
      }
    });

    it('decodes every id list exactly', () => {
      for (const d of fx.decode) expect(tok.decode(d.ids, { skipSpecialTokens: false })).toBe(d.text);
    });

    it('renders every chat exactly like apply_chat_template, and tokenizes it to the same ids', () => {
      expect(fx.chat.length).toBe(6);
      for (const c of fx.chat) {
        if (c.text === null) {
          expect(() => tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt })).toThrow();
          continue;
        }
        const text = tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt });
        expect(text).toBe(c.text);
        expect(tok.encode(text, { addSpecialTokens: false })).toEqual(c.ids);
      }
    });

    it('aligns token offsets with the text byte-for-byte', () => {
      for (const e of fx.encode) {
        const off = tok.offsets(e.text, e.ids);
        expect(off, JSON.stringify(e.text)).not.toBeNull();
        if (e.ids.length) {
          expect(off!.starts[0]).toBe(0);
          expect(off!.ends[e.ids.length - 1]).toBe(e.text.length);
        }
      }
    });
  });
}

describe('special tokens', () => {
  it('qwen3: eos <|im_end|>, pad <|endoftext|>, no bos', () => {
    const t = realTokenizer('qwen3');
    expect(t.bosTokenId).toBeNull();
    expect(t.eosTokenId).toBe(151645);
    expect(t.padTokenId).toBe(151643);
    expect(t.eosTokenIds).toContain(151645);
    expect(t.endOfTurnTokens.get('<|im_end|>')).toBe(151645);
  });
  it('llama3: bos <|begin_of_text|>, eos <|end_of_text|>, <|eot_id|> ends a turn', () => {
    const t = realTokenizer('llama3');
    expect(t.bosTokenId).toBe(128000);
    expect(t.eosTokenId).toBe(128001);
    expect(t.padTokenId).toBeNull();
    expect(t.eosTokenIds).toEqual(expect.arrayContaining([128001, 128009]));
  });
  it('raise_exception surfaces as an error naming the template', () => {
    const t = realTokenizer('qwen3', "{{ raise_exception('only user/assistant') }}");
    expect(() => t.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/chat template: only user\/assistant/);
  });
});
