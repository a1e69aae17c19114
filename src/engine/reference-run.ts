/**
 * `reference-run`: reproduces, with our kernels, what PyTorch + transformers + PEFT computed for a fixture
 * directory (../shared/reference/README.md): base and LoRA logits, the loss, every LoRA gradient, a
 * 5-step AdamW trajectory, packed-row logits, greedy decoding and merged logits. The output has the keys
 * and shapes of the fixture's case.safetensors, so the two compare key by key.
 */
import type { GpuContext } from './gpu/context.ts';
import type { Tensor } from './gpu/tensor.ts';
import { AdamW, createOptimizerState, releaseOptimizerState, prepareZeroGrad } from './kernels/adamw.ts';
import { SafetensorsFile, toInt32, type TensorToWrite } from '../formats/safetensors.ts';
import type { ByteSource } from '../formats/bytes.ts';
import { loadBaseWeights, releaseBaseWeights } from './model/base-weights.ts';
import { parseModelConfig } from './model/config.ts';
import { LoraLayout } from './model/lora-layout.ts';
import { prepareMergeLora } from './model/merge.ts';
import { readPeftAdapter } from './model/peft.ts';
import { Transformer, type BatchInputs, type LoraRuntime } from './model/transformer.ts';
import { CheckpointIndex, type FileOpener } from './model/weights.ts';
import { Generator } from './generate/generator.ts';

export interface ReferenceRunOptions {
  /** Reads a file of the fixture directory ('config.json', 'adapter_init/adapter_model.safetensors', …). */
  open: FileOpener;
  /** Whether a path exists in the fixture directory. */
  exists: (path: string) => Promise<boolean>;
  log?: (line: string) => void;
}

async function text(src: ByteSource): Promise<string> {
  return new TextDecoder().decode(await src.read(0, src.size));
}

/** Rows × seq inputs from an attention mask, as transformers sees them: arange positions, right padding visible to nobody. */
export function batchFromMask(ids: Int32Array, mask: Int32Array | null, seq: number): BatchInputs {
  const positionIds = new Int32Array(ids.length);
  const documentIds = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    positionIds[i] = i % seq;
    documentIds[i] = !mask || mask[i] ? 0 : -2; // −(0+2): queries see document 0, no query sees this key
  }
  return { inputIds: ids, positionIds, documentIds };
}

/** Packed rows: a new document starts wherever the position restarts at 0. */
export function batchFromPackedPositions(ids: Int32Array, positions: Int32Array, seq: number): BatchInputs {
  const documentIds = new Int32Array(ids.length);
  let doc = -1;
  for (let i = 0; i < ids.length; i++) {
    if (i % seq === 0) doc = -1;
    if (positions[i] === 0 || doc < 0) doc++;
    documentIds[i] = doc;
  }
  return { inputIds: ids, positionIds: positions, documentIds };
}

export async function referenceRun(ctx: GpuContext, o: ReferenceRunOptions): Promise<TensorToWrite[]> {
  const log = o.log ?? (() => {});
  const spec = parseModelConfig(await text(await o.open('config.json')), 'config.json');
  const index = await CheckpointIndex.open(spec, o.open);
  const weights = await loadBaseWeights(ctx, index, { quantize: false });
  const caseFile = await SafetensorsFile.open(await o.open('case.safetensors'));
  const ints = async (name: string) => toInt32(await caseFile.bytes(name), caseFile.entry(name).dtype, name);
  const [rows, seq] = caseFile.entry('input_ids').shape as [number, number];
  const ids = await ints('input_ids');
  const mask = caseFile.entries.has('attention_mask') ? await ints('attention_mask') : null;
  const out: TensorToWrite[] = [];
  const f32 = (name: string, shape: readonly number[], data: Float32Array) => out.push({ name, dtype: 'F32', shape, data });
  const readT = (t: Tensor) => ctx.read(t);

  const base = new Transformer(ctx, weights, null);
  const logitsOf = async (model: Transformer, batch: BatchInputs, shape: { batch: number; seq: number }) => {
    const plan = await model.plan(shape, 'logits');
    try {
      plan.setBatch(batch);
      await ctx.run(plan.dispatches, 'logits');
      return await readT(plan.logits!);
    } finally {
      plan.release();
    }
  };
  const V = spec.vocabSize;
  f32('base_logits', [rows, seq, V], await logitsOf(base, batchFromMask(ids, mask, seq), { batch: rows, seq }));
  log('base_logits');
  if (caseFile.entries.has('packed_input_ids')) {
    const pids = await ints('packed_input_ids');
    const ppos = await ints('packed_position_ids');
    const [pr, ps] = caseFile.entry('packed_input_ids').shape as [number, number];
    f32('packed_logits', [pr, ps, V], await logitsOf(base, batchFromPackedPositions(pids, ppos, ps), { batch: pr, seq: ps }));
    log('packed_logits');
  }

  if (await o.exists('adapter_init/adapter_config.json')) {
    const adapter = await readPeftAdapter(await text(await o.open('adapter_init/adapter_config.json')), await o.open('adapter_init/adapter_model.safetensors'), spec);
    const layout = new LoraLayout(spec, adapter.config);
    const state = createOptimizerState(ctx, layout.optimizer);
    const initial = layout.packPeft(adapter.tensors);
    ctx.write(state.params, initial);
    const lora: LoraRuntime = { layout, params: state.params, grads: state.grads };
    const tuned = new Transformer(ctx, weights, lora);
    const batch = { ...batchFromMask(ids, mask, seq), labels: await ints('labels') };
    f32('lora_logits', [rows, seq, V], await logitsOf(tuned, batch, { batch: rows, seq }));
    log('lora_logits');

    // Loss and gradients.
    const train = await tuned.plan({ batch: rows, seq }, 'train');
    const zero = await prepareZeroGrad(ctx, state.grads, 0, layout.optimizer.total);
    train.setBatch(batch);
    await ctx.run([zero, ...train.dispatches], 'train step');
    f32('lora_loss', [1], await readT(train.loss!));
    const grads = layout.unpackPeft(await readT(state.grads));
    for (const [key, t] of grads) f32(`grad.${key.replace(/\.weight$/, '.default.weight')}`, t.shape, t.data);
    log('lora_loss, gradients');

    // AdamW trajectory: the loss before each step, on the same batch.
    const cj = JSON.parse(await text(await o.open('case.json'))) as { adamw?: { lr: number; betas: [number, number]; eps: number; weight_decay: number; clip_grad_norm: number; steps: number } };
    if (cj.adamw) {
      const a = cj.adamw;
      const opt = await AdamW.create(ctx, state, { lr: a.lr, beta1: a.betas[0], beta2: a.betas[1], eps: a.eps, weightDecay: a.weight_decay, maxGradNorm: a.clip_grad_norm });
      const update = await opt.stepDispatches();
      const losses = new Float32Array(a.steps);
      for (let step = 1; step <= a.steps; step++) {
        opt.setStep(step);
        await ctx.run([zero, ...train.dispatches], `adamw step ${step}`);
        losses[step - 1] = (await readT(train.loss!))[0]!;
        await ctx.run(update, `adamw update ${step}`);
      }
      f32('adamw_losses', [a.steps], losses);
      opt.release();
      log('adamw_losses');
    }
    train.release();

    // make_fixtures.py decodes and merges with the adapter as it stands after the 5 AdamW steps (its README
    // says adapter_init; the script is the truth): so do we, with the weights our own AdamW produced.
    // Greedy decoding through the KV-cache generator (prefill, then one-token decode steps with GPU argmax).
    // No stop ids: the fixture decodes exactly its number of new tokens.
    if (caseFile.entries.has('greedy_prompt') && caseFile.entries.has('greedy_output')) {
      const prompt = await ints('greedy_prompt');
      const total = caseFile.entry('greedy_output').shape[1]!;
      const gen = await Generator.create(ctx, weights, { maxTokens: total, lora });
      const res = await gen.generate([...prompt], { temperature: 0, repetitionPenalty: 1, maxNewTokens: total - prompt.length, stopTokenIds: [] });
      gen.release();
      const tokens = new Int32Array(total);
      tokens.set(prompt);
      tokens.set(res.tokens, prompt.length);
      out.push({ name: 'greedy_output', dtype: 'I32', shape: [1, total], data: tokens });
      log('greedy_output');
    }

    // Merge the adapter into the (f32) base and run the base model.
    await ctx.run(await prepareMergeLora(ctx, weights, lora), 'merge');
    f32('merged_logits', [rows, seq, V], await logitsOf(base, batchFromMask(ids, mask, seq), { batch: rows, seq }));
    log('merged_logits');
    releaseOptimizerState(ctx, state);
  }
  releaseBaseWeights(ctx, weights);
  return out;
}

export function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}
