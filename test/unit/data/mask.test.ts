import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { fallbackTokenizerSource } from '../../../src/data/fallback-tokenizer.ts';
import { loadTokenizer } from '../../../src/data/tokenizer.ts';
import { encodeChat, encodeText, IGNORE_INDEX, SampleError } from '../../../src/data/mask.ts';
import { builtinTemplate } from '../../../src/data/templates.ts';
import type { LoadedTokenizer } from '../../../src/data/tokenizer.ts';
import type { ChatMessage } from '../../../src/data/types.ts';
import { realTokenizer } from './helpers.ts';

/** Contiguous runs of supervised tokens, decoded. */
function supervisedRuns(tok: LoadedTokenizer, ids: number[], labels: number[]): string[] {
  const runs: string[] = [];
  let cur: number[] = [];
  labels.forEach((l, i) => {
    if (l !== IGNORE_INDEX) {
      expect(l).toBe(ids[i]);
      cur.push(l);
    } else if (cur.length) {
      runs.push(tok.decode(cur));
      cur = [];
    }
  });
  if (cur.length) runs.push(tok.decode(cur));
  return runs;
}

const multiTurn: ChatMessage[] = [
  { role: 'system', content: 'You are a helpful medical assistant.' },
  { role: 'user', content: 'What is hypertension?' },
  { role: 'assistant', content: 'High blood pressure.' },
  { role: 'user', content: 'How is it treated?' },
  { role: 'assistant', content: 'Lifestyle changes and medication.' },
];
const chinese: ChatMessage[] = [
  { role: 'user', content: '请介绍一下你自己' },
  { role: 'assistant', content: '我是小明的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦' },
];
const tricky: ChatMessage[] = [
  // The assistant's text also occurs in the prompt and in the template's own words.
  { role: 'user', content: 'Say "assistant" and then user' },
  { role: 'assistant', content: 'assistant' },
  { role: 'user', content: 'emoji 🤖🚀 naïve' },
  { role: 'assistant', content: '🤖🚀 naïve\n  def f(x):\n    return x' },
];

interface Case {
  name: string;
  tok: () => LoadedTokenizer;
  /** What each supervised run must decode to, from the assistant content. */
  expected: (content: string) => string;
}

const cases: Case[] = [
  { name: 'Qwen3 own template', tok: () => realTokenizer('qwen3'), expected: (c) => `${c}<|im_end|>` },
  { name: 'ChatML (Qwen3 vocab)', tok: () => realTokenizer('qwen3', builtinTemplate('chatml')), expected: (c) => `${c}<|im_end|>` },
  { name: 'InternLM2 (Qwen3 vocab)', tok: () => realTokenizer('qwen3', builtinTemplate('internlm2')), expected: (c) => `${c}<|im_end|>` },
  { name: 'Llama 3 own template', tok: () => realTokenizer('llama3'), expected: (c) => `${c.trim()}<|eot_id|>` },
  { name: 'Llama-3 instruct built-in', tok: () => realTokenizer('llama3', builtinTemplate('llama3')), expected: (c) => `${c.trim()}<|eot_id|>` },
  // Llama-2 writes ' ' + content + ' ' + eos: the space before the content rides on its first token.
  { name: 'Llama-2 built-in (Llama 3 vocab)', tok: () => realTokenizer('llama3', builtinTemplate('llama2')), expected: (c) => ` ${c.trim()} <|end_of_text|>` },
];

describe('loss masks from character spans', () => {
  // Loading the two real tokenizers takes a second or more on a busy machine: do it once, up front.
  beforeAll(() => {
    realTokenizer('qwen3');
    realTokenizer('llama3');
  }, 120_000);
  for (const c of cases) {
    for (const [convName, conv] of [['multi-turn', multiTurn], ['chinese', chinese], ['tricky', tricky]] as const) {
      it(`${c.name}, ${convName}: supervised tokens decode to exactly the assistant contents + end of turn`, () => {
        const tok = c.tok();
        const e = encodeChat(tok, conv);
        expect(e.inputIds).toEqual(tok.encode(e.text));
        const want = conv.filter((m) => m.role === 'assistant').map((m) => c.expected(m.content));
        expect(supervisedRuns(tok, e.inputIds, e.labels)).toEqual(want);
      });
    }
  }

  it("Qwen3: the injected empty <think></think> block is not supervised, and the text really has it", () => {
    const tok = realTokenizer('qwen3');
    const e = encodeChat(tok, multiTurn);
    expect(e.text).toContain('<|im_start|>assistant\n<think>\n\n</think>\n\nLifestyle changes and medication.<|im_end|>');
    const supervisedText = supervisedRuns(tok, e.inputIds, e.labels).join('');
    expect(supervisedText).not.toContain('think');
    // The first assistant turn (history) has no think block in Qwen3's template.
    expect(e.text).toContain('<|im_start|>assistant\nHigh blood pressure.<|im_end|>');
  });

  it('Qwen3: reasoning content given inline is supervised together with its <think> block', () => {
    const tok = realTokenizer('qwen3');
    const e = encodeChat(tok, [
      { role: 'user', content: '2+2?' },
      { role: 'assistant', content: '<think>\nadd them\n</think>\n\n4' },
    ]);
    expect(e.text).toContain('<think>\nadd them\n</think>\n\n4<|im_end|>');
    expect(supervisedRuns(tok, e.inputIds, e.labels)).toEqual(['<think>\nadd them\n</think>\n\n4<|im_end|>']);
  });

  it('pad == eos: the end-of-turn token keeps its label (masks never compare ids with pad)', () => {
    // Qwen3 with pad set to the eos token <|im_end|>.
    const base = realTokenizer('qwen3');
    expect(base.eosTokenId).toBe(151645);
    const fs = { ...base, padTokenId: base.eosTokenId };
    const e = encodeChat(fs, multiTurn);
    const eotPositions = e.inputIds.flatMap((id, i) => (id === 151645 ? [i] : []));
    const supervisedEot = eotPositions.filter((i) => e.labels[i] === 151645);
    expect(supervisedEot.length).toBe(2); // the two assistant turns; system/user <|im_end|> are not
  });

  it('per-message loss flags: loss false on an assistant turn, loss true on a user turn', () => {
    const tok = realTokenizer('qwen3', builtinTemplate('chatml'));
    const e = encodeChat(tok, [
      { role: 'user', content: 'first question', loss: true },
      { role: 'assistant', content: 'not learned', loss: false },
      { role: 'user', content: 'second' },
      { role: 'assistant', content: 'learned' },
    ]);
    expect(supervisedRuns(tok, e.inputIds, e.labels)).toEqual(['first question<|im_end|>', 'learned<|im_end|>']);
  });

  it('train on prompt supervises every token', () => {
    const tok = realTokenizer('qwen3');
    const e = encodeChat(tok, chinese, { trainOnPrompt: true });
    expect(e.labels).toEqual(e.inputIds);
  });

  it('a template error becomes a SampleError (Llama-2 requires alternating roles)', () => {
    const tok = realTokenizer('llama3', builtinTemplate('llama2'));
    expect(() => encodeChat(tok, [{ role: 'assistant', content: 'x' }])).toThrow(SampleError);
    expect(() => encodeChat(tok, [{ role: 'assistant', content: 'x' }])).toThrow(/alternate/);
  });

  it('no supervised turn is an error', () => {
    const tok = realTokenizer('qwen3');
    expect(() => encodeChat(tok, [{ role: 'user', content: 'x' }])).toThrow(/no supervised turn/);
  });

  it('pretraining text: BOS as the tokenizer defines it, eos appended, all supervised', () => {
    const q = realTokenizer('qwen3');
    const eq = encodeText(q, 'Hello world');
    expect(eq.inputIds).toEqual([9707, 1879, 151645]);
    expect(eq.labels).toEqual(eq.inputIds);
    const l = realTokenizer('llama3');
    const el = encodeText(l, 'Hello world');
    // This Llama 3 tokenizer.json's post-processor adds no BOS (matches the fixture's ids_with_special).
    expect(el.inputIds).toEqual([9906, 1917, 128001]);
    expect(() => encodeText(q, '  \n')).toThrow(/empty text/);
  });
});

describe('masks: fallback paths and random conversations', () => {
  it('a normalizer that rewrites the text (Lowercase): offsets cannot align, prefix encoding gives the same mask', () => {
    const src = fallbackTokenizerSource();
    const json = { ...(src.tokenizerJson as Record<string, unknown>), normalizer: { type: 'Lowercase' } };
    const tok = loadTokenizer({ ...src, tokenizerJson: json });
    const conv: ChatMessage[] = [{ role: 'user', content: 'Hello THERE' }, { role: 'assistant', content: 'General KENOBI' }];
    const e = encodeChat(tok, conv);
    expect(tok.offsets(e.text, e.inputIds)).toBeNull();
    expect(supervisedRuns(tok, e.inputIds, e.labels)).toEqual(['general kenobi<|im_end|>']);
  });

  // A token that straddles the start of a turn (e.g. "\n\n" = the template's "\n" + the content's "\n")
  // carries content, so it is supervised: only that first token may reach into the template's text.
  it('property: for random multi-turn conversations, each supervised run is one assistant turn + <|im_end|> (Qwen3)', () => {
    const tok = realTokenizer('qwen3', builtinTemplate('chatml'));
    const text = fc.string({ unit: fc.constantFrom('a', 'b', ' ', '\n', '你', '好', '🤖', 'é', '<', '>', '|', '1', '.', 'assistant', 'user'), minLength: 1, maxLength: 24 })
      .filter((s) => s.trim().length > 0);
    fc.assert(
      fc.property(fc.array(fc.tuple(text, text), { minLength: 1, maxLength: 3 }), fc.option(text, { nil: undefined }), (turns, system) => {
        const conv: ChatMessage[] = system ? [{ role: 'system', content: system }] : [];
        for (const [u, a] of turns) conv.push({ role: 'user', content: u }, { role: 'assistant', content: a });
        const e = encodeChat(tok, conv);
        const runs: number[][] = [];
        e.labels.forEach((l, i) => {
          if (l === IGNORE_INDEX) return;
          if (i === 0 || e.labels[i - 1] === IGNORE_INDEX) runs.push([]);
          runs[runs.length - 1]!.push(l);
        });
        expect(runs.length).toBe(turns.length);
        runs.forEach((run, k) => {
          const want = `${turns[k]![1]}<|im_end|>`;
          const got = tok.decode(run);
          expect(got.endsWith(want)).toBe(true);
          // Anything before the content comes from one straddling token: a suffix of the turn header.
          expect('assistant\n'.endsWith(got.slice(0, got.length - want.length))).toBe(true);
        });
      }),
      { numRuns: 60 },
    );
  });
});
