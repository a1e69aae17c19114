/**
 * The chat layer's template-side rules, without a GPU: the default system prompt a chat template injects
 * (found by rendering), which system turn a ChatSession sends, and the stop ids (eos lists of
 * generation_config.json included).
 */
import { describe, expect, it } from 'vitest';
import { ChatSession, chatStopTokenIds, defaultSystemPrompt, generationConfigEosIds } from '../../../src/engine/generate/chat.ts';
import type { Generator } from '../../../src/engine/generate/generator.ts';
import { builtinTemplate } from '../../../src/data/templates.ts';
import { realTokenizer } from '../data/helpers.ts';
import { LLAMA32, QWEN25 } from '../../helpers/chat-templates.ts';

const noGenerator = null as unknown as Generator; // conversation() never touches the generator

describe('chat templates and the system prompt', () => {
  it('finds the default system prompt a template injects, and none where it injects none', () => {
    const qwen3 = realTokenizer('qwen3');
    expect(defaultSystemPrompt(qwen3.withChatTemplate(QWEN25))).toBe('You are Qwen, created by Alibaba Cloud. You are a helpful assistant.');
    expect(defaultSystemPrompt(realTokenizer('llama3', LLAMA32))).toBe('');
    expect(defaultSystemPrompt(qwen3)).toBeNull();
    expect(defaultSystemPrompt(realTokenizer('llama3'))).toBeNull();
    expect(defaultSystemPrompt(qwen3.withChatTemplate(builtinTemplate('chatml')))).toBeNull();
    expect(defaultSystemPrompt(realTokenizer('llama3', builtinTemplate('llama2')))).toBeNull();
    // A template that rejects a system turn (Gemma-style): no default, no crash.
    expect(defaultSystemPrompt(qwen3.withChatTemplate("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"))).toBeNull();
  }, 60_000); // loading two real tokenizers

  it('sends no system turn for the default (the prompt training rendered), and the edited text otherwise', () => {
    const tok = realTokenizer('qwen3').withChatTemplate(QWEN25);
    const chat = new ChatSession(noGenerator, tok);
    chat.messages.push({ role: 'user', content: 'Hi' });
    expect(chat.system).toBe('You are Qwen, created by Alibaba Cloud. You are a helpful assistant.');
    expect(chat.conversation()).toEqual([{ role: 'user', content: 'Hi' }]);
    chat.system = 'You are terse.';
    expect(chat.conversation()[0]).toEqual({ role: 'system', content: 'You are terse.' });
    expect(tok.applyChatTemplate(chat.conversation(), { addGenerationPrompt: true })).toBe('<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    chat.system = ''; // over a default: an explicit empty system turn, so the default is really gone
    expect(tok.applyChatTemplate(chat.conversation(), { addGenerationPrompt: true })).toBe('<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    const plain = new ChatSession(noGenerator, realTokenizer('qwen3'));
    plain.messages.push({ role: 'user', content: 'Hi' });
    expect(plain.system).toBe('');
    expect(plain.conversation()).toEqual([{ role: 'user', content: 'Hi' }]);
  }, 60_000);

  it('stop ids: the tokenizer\'s end-of-turn tokens plus eos lists of config.json and generation_config.json', () => {
    const tok = realTokenizer('llama3');
    expect(generationConfigEosIds('{"eos_token_id": [128001, 128008, 128009], "do_sample": true}')).toEqual([128001, 128008, 128009]);
    expect(generationConfigEosIds('{"eos_token_id": 2}')).toEqual([2]);
    expect(generationConfigEosIds('{"temperature": 0.6}')).toEqual([]);
    expect(() => generationConfigEosIds('{"eos_token_id": ["</s>"]}', 'm/generation_config.json')).toThrow(/m\/generation_config.json: 'eos_token_id'/);
    expect(() => generationConfigEosIds('{oops', 'm/generation_config.json')).toThrow(/m\/generation_config.json: not valid JSON/);
    const ids = chatStopTokenIds(tok, [128001], generationConfigEosIds('{"eos_token_id": [128001, 128008, 128009]}'));
    for (const id of [...tok.eosTokenIds, 128001, 128008, 128009]) expect(ids).toContain(id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(new ChatSession(noGenerator, tok, { stopTokenIds: ids }).stopTokenIds).toEqual(ids);
  }, 60_000);
});
