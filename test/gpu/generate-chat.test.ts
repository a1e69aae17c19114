/**
 * The text layer over the generator: streamed text with stop strings (real Qwen3 tokenizer), and a
 * multi-turn ChatSession on a random model with that tokenizer's vocabulary: the prompt is exactly the
 * chat template with add_generation_prompt, encoded as training encodes it, and the second turn reuses
 * the cached conversation; a stop string spanning several tokens, a list of stop ids and a stop request
 * (abort) end the reply, the partial reply staying in the conversation; the engine session's
 * stopGeneration reaches a running reply.
 */
import { describe, expect, it } from 'vitest';
import { ChatSession, encodeChatPrompt, TextStream } from '../../src/engine/generate/chat.ts';
import { Generator } from '../../src/engine/generate/generator.ts';
import { modelSpecFromConfig } from '../../src/engine/model/config.ts';
import { randomBaseWeights } from '../../src/engine/model/random-weights.ts';
import { releaseBaseWeights } from '../../src/engine/model/base-weights.ts';
import { realTokenizer } from '../unit/data/helpers.ts';
import { gpu } from '../helpers/gpu.ts';
import { EngineSession } from '../../src/engine/session.ts';

describe('generated text', () => {
  const tok = realTokenizer('qwen3');
  const decode = (ids: number[]) => tok.decode(ids, { skipSpecialTokens: true });
  /** A tiny random Qwen3 with the real tokenizer's vocabulary: replies are real text pieces. */
  const qwen3Spec = () =>
    modelSpecFromConfig({
      architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: tok.vocabSize, hidden_size: 32, intermediate_size: 64,
      num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, max_position_embeddings: 4096, rms_norm_eps: 1e-6,
      rope_theta: 1000000, tie_word_embeddings: true,
    });

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
    const spec = qwen3Spec();
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

  it('a stop string spanning several tokens, a list of stop ids and a stop request end the reply; the partial reply stays', async () => {
    const ctx = await gpu();
    const weights = await randomBaseWeights(ctx, qwen3Spec(), { seed: 5, quantize: false, std: 0.5, poolValues: 1 << 16 });
    const gen = await Generator.create(ctx, weights, { maxTokens: 256 });
    const extra = { templateExtra: { enable_thinking: false } };
    const greedy = { temperature: 0, maxNewTokens: 12, stopTokenIds: [] as number[] };
    const full = await new ChatSession(gen, tok, extra).send('Say something', greedy);
    expect(full.result.tokens.length).toBe(12);
    // A stop string from inside token 2's text to inside token 5's text: several tokens long.
    const ids = full.result.tokens;
    const startAt = decode(ids.slice(0, 2)).length + Math.min(1, decode(ids.slice(2, 3)).length - 1);
    const endAt = decode(ids.slice(0, 5)).length - Math.min(1, decode(ids.slice(4, 5)).length - 1);
    const stopString = full.text.slice(startAt, endAt);
    expect(tok.encode(stopString).length, `stop string ${JSON.stringify(stopString)}`).toBeGreaterThan(1);
    const chat = new ChatSession(gen, tok, extra);
    let streamed = '';
    const cut = await chat.send('Say something', { ...greedy, stopStrings: ['never appears', stopString] }, (d) => (streamed += d));
    expect(cut.result.finishReason).toBe('stop');
    expect(cut.text).toBe(full.text.slice(0, full.text.indexOf(stopString)));
    expect(streamed).toBe(cut.text); // no part of the stop string was ever shown
    expect(chat.messages.at(-1)).toEqual({ role: 'assistant', content: cut.text });
    // eos as a list: any of its ids ends the reply (here the reply's 4th token), included in the tokens.
    const eos = await new ChatSession(gen, tok, { ...extra, stopTokenIds: [tok.vocabSize - 1, ids[3]!] }).send('Say something', { temperature: 0, maxNewTokens: 12 });
    expect(eos.result.finishReason).toBe('eos');
    expect(eos.result.tokens).toEqual(ids.slice(0, 4));
    // A stop request arriving between tokens (as the worker's stopGeneration call does): the partial reply stays.
    const ac = new AbortController();
    const stopped = new ChatSession(gen, tok, extra);
    let deltas = 0;
    const r = await stopped.send('Say something', { ...greedy, maxNewTokens: 200 }, () => void (++deltas === 2 && setTimeout(() => ac.abort(), 0)), ac.signal);
    expect(r.result.finishReason).toBe('abort');
    expect(r.result.tokens.length).toBeLessThan(200);
    expect(full.text.startsWith(r.text) || r.text.startsWith(full.text)).toBe(true);
    expect(stopped.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
    expect(stopped.messages[1]!.content).toBe(r.text);
    gen.release();
    releaseBaseWeights(ctx, weights);
  }, 180_000);

  it('EngineSession: stopGeneration ends the running reply; the conversation goes on; the system prompt resets it', async () => {
    const ctx = await gpu();
    const engine = new EngineSession(ctx);
    await engine.loadDemoModel(1);
    expect(engine.chatDefaultSystem()).toBeNull(); // the demo's plain ChatML has none
    let deltas = 0;
    const turn = await engine.chatTurn('base', 'Hello', { temperature: 0.7, seed: 3, maxNewTokens: 400, stopTokenIds: [] }, () => void (++deltas === 3 && setTimeout(() => engine.stopGeneration(), 0)));
    expect(turn.finishReason).toBe('abort');
    expect(turn.tokens).toBeLessThan(400);
    expect(turn.tokensPerSecond).toBeGreaterThan(0);
    const next = await engine.chatTurn('base', 'And?', { temperature: 0, maxNewTokens: 3 });
    // The second turn's prompt holds the first turn: the user's text and the partial answer.
    expect(next.promptTokens).toBeGreaterThan(turn.tokens + 'Hello'.length);
    engine.resetChat('base', 'You are Nova.');
    const fresh = await engine.chatTurn('base', 'Hello', { temperature: 0, maxNewTokens: 2 });
    // ChatML bytes: "<|im_start|>system\nYou are Nova.<|im_end|>\n" precedes the user turn now.
    expect(fresh.promptTokens).toBeLessThan(next.promptTokens + 40);
    expect(fresh.promptTokens).toBeGreaterThan('You are Nova.'.length);
    engine.unload();
  }, 180_000);
});
