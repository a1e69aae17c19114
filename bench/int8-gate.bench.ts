/**
 * The int8 tensor-core path's accuracy gate (issue "Tensor cores from WebGPU"), on a GPU that has it:
 *  - fixture logits: each reference fixture (4-bit base) with matmulPrecision 'int8' against 'f32', base
 *    and with the fixture's initial adapter (gate: relative difference under 1e-2);
 *  - loss curves: the same training (same seed, same data, same init) with both precisions, on the
 *    InternLM2-1.8B shape (random weights, XTuner's lr 2e-4, a new packed row each step; plus a harsh
 *    single-row memorisation at lr 1e-3, reported) and on the llama fixture (its case inputs and labels);
 *    gate: every step's loss within 1% of the f32 run's.
 * `node bench/build.mjs bench/int8-gate.bench.ts`, copy the fixtures to dist-bench/fixtures, then on the
 * GPU `node dist-bench/int8-gate.bench.mjs dist-bench/fixtures`.
 */
import { transformerKnobs } from './harness.ts';
import type { GpuContext } from '../src/engine/gpu/context.ts';
import { createNodeGpuContext } from '../src/node/gpu.ts';
import { directoryAccess } from '../src/node/fixture-dir.ts';
import { AdamW, createOptimizerState, releaseOptimizerState } from '../src/engine/kernels/adamw.ts';
import { int8MatmulSupport, type MatmulPrecision } from '../src/engine/kernels/quant4-mma.ts';
import { loadBaseWeights, PROJECTIONS, releaseBaseWeights, type BaseWeights, type ProjectionKind } from '../src/engine/model/base-weights.ts';
import { modelSpecFromConfig, parseModelConfig } from '../src/engine/model/config.ts';
import { LoraLayout } from '../src/engine/model/lora-layout.ts';
import { loraModules, readPeftAdapter } from '../src/engine/model/peft.ts';
import { randomBaseWeights } from '../src/engine/model/random-weights.ts';
import { DEFAULT_INT8_RESIDUAL, Transformer, type BatchInputs } from '../src/engine/model/transformer.ts';
import { CheckpointIndex } from '../src/engine/model/weights.ts';
import { batchFromMask } from '../src/engine/reference-run.ts';
import { initLoraParams } from '../src/engine/train/trainer.ts';
import { SafetensorsFile, toInt32 } from '../src/formats/safetensors.ts';
import { INTERNLM2_1_8B } from './train-step.bench.ts';
import { seededRandom } from '../src/engine/random.ts';

type LoraShape = ConstructorParameters<typeof LoraLayout>[1];

function relDiff(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i]!)) return NaN;
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

/** `steps` AdamW steps from the same LoRA init, batch(s) for step s; the loss before each update. */
async function lossCurve(
  ctx: GpuContext,
  weights: BaseWeights,
  lora: LoraShape,
  batchOf: (step: number) => BatchInputs & { labels: Int32Array },
  shape: { batch: number; seq: number },
  precision: MatmulPrecision,
  steps: number,
  o: { init?: Float32Array; lr?: number } = {},
): Promise<number[]> {
  const layout = new LoraLayout(weights.spec, lora);
  const state = createOptimizerState(ctx, layout.optimizer);
  ctx.write(state.params, o.init ?? initLoraParams(layout, 1));
  const lr = o.lr ?? 1e-3;
  const optimizer = await AdamW.create(ctx, state, { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 });
  const update = await optimizer.stepDispatches({ zeroGrad: true });
  const model = new Transformer(ctx, weights, { layout, params: state.params, grads: state.grads }, { matmulPrecision: precision, ...transformerKnobs() });
  if (model.matmulPrecision !== precision) throw new Error(`asked for ${precision}, got ${model.matmulPrecision}`);
  const plan = await model.plan(shape, 'train', { ceChunkTokens: Math.min(1024, shape.batch * shape.seq) });
  const losses: number[] = [];
  for (let s = 1; s <= steps; s++) {
    plan.setBatch(batchOf(s));
    optimizer.setStep(s, lr);
    await ctx.run([...plan.dispatches, ...update], `${precision} step ${s}`);
    losses.push((await ctx.read(plan.loss!))[0]!);
  }
  plan.release();
  optimizer.release();
  releaseOptimizerState(ctx, state);
  return losses;
}

function compareCurves(name: string, f32: number[], int8: number[]): boolean {
  const worst = Math.max(...f32.map((l, i) => Math.abs(int8[i]! - l) / Math.abs(l)));
  const ok = worst < 0.01;
  console.log(`\n${name}: worst step |Δloss|/loss = ${(worst * 100).toFixed(3)}% ${ok ? 'ok (< 1%)' : 'FAILS the 1% gate'}`);
  console.log('| step | loss f32 | loss int8 | Δ |\n|---:|---:|---:|---:|');
  f32.forEach((l, i) => console.log(`| ${i + 1} | ${l.toFixed(5)} | ${int8[i]!.toFixed(5)} | ${(((int8[i]! - l) / l) * 100).toFixed(3)}% |`));
  return ok;
}

async function fixtures(ctx: GpuContext, root: string): Promise<boolean> {
  let ok = true;
  // The default's levels (INT8_RESIDUAL, else the engine's), all one level, and each probe: the
  // listed projections on one level, the others two (which projections the logits are sensitive to).
  const chosen = transformerKnobs().int8Residual ?? DEFAULT_INT8_RESIDUAL;
  const probes = (process.env.INT8_GATE_PROBES ?? 'q,k,v;o;gate,up;down').split(';').filter((p) => p !== '');
  const residualExcept = (probe: string) => PROJECTIONS.filter((k) => !probe.split(',').includes(k));
  console.log(
    `| fixture | logits | int8 vs f32 (4-bit base), residual level: ${chosen === true ? 'every projection' : chosen === false ? 'none' : chosen.join(',')} | 2-level | 1-level | ${probes.map((p) => `${p} 1-level`).join(' | ')} | f32 4-bit vs PyTorch f32 |`,
  );
  console.log(`|---|---|---:|---:|---:|${probes.map(() => '---:|').join('')}---:|`);
  for (const name of ['llama', 'qwen2', 'qwen3', 'internlm2']) {
    const dir = directoryAccess(`${root}/${name}`);
    const spec = parseModelConfig(new TextDecoder().decode(await (await dir.open('config.json')).read(0, (await dir.open('config.json')).size)));
    const weights = await loadBaseWeights(ctx, await CheckpointIndex.open(spec, dir.open), { quantize: true });
    const caseFile = await SafetensorsFile.open(await dir.open('case.safetensors'));
    const ints = async (n: string) => toInt32(await caseFile.bytes(n), caseFile.entry(n).dtype, n);
    const [rows, seq] = caseFile.entry('input_ids').shape as [number, number];
    const mask = caseFile.entries.has('attention_mask') ? await ints('attention_mask') : null;
    const batch = batchFromMask(await ints('input_ids'), mask, seq);
    const ref = new Float32Array((await caseFile.bytes('base_logits')).buffer.slice(0));
    const logits = async (precision: MatmulPrecision, lora: ConstructorParameters<typeof Transformer>[2], residual: boolean | readonly ProjectionKind[] = chosen) => {
      const plan = await new Transformer(ctx, weights, lora, { matmulPrecision: precision, int8Residual: residual }).plan({ batch: rows, seq }, 'logits');
      plan.setBatch(batch);
      await ctx.run(plan.dispatches);
      const out = await ctx.read(plan.logits!);
      plan.release();
      return out;
    };
    const f = await logits('f32', null);
    const i8 = await logits('int8', null);
    const d = relDiff(i8, f);
    ok &&= d < 1e-2;
    const probed = async (lora: ConstructorParameters<typeof Transformer>[2], f32: Float32Array) => {
      const cols: string[] = [];
      for (const p of probes) cols.push(relDiff(await logits('int8', lora, residualExcept(p)), f32).toExponential(2));
      return cols.map((c) => `${c} | `).join('');
    };
    console.log(`| ${name} | base | ${d.toExponential(2)} ${d < 1e-2 ? 'ok' : 'FAIL'} | ${relDiff(await logits('int8', null, true), f).toExponential(2)} | ${relDiff(await logits('int8', null, false), f).toExponential(2)} | ${await probed(null, f)}${relDiff(f, ref).toExponential(2)} |`);
    if (await dir.exists('adapter_init/adapter_config.json')) {
      const adapter = await readPeftAdapter(
        new TextDecoder().decode(await (await dir.open('adapter_init/adapter_config.json')).read(0, (await dir.open('adapter_init/adapter_config.json')).size)),
        await dir.open('adapter_init/adapter_model.safetensors'),
        spec,
      );
      const layout = new LoraLayout(spec, adapter.config);
      const state = createOptimizerState(ctx, layout.optimizer);
      ctx.write(state.params, layout.packPeft(adapter.tensors));
      const lora = { layout, params: state.params, grads: state.grads };
      const lf = await logits('f32', lora);
      const li = await logits('int8', lora);
      const dl = relDiff(li, lf);
      ok &&= dl < 1e-2;
      console.log(`| ${name} | LoRA | ${dl.toExponential(2)} ${dl < 1e-2 ? 'ok' : 'FAIL'} | ${relDiff(await logits('int8', lora, true), lf).toExponential(2)} | ${relDiff(await logits('int8', lora, false), lf).toExponential(2)} | ${await probed(lora, lf)} |`);
      if (name === 'llama') {
        const trainBatch = { ...batch, labels: await ints('labels') };
        const init = layout.packPeft(adapter.tensors);
        const a = await lossCurve(ctx, weights, adapter.config, () => trainBatch, { batch: rows, seq }, 'f32', 20, { init });
        const b = await lossCurve(ctx, weights, adapter.config, () => trainBatch, { batch: rows, seq }, 'int8', 20, { init });
        ok &&= compareCurves('llama fixture (4-bit base, its case inputs and labels, lr 1e-3, 20 steps)', a, b);
      }
      releaseOptimizerState(ctx, state);
    }
    releaseBaseWeights(ctx, weights);
  }
  return ok;
}

async function internlm2Curves(ctx: GpuContext, steps: number): Promise<boolean> {
  const spec = modelSpecFromConfig(INTERNLM2_1_8B, 'InternLM2-1.8B shape');
  const weights = await randomBaseWeights(ctx, spec, { seed: 1, quantize: true, poolValues: 1 << 22 });
  const seq = 512;
  const lora: LoraShape = { r: 64, loraAlpha: 16, targetModules: loraModules(spec.family) };
  const shape = { batch: 1, seq };
  // A packed row of four documents; `text` picks pseudo-text ids (a Zipf-like draw over 4000 ids).
  const row = (seed: number) => {
    const rand = seededRandom(seed);
    const ids = Int32Array.from({ length: seq }, () => 1000 + Math.floor(4000 * rand() ** 3));
    return { inputIds: ids, positionIds: Int32Array.from({ length: seq }, (_, i) => i % 128), documentIds: Int32Array.from({ length: seq }, (_, i) => Math.floor(i / 128)), labels: ids };
  };
  // XTuner's recipe (lr 2e-4) on a stream of different rows, as real training sees data.
  const recipe = [await lossCurve(ctx, weights, lora, (s) => row(100 + s), shape, 'f32', steps, { lr: 2e-4 }), await lossCurve(ctx, weights, lora, (s) => row(100 + s), shape, 'int8', steps, { lr: 2e-4 })] as const;
  const ok = compareCurves(`InternLM2-1.8B shape (random 4-bit weights, r 64 all-linear, seq ${seq} packed, lr 2e-4, a new row each step, ${steps} steps)`, ...recipe);
  // Harsh: one row memorised at lr 1e-3, the loss driven towards 0 (any trajectory difference is a large relative one).
  const fixed = row(7);
  const harsh = [await lossCurve(ctx, weights, lora, () => fixed, shape, 'f32', steps), await lossCurve(ctx, weights, lora, () => fixed, shape, 'int8', steps)] as const;
  compareCurves(`InternLM2-1.8B shape, one row memorised (lr 1e-3, ${steps} steps; reported, not the gate)`, ...harsh);
  releaseBaseWeights(ctx, weights);
  return ok;
}

async function main(): Promise<void> {
  const ctx = await createNodeGpuContext();
  const support = int8MatmulSupport(ctx.features);
  console.log(`int8 path: ${support.why}`);
  if (!support.ok) return;
  const root = process.argv[2] ?? 'dist-bench/fixtures';
  const okFixtures = await fixtures(ctx, root);
  const okCurve = await internlm2Curves(ctx, 20);
  console.log(`\naccuracy gate: ${okFixtures && okCurve ? 'PASSES' : 'FAILS'} (fixtures ${okFixtures ? 'ok' : 'fail'}, 1.8B-shape curve ${okCurve ? 'ok' : 'fail'})`);
}

await main();
