/**
 * Training-engine checks beyond the PyTorch fixtures: LoRA dropout's gradient is the gradient of the loss
 * the same masks produce (finite differences with the seed held), and a short run lowers the loss.
 */
import { describe, expect, it } from 'vitest';
import { directoryAccess } from '../../src/node/fixture-dir.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { CheckpointIndex } from '../../src/engine/model/weights.ts';
import { loadBaseWeights, type BaseWeights } from '../../src/engine/model/base-weights.ts';
import { LoraLayout } from '../../src/engine/model/lora-layout.ts';
import { loraModules } from '../../src/engine/model/peft.ts';
import { createOptimizerState, prepareZeroGrad } from '../../src/engine/kernels/adamw.ts';
import { Transformer } from '../../src/engine/model/transformer.ts';
import { initLoraParams, Trainer, type TrainRow } from '../../src/engine/train/trainer.ts';
import { planMemory } from '../../src/engine/model/memory-plan.ts';
import type { GpuContext } from '../../src/engine/gpu/context.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { expectClose, freshSeed, rng } from '../helpers/numeric.ts';
import { fileMomentStore } from '../../src/engine/train/moments.ts';
import { nodeSyncFile } from '../../src/node/sync-file.ts';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

async function fixtureModel(ctx: GpuContext, family: string, quantize = false): Promise<BaseWeights> {
  const io = directoryAccess(fixturesDir(family));
  const src = await io.open('config.json');
  const spec = parseModelConfig(new TextDecoder().decode(await src.read(0, src.size)));
  return loadBaseWeights(ctx, await CheckpointIndex.open(spec, io.open), { quantize });
}

/** Rows following a fixed next-token rule, so a model can learn them. */
function patternRows(n: number, len: number, vocab: number): TrainRow[] {
  return Array.from({ length: n }, (_, r) => {
    const ids = new Int32Array(len);
    let t = 3 + ((r * 37) % (vocab - 3));
    for (let i = 0; i < len; i++) {
      ids[i] = t;
      t = 3 + ((t * 7 + 11) % (vocab - 3));
    }
    const labels = ids.map((x, i) => (i < 2 ? -100 : x));
    return { inputIds: ids, labels, positionIds: Int32Array.from({ length: len }, (_, i) => i), documentIds: new Int32Array(len) };
  });
}

/** A rank-4 adapter on every module with random A and a non-zero B (so that dA is non-zero too), and its optimizer state. */
function randomAdapter(ctx: GpuContext, weights: BaseWeights) {
  const layout = new LoraLayout(weights.spec, { r: 4, loraAlpha: 8, targetModules: loraModules(weights.spec.family) });
  const state = createOptimizerState(ctx, layout.optimizer);
  const seed = freshSeed();
  const params = initLoraParams(layout, seed);
  const r = rng(seed);
  for (const g of layout.groups) for (const m of g.members) { const s = layout.optimizer.slot(m.bName); for (let i = 0; i < s.length; i++) params[s.offset + i] = (r() - 0.5) * 0.2; }
  return { layout, state, seed, params, r };
}

describe('training engine', () => {
  // The 4-bit base takes other kernels: the adapter's s·U·Bᵀ fused into the q4 matmul, and without dropout
  // s·G·A fused into the q4 dX.
  for (const [quantize, dropout] of [[false, 0.3], [true, 0.3], [true, 0]] as const)
  it(`${dropout ? 'with lora_dropout, ' : ''}gradients match finite differences of the loss${dropout ? ' under the same masks' : ''} (${quantize ? '4-bit' : 'f32'} base)`, async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'llama', quantize);
    const spec = weights.spec;
    const { layout, state, seed, params, r } = randomAdapter(ctx, weights);
    ctx.write(state.params, params);
    const model = new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads, dropout });
    const plan = await model.plan({ batch: 1, seq: 12 }, 'train');
    const [row] = patternRows(1, 12, spec.vocabSize);
    plan.setBatch({ ...row!, labels: row!.labels });
    const zero = await prepareZeroGrad(ctx, state.grads, 0, layout.optimizer.total);
    const lossAt = async (p: Float32Array) => {
      ctx.write(state.params, p);
      plan.setDropoutSeed(1234);
      await ctx.run([zero, ...plan.dispatches]);
      return (await ctx.read(plan.loss!))[0]!;
    };
    await lossAt(params);
    const grads = await ctx.read(state.grads);
    // Dropout really changes the loss (the masks are on), and the same seed reproduces it exactly.
    const l0 = await lossAt(params);
    expect(await lossAt(params)).toBe(l0);
    plan.setDropoutSeed(99);
    ctx.write(state.params, params);
    await ctx.run([zero, ...plan.dispatches]);
    if (dropout) expect((await ctx.read(plan.loss!))[0]).not.toBe(l0);
    // Central differences on a few entries of an A and a B (f32 forward: eps large enough to beat rounding).
    const probes = [layout.groups[0]!.aName, layout.groups[3]!.members[0]!.bName, layout.groups[6]!.aName];
    for (const name of probes) {
      const slot = layout.optimizer.slot(name);
      const i = slot.offset + Math.floor(r() * slot.length);
      const eps = 1e-2;
      const plus = params.slice(); plus[i]! += eps;
      const minus = params.slice(); minus[i]! -= eps;
      const fd = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * eps);
      expect(Math.abs(fd - grads[i]!), `${name}[${i - slot.offset}]: fd ${fd} vs grad ${grads[i]} (seed ${seed})`).toBeLessThan(2e-3 + 0.05 * Math.abs(fd));
    }
    plan.release();
  }, 300_000);

  it('keeping each layer\'s attention output for the backward changes no bit of the loss or the gradients', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'qwen2', true);
    const spec = weights.spec;
    const { layout, state, seed, params } = randomAdapter(ctx, weights);
    // Two rows, the second packed with two documents (positions restart).
    const [a, b] = patternRows(2, 13, spec.vocabSize);
    const cat = (x: Int32Array, y: Int32Array) => Int32Array.from([...x, ...y]);
    const batch = {
      inputIds: cat(a!.inputIds, b!.inputIds),
      labels: cat(a!.labels!, b!.labels!),
      positionIds: cat(a!.positionIds, Int32Array.from({ length: 13 }, (_, i) => (i < 6 ? i : i - 6))),
      documentIds: cat(a!.documentIds, Int32Array.from({ length: 13 }, (_, i) => (i < 6 ? 0 : 1))),
    };
    const zero = await prepareZeroGrad(ctx, state.grads, 0, layout.optimizer.total);
    const results: { loss: number; grads: Float32Array }[] = [];
    for (const keepAttention of [true, false]) {
      const model = new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads, dropout: 0.2 }, { keepAttention });
      const plan = await model.plan({ batch: 2, seq: 13 }, 'train');
      ctx.write(state.params, params);
      plan.setBatch(batch);
      plan.setDropoutSeed(seed);
      await ctx.run([zero, ...plan.dispatches]);
      results.push({ loss: (await ctx.read(plan.loss!))[0]!, grads: await ctx.read(state.grads) });
      plan.release();
    }
    expect(results[0]!.grads.some((g) => g !== 0)).toBe(true);
    expect(results[0]!.loss, `seed ${seed}`).toBe(results[1]!.loss);
    expect(Buffer.from(results[0]!.grads.buffer).equals(Buffer.from(results[1]!.grads.buffer)), `seed ${seed}`).toBe(true);
  }, 300_000);

  it('the adapters\' rank-r products as panels give the loss and gradients of the split-K kernels (InternLM2: wqkv\'s q/k/v sum one G; dropout)', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'internlm2', true);
    const spec = weights.spec;
    const { layout, state, seed, params } = randomAdapter(ctx, weights);
    const [row] = patternRows(1, 19, spec.vocabSize);
    const zero = await prepareZeroGrad(ctx, state.grads, 0, layout.optimizer.total);
    const results: { loss: number; grads: Float32Array; panels: number }[] = [];
    for (const loraPanels of [false, true]) {
      const model = new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads, dropout: 0.2 }, { loraPanels });
      const plan = await model.plan({ batch: 1, seq: 19 }, 'train');
      ctx.write(state.params, params);
      plan.setBatch({ ...row!, labels: row!.labels });
      plan.setDropoutSeed(seed);
      await ctx.run([zero, ...plan.dispatches]);
      results.push({ loss: (await ctx.read(plan.loss!))[0]!, grads: await ctx.read(state.grads), panels: plan.dispatches.filter((d) => d.label.includes('panels')).length });
      plan.release();
    }
    const [split, panels] = results as [(typeof results)[0], (typeof results)[0]];
    expect(split.panels).toBe(0);
    expect(panels.panels).toBeGreaterThan(0);
    expect(split.grads.some((g) => g !== 0)).toBe(true);
    expect(Math.abs(panels.loss - split.loss), `seed ${seed}`).toBeLessThan(1e-5 * Math.abs(split.loss));
    expectClose(panels.grads, split.grads, 1e-4, `seed ${seed}`);
  }, 300_000);

  it('the recompute stops where the backward stops reading: no down projection or residual add, no last layer', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'llama', true);
    const { layout, state } = randomAdapter(ctx, weights);
    const plan = await new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads }, { matmulPrecision: 'f32' }).plan({ batch: 1, seq: 8 }, 'train');
    const { layers, hidden: H, intermediate: I } = weights.spec;
    const count = (label: string) => plan.dispatches.filter((d) => d.label === label).length;
    // This fixture's down projection is f32 (its intermediate size is no multiple of 64): one matmul per layer,
    // in the forward. Its adapter's input product (dB reads it) is kept from the forward with the attention
    // outputs, else recomputed.
    expect(count(`matmul·ᵀ 8×${I}·${I}×${H}`)).toBe(layers);
    expect(count(`lora XA 8×4 (red ${I})`)).toBe(layers);
    const recomputed = await new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads }, { matmulPrecision: 'f32', keepAttention: false }).plan({ batch: 1, seq: 8 }, 'train');
    // The last layer is not recomputed at all (its intermediates are still in the layer scratch).
    expect(layers).toBeGreaterThan(1);
    expect(recomputed.dispatches.filter((d) => d.label === `lora XA 8×4 (red ${I})`).length).toBe(2 * layers - 1);
    expect(recomputed.dispatches.filter((d) => d.label === `matmul·ᵀ 8×${I}·${I}×${H}`).length).toBe(layers);
    recomputed.release();
    expect(count(`q4 gemv+lora 8×${H}·layers.0.q.qᵀ`)).toBe(2);
    expect(count(`q4 gemv+lora 8×${H}·layers.${layers - 1}.q.qᵀ`)).toBe(1);
    // Residual adds: the forward's h_{ℓ+1} = h_mid + down once per layer, the backward's two dh sums per layer.
    expect(count(`add ${8 * H} (vec4)`)).toBe(3 * layers);
    plan.release();
  }, 300_000);

  it('the kept attention outputs and LoRA inputs take what the memory plan says they take, per layer', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'llama', true);
    const spec = weights.spec;
    const { layout, state } = randomAdapter(ctx, weights);
    const shape = { batch: 2, seq: 12 };
    const held: number[] = [];
    for (const keepAttention of [true, false]) {
      const before = ctx.pool.liveBytes;
      const plan = await new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads }, { keepAttention, matmulPrecision: 'f32' }).plan(shape, 'train');
      held.push(ctx.pool.liveBytes - before);
      plan.release();
    }
    const c = { seqLen: 12, microBatch: 2, loraRank: 4, quantBits: 4 as const, groupSize: 64, optimizerOffload: 'gpu' as const, activationCheckpointing: true, ceChunkTokens: 1 << 20 };
    const planned = planMemory(spec, c).trainingPeakBytes - planMemory(spec, { ...c, keepAttention: false }).trainingPeakBytes;
    // One [tokens, heads·headDim] output and [heads, tokens] lse per layer, and one [tokens, rank] U per
    // adapted module and layer, less the one shared set.
    const modules = layout.groups.filter((g) => g.layer === layout.groups[0]!.layer).length;
    expect(spec.layers).toBeGreaterThan(1);
    expect(modules).toBeGreaterThan(0);
    expect(planned).toBe((spec.layers - 1) * 24 * (spec.nHeads * (spec.headDim + 1) + modules * layout.rank) * 4);
    expect(held[0]! - held[1]!).toBe(planned);
  }, 300_000);

  it('a short run on the llama fixture lowers the loss (gradient accumulation, cosine schedule, dropout)', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'llama');
    const trainer = new Trainer(ctx, weights, patternRows(8, 16, weights.spec.vocabSize), { loraRank: 8, loraAlpha: 16, loraDropout: 0.1, lr: 2e-2, epochs: 6, microBatch: 2, gradAccum: 2, warmupRatio: 0.1 });
    const losses: number[] = [];
    await trainer.train((p) => losses.push(p.loss));
    expect(losses.length).toBe(trainer.totalSteps);
    expect(losses.every(Number.isFinite)).toBe(true);
    const first = (losses[0]! + losses[1]!) / 2;
    const last = (losses[losses.length - 1]! + losses[losses.length - 2]!) / 2;
    expect(last, `losses ${losses.map((l) => l.toFixed(3)).join(' ')}`).toBeLessThan(first - 0.3);
    trainer.release();
  }, 300_000);

  it('optimizer moments on the GPU, in CPU memory and on disk give bit-identical weights', async () => {
    const ctx = await gpu();
    const weights = await fixtureModel(ctx, 'qwen2');
    const rows = patternRows(6, 10, weights.spec.vocabSize);
    const config = { loraRank: 4, loraAlpha: 8, loraDropout: 0.1, lr: 1e-2, maxSteps: 3, epochs: 3, microBatch: 1, gradAccum: 2, weightDecay: 0.01 };
    const dir = mkdtempSync(join(tmpdir(), 'webtune-moments-'));
    const results: { params: Float32Array; m: Float32Array; v: Float32Array }[] = [];
    const trainer = (optimizerOffload: 'gpu' | 'cpu' | 'disk') =>
      new Trainer(ctx, weights, rows, { ...config, optimizerOffload }, null, {
        momentStore: (n) => fileMomentStore(nodeSyncFile(join(dir, `moments-${optimizerOffload}.bin`)), n),
        offloadChunk: 700, // several chunks, split at parameter boundaries
      });
    const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    for (const optimizerOffload of ['gpu', 'cpu', 'disk'] as const) {
      const t = trainer(optimizerOffload);
      await t.train();
      // saveState reads the moments wherever they are (a memory store catches up with the upload buffers).
      results.push(await t.saveState());
      t.release();
    }
    expect(results[0]!.params.some((x, i) => x !== initLoraParams(new LoraLayout(weights.spec, { r: 4, loraAlpha: 8, targetModules: loraModules(weights.spec.family) }), 42)[i])).toBe(true);
    expect(results[0]!.v.some((x) => x !== 0)).toBe(true);
    for (const r of results.slice(1)) for (const k of ['params', 'm', 'v'] as const) expect(same(r[k], results[0]![k]), k).toBe(true);
    // Interrupted after a step, saved, restored into a new trainer of each offloaded placement: the same end.
    for (const optimizerOffload of ['cpu', 'disk'] as const) {
      const first = trainer(optimizerOffload);
      await first.train(undefined, () => first.step >= 1);
      const saved = await first.saveState();
      first.release();
      const resumed = trainer(optimizerOffload);
      resumed.loadState(saved);
      await resumed.train();
      const end = await resumed.saveState();
      resumed.release();
      for (const k of ['params', 'm', 'v'] as const) expect(same(end[k], results[0]![k]), `${optimizerOffload} resumed: ${k}`).toBe(true);
    }
  }, 300_000);

  for (const quantize of [false, true])
    it(`the eval loss's plan holds what the memory plan counts for it, to the small buffers (${quantize ? '4-bit' : 'f32'} base)`, async () => {
      const ctx = await gpu();
      const weights = await fixtureModel(ctx, 'llama', quantize);
      const spec = weights.spec;
      const evalRows = patternRows(3, 21, spec.vocabSize);
      const trainer = new Trainer(ctx, weights, patternRows(4, 16, spec.vocabSize), { loraRank: 4, loraAlpha: 8, microBatch: 2, matmulPrecision: 'f32' }, null, { evalRows });
      const before = ctx.pool.liveBytes;
      const first = await trainer.evalLoss();
      const held = ctx.pool.liveBytes - before; // the plan is kept for the next evaluation
      const plan = planMemory(spec, { seqLen: 16, microBatch: 2, loraRank: 4, quantBits: quantize ? 4 : 32, groupSize: 64, optimizerOffload: 'gpu', activationCheckpointing: true, ceChunkTokens: 1 << 20, evalSeqLen: trainer.evalSeq });
      expect(trainer.evalSeq).toBe(21);
      expect(plan.evaluation.bytes).toBeGreaterThan(0);
      // Never under the real figure; over it only by the allowance for the small buffers and their rounding.
      const terms = plan.evaluation.terms.map((t) => `${t.name} ${t.bytes}`).join('; ');
      expect(held, terms).toBeLessThanOrEqual(plan.evaluation.bytes);
      expect(plan.evaluation.bytes - held, terms).toBeLessThanOrEqual(2048);
      expect(plan.trainingPeakBytes - planMemory(spec, { seqLen: 16, microBatch: 2, loraRank: 4, quantBits: quantize ? 4 : 32, groupSize: 64, optimizerOffload: 'gpu', activationCheckpointing: true, ceChunkTokens: 1 << 20 }).trainingPeakBytes).toBe(plan.evaluation.bytes);
      // Measuring again allocates nothing more and gives the same number (no state changed in between).
      expect(await trainer.evalLoss()).toEqual(first);
      expect(ctx.pool.liveBytes - before).toBe(held);
      trainer.release();
    });
});
