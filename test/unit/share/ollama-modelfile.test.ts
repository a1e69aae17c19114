/**
 * The Ollama Modelfile: its Go TEMPLATE rendered (test/helpers/go-template.ts, the text/template subset
 * Ollama templates use) with the data Ollama passes — .System, and .Messages that still hold the system
 * turn — must equal the training chat template's Jinja rendering with add_generation_prompt (bos left to
 * llama.cpp), for ChatML (Qwen2.5 with its default system prompt, plain ChatML/SmolLM2/the demo model,
 * InternLM2) and Llama 3 (3.0, and 3.1/3.2 with the dated system block), over one- and multi-turn
 * conversations with and without a system prompt. Plus the stop parameters and the SYSTEM line.
 */
import { describe, expect, it } from 'vitest';
import { ollamaModelfile } from '../../../src/engine/share/gguf.ts';
import { defaultSystemPrompt } from '../../../src/engine/generate/chat.ts';
import { builtinTemplate } from '../../../src/data/templates.ts';
import type { ChatMessage } from '../../../src/data/types.ts';
import type { ModelFamily } from '../../../src/engine/model/config.ts';
import { realTokenizer } from '../data/helpers.ts';
import { LLAMA32, QWEN25 } from '../../helpers/chat-templates.ts';
import { renderGoTemplate } from '../../helpers/go-template.ts';

function field(modelfile: string, name: 'TEMPLATE' | 'SYSTEM'): string | null {
  const m = modelfile.match(new RegExp(`^${name} """([\\s\\S]*?)"""$`, 'm'));
  return m ? m[1]! : null;
}

const CONVERSATIONS: ChatMessage[][] = [
  [{ role: 'user', content: 'Who are you?' }],
  [{ role: 'system', content: 'You are Nova, made by Ada.' }, { role: 'user', content: 'Who are you?' }],
  [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello! How can I help?' }, { role: 'user', content: 'Tell me a joke.\nA short one.' }],
  [{ role: 'system', content: 'Be terse.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hi.' }, { role: 'user', content: '2+2?' }],
];

describe('Ollama Modelfile', () => {
  const cases: [string, 'qwen3' | 'llama3', string, ModelFamily, string][] = [
    ['Qwen2.5 (default system prompt)', 'qwen3', QWEN25, 'qwen2', ''],
    ['plain ChatML (SmolLM2, the demo model on a llama family)', 'qwen3', builtinTemplate('chatml'), 'llama', ''],
    ['InternLM2 (ChatML after bos)', 'llama3', builtinTemplate('internlm2'), 'internlm2', '<|begin_of_text|>'],
    ['Llama 3', 'llama3', builtinTemplate('llama3'), 'llama', '<|begin_of_text|>'],
    ['Llama 3.1 / 3.2 (dated system block)', 'llama3', LLAMA32, 'llama', '<|begin_of_text|>'],
  ];
  for (const [name, tokName, template, family, bos] of cases) {
    it(`${name}: the Go TEMPLATE renders what the Jinja template renders`, () => {
      const tok = realTokenizer(tokName, template);
      const modelfile = ollamaModelfile({ from: 'base.gguf', adapter: './adapter.gguf', chatTemplate: template, family, defaultSystem: defaultSystemPrompt(tok) });
      const goTemplate = field(modelfile, 'TEMPLATE');
      expect(goTemplate, modelfile).not.toBeNull();
      const modelfileSystem = field(modelfile, 'SYSTEM');
      for (const conv of CONVERSATIONS) {
        const jinja = tok.applyChatTemplate(conv, { addGenerationPrompt: true });
        expect(jinja.startsWith(bos)).toBe(true);
        // Ollama: the Modelfile's SYSTEM becomes a system message when the request has none; .System
        // joins the system messages, which stay in .Messages too.
        const messages = conv[0]?.role === 'system' || modelfileSystem === null ? conv : [{ role: 'system', content: modelfileSystem }, ...conv];
        const system = messages.filter((m) => m.role === 'system').map((m) => m.content).join('\n\n');
        const go = renderGoTemplate(goTemplate!, { System: system, Messages: messages.map((m) => ({ Role: m.role, Content: m.content })) });
        expect(go, `${name}: ${JSON.stringify(conv)}`).toBe(jinja.slice(bos.length));
      }
    }, 60_000);
  }

  it('SYSTEM carries the template default, or the given system prompt; stop parameters deduplicated', () => {
    const qwen = ollamaModelfile({ from: 'qwen2.5:1.5b', adapter: './adapter.gguf', chatTemplate: QWEN25, family: 'qwen2', defaultSystem: 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.', stopStrings: ['<|im_end|>', '<|endoftext|>'] });
    expect(qwen.startsWith('FROM qwen2.5:1.5b\nADAPTER ./adapter.gguf\nTEMPLATE """')).toBe(true);
    expect(qwen).toContain('\nSYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""\n');
    expect(qwen.match(/^PARAMETER stop .*$/gm)).toEqual(['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|endoftext|>"']);
    const own = ollamaModelfile({ from: 'b', adapter: 'a', chatTemplate: QWEN25, family: 'qwen2', defaultSystem: 'ignored', system: 'You are Nova.' });
    expect(own).toContain('SYSTEM """You are Nova."""');
    const l3 = ollamaModelfile({ from: 'llama3.2:1b', adapter: 'a.gguf', chatTemplate: LLAMA32, family: 'llama', stopStrings: ['<|eot_id|>', '<|end_of_text|>', '<|eom_id|>'] });
    expect(l3).not.toContain('SYSTEM');
    expect(l3.match(/^PARAMETER stop .*$/gm)).toEqual(['PARAMETER stop "<|eot_id|>"', 'PARAMETER stop "<|start_header_id|>"', 'PARAMETER stop "<|end_header_id|>"', 'PARAMETER stop "<|end_of_text|>"', 'PARAMETER stop "<|eom_id|>"']);
    // No template in the tokenizer: the family's usual one (Qwen, InternLM2); unknown templates: a note.
    expect(ollamaModelfile({ from: 'b', adapter: 'a', chatTemplate: null, family: 'internlm2' })).toContain('<|im_start|>');
    const other = ollamaModelfile({ from: 'b', adapter: 'a', chatTemplate: builtinTemplate('llama2'), family: 'llama' });
    expect(other).toContain('# The training chat template is neither ChatML nor Llama 3');
    expect(other).not.toMatch(/^TEMPLATE/m);
  });
});
