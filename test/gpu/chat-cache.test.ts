/**
 * Chat keeps its KV cache across turns: a follow-up turn prefills only its new tokens and answers exactly
 * as a full prefill of the whole conversation does (greedy, demo model); base and tuned turns alternating
 * keep each side's cache; the tuned cache is emptied whenever the adapter's weights change (an import, a
 * training step), so answers match a fresh session.
 */
import { describe, expect, it } from 'vitest';
import { EngineSession, type EvalAnswers } from '../../src/engine/session.ts';
import { ChatSession, chatStopTokenIds } from '../../src/engine/generate/chat.ts';
import { Generator } from '../../src/engine/generate/generator.ts';
import { DEMO_MODEL_ID, demoModelFiles } from '../../src/engine/demo/demo-model.ts';
import { loadBaseWeights, releaseBaseWeights } from '../../src/engine/model/base-weights.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { CheckpointIndex } from '../../src/engine/model/weights.ts';
import { expectedLoraTensors, loraModules, type PeftLoraConfig, type PeftTensor } from '../../src/engine/model/peft.ts';
import { exportAdapterZip } from '../../src/engine/share/adapter-zip.ts';
import { seededGaussian } from '../../src/engine/random.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { tokenizerSourceFromFiles } from '../../src/data/tokenizer-files.ts';
import { bytesSource } from '../../src/formats/bytes.ts';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import { gpu } from '../helpers/gpu.ts';
import { identityDataset } from '../helpers/identity.ts';

const files = demoModelFiles(1);
const spec = parseModelConfig(files.get('config.json') as string, 'demo config.json');
const greedy = { temperature: 0, maxNewTokens: 10, seed: 3 };

/** The demo model's weights and tokenizer, as the session loads them. */
async function demoModel(ctx: GpuContext) {
  const bytes = (name: string) => {
    const f = files.get(name);
    if (f === undefined) throw new Error(`demo model: no file ${name}`);
    return typeof f === 'string' ? new TextEncoder().encode(f) : f;
  };
  const index = await CheckpointIndex.open(spec, async (name) => bytesSource(bytes(name), name), [...files.keys()]);
  const weights = await loadBaseWeights(ctx, index, { quantize: false });
  const tokFiles = new Map([...files].filter(([name]) => name.startsWith('tokenizer') || name.startsWith('chat_template') || name === 'special_tokens_map.json'));
  return { weights, tokenizer: loadTokenizer(tokenizerSourceFromFiles(tokFiles, DEMO_MODEL_ID)) };
}

/** A random adapter for the demo model (B non-zero, so it changes the answers). */
function randomAdapter(seed: number): Uint8Array {
  const config: PeftLoraConfig = { r: 4, loraAlpha: 8, loraDropout: 0, targetModules: loraModules(spec.family), baseModelNameOrPath: DEMO_MODEL_ID };
  const tensors = new Map<string, PeftTensor>();
  expectedLoraTensors(spec, config).forEach((e, i) => tensors.set(e.key, { shape: e.shape, data: seededGaussian(e.shape[0] * e.shape[1], seed + i, 0.3) }));
  return exportAdapterZip({ spec, config, tensors, chat: { chatTemplate: null, stopTokenIds: [258], stopStrings: ['<|im_end|>'] } });
}

describe('chat KV cache across turns', () => {
  it('a follow-up turn prefills only its new tokens and answers exactly as a full prefill of the conversation', async () => {
    const ctx = await gpu();
    const { weights, tokenizer } = await demoModel(ctx);
    const stopTokenIds = chatStopTokenIds(tokenizer, spec.eosTokenIds);
    const cachedGen = await Generator.create(ctx, weights, { maxTokens: 512 });
    const chat = new ChatSession(cachedGen, tokenizer, { stopTokenIds });
    const first = await chat.send('Hello', greedy);
    expect(first.result.reusedTokens).toBe(0);
    // Longer than several append chunks (16 tokens each) of the byte-level demo tokenizer.
    const followUp = 'Now tell me, in a few words, who made you and what you can do?';
    const t0 = performance.now();
    const second = await chat.send(followUp, greedy);
    const cachedMs = performance.now() - t0;
    const r = second.result;
    expect(r.reusedTokens).toBeGreaterThanOrEqual(first.result.promptTokens);
    expect(r.promptTokens - r.reusedTokens).toBeGreaterThan(16 * 2);
    expect(cachedGen.cachedTokens.length).toBe(r.promptTokens + r.tokens.length - 1);

    // The same conversation prefilled whole by a fresh generator.
    const freshGen = await Generator.create(ctx, weights, { maxTokens: 512 });
    const fresh = new ChatSession(freshGen, tokenizer, { stopTokenIds });
    fresh.messages.push(...chat.messages.slice(0, 2));
    const t1 = performance.now();
    const full = await fresh.send(followUp, greedy);
    const fullMs = performance.now() - t1;
    expect(full.result.reusedTokens).toBe(0);
    expect(full.result.promptTokens).toBe(r.promptTokens);
    expect(r.tokens).toEqual(full.result.tokens);
    expect(second.text).toBe(full.text);
    // The last next-token logits agree too (append passes vs flash-attention prefill: rounding only).
    const a = await cachedGen.readLogits();
    const b = await freshGen.readLogits();
    let maxDiff = 0;
    let maxAbs = 0;
    for (let i = 0; i < a.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
      maxAbs = Math.max(maxAbs, Math.abs(b[i]!));
    }
    expect(maxDiff).toBeLessThan(1e-4 * Math.max(1, maxAbs));
    console.log(`follow-up turn: ${r.promptTokens} prompt tokens, ${r.promptTokens - r.reusedTokens} prefilled (${r.reusedTokens} cached): ${cachedMs.toFixed(0)} ms, prefill ${r.prefillMs.toFixed(0)} ms; full prefill: ${fullMs.toFixed(0)} ms, prefill ${full.result.prefillMs.toFixed(0)} ms`);
    cachedGen.release();
    freshGen.release();
    releaseBaseWeights(ctx, weights);
  }, 300_000);

  it('alternating base and tuned turns keep each side cache; importing another adapter empties the tuned one', async () => {
    const ctx = await gpu();
    const engine = new EngineSession(ctx);
    await engine.loadDemoModel(1);
    await engine.importAdapter(randomAdapter(100), 'a.zip');
    const b1 = await engine.chatTurn('base', 'Hello', greedy);
    const t1 = await engine.chatTurn('tuned', 'Hello', greedy);
    const b2 = await engine.chatTurn('base', 'And then?', greedy);
    const t2 = await engine.chatTurn('tuned', 'And then?', greedy);
    expect([b1.reusedTokens, t1.reusedTokens]).toEqual([0, 0]);
    expect(b1.prefilledTokens).toBe(b1.promptTokens);
    // Each side's second turn found its first turn in its own cache, though the other side answered in between.
    expect(b2.reusedTokens).toBeGreaterThanOrEqual(b1.promptTokens);
    expect(t2.reusedTokens).toBeGreaterThanOrEqual(t1.promptTokens);
    expect(b2.prefilledTokens).toBe(b2.promptTokens - b2.reusedTokens);
    expect(t2.prefilledTokens).toBe(t2.promptTokens - t2.reusedTokens);
    expect(t1.text).not.toBe(b1.text);

    // The same conversations, one side at a time, in a fresh session: the same answers.
    const solo = new EngineSession(ctx);
    await solo.loadDemoModel(1);
    await solo.importAdapter(randomAdapter(100), 'a.zip');
    expect((await solo.chatTurn('tuned', 'Hello', greedy)).text).toBe(t1.text);
    expect((await solo.chatTurn('tuned', 'And then?', greedy)).text).toBe(t2.text);
    expect((await solo.chatTurn('base', 'Hello', greedy)).text).toBe(b1.text);
    expect((await solo.chatTurn('base', 'And then?', greedy)).text).toBe(b2.text);
    solo.unload();

    // Another adapter: a new tuned conversation whose prompt the cache holds a prefix of (computed with the
    // old adapter) — none of it may be reused. The base side keeps its cache.
    await engine.importAdapter(randomAdapter(200), 'b.zip');
    const t3 = await engine.chatTurn('tuned', 'Hello', greedy);
    expect(t3.reusedTokens).toBe(0);
    const b3 = await engine.chatTurn('base', 'More?', greedy);
    expect(b3.reusedTokens).toBeGreaterThanOrEqual(b2.promptTokens);
    const other = new EngineSession(ctx);
    await other.loadDemoModel(1);
    await other.importAdapter(randomAdapter(200), 'b.zip');
    expect((await other.chatTurn('tuned', 'Hello', greedy)).text).toBe(t3.text);
    other.unload();
    engine.unload();
  }, 300_000);

  it('training steps empty the tuned cache: each evaluation answers with the weights of its step', async () => {
    const ctx = await gpu();
    const engine = new EngineSession(ctx);
    await engine.loadDemoModel(1);
    const data = identityDataset(engine.tokenizerSource()!, 128);
    const evals: EvalAnswers[] = [];
    // The same prompt every step: its tokens sit in the tuned cache, computed with the previous step's weights.
    const result = await engine.train(data.train, { loraRank: 8, loraAlpha: 16, loraDropout: 0, lr: 5e-2, epochs: 1, microBatch: 4, gradAccum: 1, warmupRatio: 0 }, undefined, {
      prompts: ['Who are you?'],
      every: 1,
      settings: { maxNewTokens: 12 },
      onAnswers: (a) => evals.push(a),
    });
    expect(evals.length).toBe(result.steps);
    expect(result.steps).toBeGreaterThan(1);
    const last = evals.at(-1)!.answers[0]!.answer;
    // The answer changes from step to step (so a cache kept from an earlier step would show).
    expect(new Set(evals.map((e) => e.answers[0]!.answer)).size).toBeGreaterThan(1);
    // The final weights in a fresh session (exported and imported): the same answer as the last evaluation.
    const fresh = new EngineSession(ctx);
    await fresh.loadDemoModel(1);
    await fresh.importAdapter(await engine.exportAdapter(), 'trained.zip');
    const reference = await fresh.chatTurn('tuned', 'Who are you?', { temperature: 0, maxNewTokens: 12 });
    expect(reference.reusedTokens).toBe(0);
    expect(last).toBe(reference.text);
    // Chat after training answers the same.
    const chat = await engine.chatTurn('tuned', 'Who are you?', { temperature: 0, maxNewTokens: 12 });
    expect(chat.text).toBe(reference.text);
    fresh.unload();
    engine.unload();
  }, 600_000);
});
