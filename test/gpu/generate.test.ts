/**
 * The KV-cache generator against the full forward (Transformer 'logits' plan over the whole sequence) on
 * the reference fixtures with their LoRA adapters: the logits after the prompt's prefill, after each
 * one-token decode step, after an append (a follow-up turn attending to the cache); the adapter swapped
 * out for the base model without reloading; and generate()'s greedy tokens, lookahead and cache reuse.
 */
import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import { createOptimizerState } from '../../src/engine/kernels/adamw.ts';
import { Generator } from '../../src/engine/generate/generator.ts';
import { loadBaseWeights, releaseBaseWeights, type BaseWeights } from '../../src/engine/model/base-weights.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { LoraLayout } from '../../src/engine/model/lora-layout.ts';
import { readPeftAdapter } from '../../src/engine/model/peft.ts';
import { Transformer, type LoraRuntime } from '../../src/engine/model/transformer.ts';
import { CheckpointIndex } from '../../src/engine/model/weights.ts';
import { batchFromMask, argmax } from '../../src/engine/reference-run.ts';
import { directoryAccess } from '../../src/node/fixture-dir.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { expectClose, freshSeed, rng } from '../helpers/numeric.ts';

async function text(io: ReturnType<typeof directoryAccess>, name: string): Promise<string> {
  const src = await io.open(name);
  return new TextDecoder().decode(await src.read(0, src.size));
}

async function loadFixture(ctx: GpuContext, family: string, quantize = false): Promise<{ weights: BaseWeights; lora: LoraRuntime }> {
  const io = directoryAccess(fixturesDir(family));
  const spec = parseModelConfig(await text(io, 'config.json'));
  const weights = await loadBaseWeights(ctx, await CheckpointIndex.open(spec, io.open), { quantize });
  // adapter_after_5_steps: its lora_B is trained (nonzero), so the adapter visibly changes the logits.
  const dir = 'adapter_after_5_steps';
  const adapter = await readPeftAdapter(await text(io, `${dir}/adapter_config.json`), await io.open(`${dir}/adapter_model.safetensors`), spec);
  const layout = new LoraLayout(spec, adapter.config);
  const state = createOptimizerState(ctx, layout.optimizer);
  ctx.write(state.params, layout.packPeft(adapter.tensors));
  return { weights, lora: { layout, params: state.params, grads: state.grads } };
}

/** Logits [seq, vocab] of the full forward over `ids`. */
async function fullLogits(ctx: GpuContext, model: Transformer, ids: number[]): Promise<Float32Array> {
  const plan = await model.plan({ batch: 1, seq: ids.length }, 'logits');
  plan.setBatch(batchFromMask(Int32Array.from(ids), null, ids.length));
  await ctx.run(plan.dispatches);
  const out = await ctx.read(plan.logits!);
  plan.release();
  return out;
}

describe('generator: KV cache vs full forward', () => {
  for (const family of ['llama', 'qwen2', 'qwen3'] as const) {
    it(`${family} + LoRA: prefill, decode steps, append, base swap`, async () => {
      const ctx = await gpu();
      const seed = freshSeed();
      const r = rng(seed);
      const { weights, lora } = await loadFixture(ctx, family);
      const V = weights.spec.vocabSize;
      const rand = (n: number) => Array.from({ length: n }, () => Math.floor(r() * V));
      const gen = await Generator.create(ctx, weights, { maxTokens: 40, lora, appendChunk: 4 });
      const prompt = rand(7);
      const steps = rand(4);
      const follow = rand(6); // two append passes (4 + 2)
      const last = rand(1);
      const all = [...prompt, ...steps, ...follow, ...last];
      const tuned = await fullLogits(ctx, new Transformer(ctx, weights, lora), all);
      const row = (full: Float32Array, i: number) => full.subarray(i * V, (i + 1) * V);
      const msg = (what: string) => `${family} ${what} (seed ${seed})`;

      await gen.feed(prompt);
      expectClose(await gen.readLogits(), row(tuned, prompt.length - 1), 1e-4, msg('prefill'));
      for (const [i, id] of steps.entries()) {
        await gen.decodeOne(id);
        expectClose(await gen.readLogits(), row(tuned, prompt.length + i), 1e-4, msg(`decode step ${i}`));
      }
      await gen.feed(follow);
      expectClose(await gen.readLogits(), row(tuned, prompt.length + steps.length + follow.length - 1), 1e-4, msg('append'));
      await gen.decodeOne(last[0]!);
      expectClose(await gen.readLogits(), row(tuned, all.length - 1), 1e-4, msg('decode after append'));
      expect(gen.cachedTokens).toEqual(all);

      // The base model, same generator and base weights: the adapter is switched off without reloading.
      gen.setLora(null);
      const base = await fullLogits(ctx, new Transformer(ctx, weights, null), all);
      await gen.feed(prompt);
      expectClose(await gen.readLogits(), row(base, prompt.length - 1), 1e-4, msg('base prefill'));
      await gen.decodeOne(steps[0]!);
      expectClose(await gen.readLogits(), row(base, prompt.length), 1e-4, msg('base decode'));
      // ... and the adapter really matters here.
      let diff = 0;
      for (let i = 0; i < V; i++) diff = Math.max(diff, Math.abs(base[i]! - tuned[i]!));
      expect(diff, msg('LoRA changes the logits')).toBeGreaterThan(1e-3);

      // generate(): greedy tokens equal the argmax of the full forward over prompt + tokens so far.
      gen.setLora(lora);
      const res = await gen.generate(prompt, { temperature: 0, maxNewTokens: 6 });
      expect(res.tokens.length).toBe(6);
      expect(res.finishReason).toBe('length');
      const check = await fullLogits(ctx, new Transformer(ctx, weights, lora), [...prompt, ...res.tokens.slice(0, -1)]);
      for (let t = 0; t < 6; t++) expect(res.tokens[t], msg(`greedy token ${t}`)).toBe(argmax(row(check, prompt.length - 1 + t)));
      // A follow-up reuses the cached prefix (the prompt and the fed reply tokens).
      const again = await gen.generate([...prompt, ...res.tokens, ...rand(3)], { temperature: 0, maxNewTokens: 2 });
      expect(again.reusedTokens).toBe(prompt.length + 5);
      gen.release();
      releaseBaseWeights(ctx, weights);
    }, 120_000);
  }

  // Without an adapter, decode takes the fused gate/up/SwiGLU GEMV; with one, the GEMVs with the LoRA epilogue.
  for (const withLora of [true, false])
  it(`llama, 4-bit base${withLora ? ' + LoRA' : ''}: prefill (tiled q4${withLora ? ' + LoRA epilogue' : ''}), decode (GEMV${withLora ? ' + LoRA epilogue' : ', gate/up/SwiGLU fused'}), append`, async () => {
    const ctx = await gpu();
    const seed = freshSeed();
    const r = rng(seed);
    const loaded = await loadFixture(ctx, 'llama', true);
    const weights = loaded.weights;
    const lora = withLora ? loaded.lora : null;
    expect(weights.layers[0]!.proj.q.kind).toBe('q4');
    const V = weights.spec.vocabSize;
    const rand = (n: number) => Array.from({ length: n }, () => Math.floor(r() * V));
    const gen = await Generator.create(ctx, weights, { maxTokens: 32, lora, appendChunk: 4 });
    const prompt = rand(9);
    const steps = rand(3);
    const follow = rand(3);
    const all = [...prompt, ...steps, ...follow];
    const full = await fullLogits(ctx, new Transformer(ctx, weights, lora), all);
    const row = (i: number) => full.subarray(i * V, (i + 1) * V);
    await gen.feed(prompt);
    expectClose(await gen.readLogits(), row(prompt.length - 1), 1e-4, `q4 prefill (seed ${seed})`);
    for (const [i, id] of steps.entries()) {
      await gen.decodeOne(id);
      expectClose(await gen.readLogits(), row(prompt.length + i), 1e-4, `q4 decode ${i} (seed ${seed})`);
    }
    await gen.feed(follow);
    expectClose(await gen.readLogits(), row(all.length - 1), 1e-4, `q4 append (seed ${seed})`);
    gen.release();
    releaseBaseWeights(ctx, weights);
  }, 120_000);

  it('sampling with a seed is reproducible through generate; stop ids end the reply', async () => {
    const ctx = await gpu();
    const { weights, lora } = await loadFixture(ctx, 'qwen2');
    const gen = await Generator.create(ctx, weights, { maxTokens: 64, lora });
    const prompt = [1, 2, 3, 4, 5, 6];
    const settings = { temperature: 1.5, topK: 30, topP: 0.95, seed: 99, maxNewTokens: 12 };
    const a = await gen.generate(prompt, settings);
    const b = await gen.generate(prompt, settings);
    expect(b.tokens).toEqual(a.tokens);
    expect(b.reusedTokens).toBe(prompt.length - 1);
    const c = await gen.generate(prompt, { ...settings, seed: 100 });
    expect(c.tokens).not.toEqual(a.tokens);
    // Stop on the 4th token of run a (as if it were an end-of-turn id): the reply ends there.
    const stopId = a.tokens[3]!;
    const firstAt = a.tokens.indexOf(stopId);
    const d = await gen.generate(prompt, { ...settings, stopTokenIds: [stopId] });
    expect(d.finishReason).toBe('eos');
    expect(d.tokens).toEqual(a.tokens.slice(0, firstAt + 1));
    // onToken → true stops too; the abort signal as well.
    const e = await gen.generate(prompt, settings, (_id, i) => i === 2);
    expect(e.finishReason).toBe('stop');
    expect(e.tokens).toEqual(a.tokens.slice(0, 3));
    const ac = new AbortController();
    const f = await gen.generate(prompt, settings, (_id, i) => void (i === 1 && ac.abort()), ac.signal);
    expect(f.finishReason).toBe('abort');
    expect(f.tokens).toEqual(a.tokens.slice(0, 2));
    // The async iterator yields the same tokens.
    const streamed: number[] = [];
    for await (const id of gen.stream(prompt, settings)) streamed.push(id);
    expect(streamed).toEqual(a.tokens);
    gen.release();
    releaseBaseWeights(ctx, weights);
  }, 120_000);
});
