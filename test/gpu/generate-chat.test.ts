/**
 * The text layer over the generator: streamed text with stop strings (real Qwen3 tokenizer), and a
 * multi-turn ChatSession on a random model with that tokenizer's vocabulary: the prompt is exactly the
 * chat template with add_generation_prompt, encoded as training encodes it, and the second turn reuses
 * the cached conversation.
 */
import { describe, expect, it } from 'vitest';
import { ChatSession, encodeChatPrompt, TextStream } from '../../src/engine/generate/chat.ts';
import { Generator } from '../../src/engine/generate/generator.ts';
import { modelSpecFromConfig } from '../../src/engine/model/config.ts';
import { randomBaseWeights } from '../../src/engine/model/random-weights.ts';
import { releaseBaseWeights } from '../../src/engine/model/base-weights.ts';
import { realTokenizer } from '../unit/data/helpers.ts';
import { gpu } from '../helpers/gpu.ts';

describe('generated text', () => {
  const tok = realTokenizer('qwen3');
  const decode = (ids: number[]) => tok.decode(ids, { skipSpecialTokens: true });

  it('streams deltas that add up to the decoded text (multi-byte characters included)', () => {
    const text = 'Grüße, 你好 — emoji 🤖 done.';
    const ids = tok.encode(text, { addSpecialTokens: false });
    const s = new TextStream(decode);
    let shown = '';
    for (const id of ids) {
      const { delta, stopped } = s.push(id);
      expect(stopped).toBe(false);
      expect(delta).not.toContain('\uFFFD');
      shown += delta;
    }
    shown += s.finish();
    expect(shown).toBe(text);
  });

  it('ends at a stop string and never shows a part of it', () => {
    const ids = tok.encode('The answer is 42.\nUser: next question', { addSpecialTokens: false });
    const s = new TextStream(decode, ['\nUser:', 'never']);
    let shown = '';
    let stopped = false;
    for (const id of ids) {
      const r = s.push(id);
      shown += r.delta;
      expect(shown.includes('\nUser')).toBe(false);
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    shown += s.finish();
    expect(stopped).toBe(true);
    expect(shown).toBe('The answer is 42.');
    expect(s.text).toBe('The answer is 42.');
  });

  it('ChatSession: template prompt, streamed reply, second turn reuses the cache', async () => {
    const ctx = await gpu();
    const spec = modelSpecFromConfig({
      architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: tok.vocabSize, hidden_size: 32, intermediate_size: 64,
      num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, max_position_embeddings: 4096, rms_norm_eps: 1e-6,
      rope_theta: 1000000, tie_word_embeddings: true,
    });
    const weights = await randomBaseWeights(ctx, spec, { seed: 3, quantize: false, std: 0.5, poolValues: 1 << 16 });
    const gen = await Generator.create(ctx, weights, { maxTokens: 256 });
    const chat = new ChatSession(gen, tok, { system: 'You are terse.', templateExtra: { enable_thinking: false } });
    let streamed = '';
    const first = await chat.send('Hi there', { temperature: 0, maxNewTokens: 3 }, (d) => (streamed += d));
    const prompt1 = encodeChatPrompt(tok, [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hi there' }], { enable_thinking: false });
    expect(gen.cachedTokens.slice(0, prompt1.length)).toEqual(prompt1);
    expect(first.result.tokens.length).toBeLessThanOrEqual(3);
    expect(streamed).toBe(first.text);
    expect(chat.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
    const cachedBefore = [...gen.cachedTokens];
    const second = await chat.send('And again?', { temperature: 0, maxNewTokens: 2 });
    // Reused: the prefix the re-rendered conversation shares with the cache (the template may render a past
    // assistant turn differently from the generation prompt, e.g. Qwen3's empty think block).
    const prompt2 = encodeChatPrompt(tok, chat.conversation().slice(0, -1), { enable_thinking: false });
    let common = 0;
    while (common < Math.min(cachedBefore.length, prompt2.length - 1) && cachedBefore[common] === prompt2[common]) common++;
    expect(common).toBeGreaterThan(10);
    expect(second.result.reusedTokens).toBe(common);
    expect(second.result.promptTokens).toBe(prompt2.length);
    expect(chat.messages.length).toBe(4);
    gen.release();
    releaseBaseWeights(ctx, weights);
  }, 120_000);
});
