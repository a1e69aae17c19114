import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { createNodeGpuContext } from '../node/gpu.ts';
import { directoryAccess } from '../node/fixture-dir.ts';
import { rowsFromJsonl } from '../data/rows.ts';
import { parseModelConfig } from '../engine/model/config.ts';
import { CheckpointIndex } from '../engine/model/weights.ts';
import { loadBaseWeights, releaseBaseWeights } from '../engine/model/base-weights.ts';
import { DEFAULT_TRAIN_CONFIG, Trainer, type TrainConfig, type TrainRow } from '../engine/train/trainer.ts';
import { readDataFile, readTokenizerDir } from './prepare.ts';
import { loadTokenizer } from '../data/tokenizer.ts';
import { tokenizerSourceFromFiles } from '../data/tokenizer-files.ts';
import { detectMapper, mapRecords } from '../data/mappers.ts';
import { prepareDataset } from '../data/pipeline.ts';
import { describeSource } from '../data/types.ts';
import { formatBytes } from '../engine/gpu/errors.ts';
import { planMemory, withAttentionChoice } from '../engine/model/memory-plan.ts';
import { ceChunkTokens } from '../engine/kernels/cross_entropy.ts';
import type { LoraModule } from '../engine/model/peft.ts';
import { fileMomentStore } from '../engine/train/moments.ts';
import { nodeSyncFile } from '../node/sync-file.ts';
import { modelIdOf, writeRunRecord, type RunRecord } from './export-recipe.ts';

const d = DEFAULT_TRAIN_CONFIG;
const usage = `Usage: npm run cli -- train --model <dir> --data <rows.jsonl> [--out <adapterDir>] [options]

Trains a LoRA adapter (4-bit base: QLoRA by default) on token rows written by \`npm run cli -- prepare\`,
printing one line per optimizer step, and saves the adapter as PEFT writes it.

  --model <dir>          Hugging Face checkpoint folder (config.json + model.safetensors or shards)
  --data <file>          a dataset (.jsonl .json .csv .tsv .xlsx .txt; mapped, templated and packed with the
                         model's tokenizer as \`prepare --pack\` does) or rows written by \`prepare\`
  --max-length <n>       tokens per packed row when --data is a dataset (default 2048)
  --out <dir>            where to write adapter_config.json + adapter_model.safetensors (default ./adapter)
  --f32                  keep the base in f32 (plain LoRA) instead of 4-bit
  --rank <r>             LoRA rank (default ${d.loraRank})
  --alpha <a>            LoRA alpha (default ${d.loraAlpha})
  --targets <a,b,...>    LoRA target modules (default: all linear projections of the family)
  --lr <x>               peak learning rate (default ${d.lr})
  --schedule <s>         cosine | constant | linear (default ${d.schedule})
  --warmup-ratio <x>     fraction of steps with linear warmup (default ${d.warmupRatio})
  --epochs <n>           passes over the data (default ${d.epochs})
  --max-steps <n>        stop after n optimizer steps
  --batch <n>            rows per micro-batch (default ${d.microBatch})
  --grad-accum <n>       micro-batches per optimizer step (default ${d.gradAccum})
  --weight-decay <x>     AdamW weight decay (default ${d.weightDecay})
  --max-grad-norm <x>    global gradient-norm clip, 0 = off (default ${d.maxGradNorm})
  --dropout <p>          LoRA dropout (default ${d.loraDropout})
  --offload <where>      AdamW moments on the gpu (default), in cpu memory, or on disk (a file in --out)
  --matmul-precision <p> int8 (default): the 4-bit base's matmuls on tensor cores where the GPU has
                         integer subgroup matrices (f32 elsewhere); f32: always the exact kernels
  --recompute-attention  recompute attention in the backward instead of keeping each layer's output
                         (less GPU memory: tokens × heads × (head size + 1) × 4 bytes per layer; slower);
                         by default they are kept where the plan then fits the budget
  --loss-chunk <n>       tokens per cross-entropy chunk (default: as many as fit 384 MiB of logits);
                         fewer save GPU memory (vocab × 4 bytes per token), cost speed
  --seed <n>             LoRA init and shuffling seed (default ${d.seed})
  --budget-gib <x>       GPU memory budget for the plan check (default 8); --force trains past it`;

function num(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${flag}: '${v}' is not a number`);
  return n;
}

/**
 * Token rows from --data: rows JSONL as `prepare` writes them, or any dataset, prepared here with the
 * model folder's tokenizer the way the app does it (detected mapping, chat template, packed rows).
 */
async function loadRows(path: string, modelDir: string, maxLength: number): Promise<TrainRow[]> {
  const head = (await readFile(path, 'utf8')).slice(0, 4096);
  if (/^\s*\{\s*"input_ids"\s*:/.test(head)) return rowsFromJsonl(await readFile(path, 'utf8'), path);
  if (!Number.isInteger(maxLength) || maxLength < 8) throw new Error(`--max-length: expected an integer ≥ 8, got ${maxLength}`);
  const tok = loadTokenizer(tokenizerSourceFromFiles(readTokenizerDir(modelDir), modelDir));
  const { records, rejected } = await readDataFile(path, undefined);
  const detected = detectMapper(records);
  if (!detected.choice) throw new Error(`${path}: cannot detect the dataset format (${detected.reason}); map it with \`npm run cli -- prepare --format ...\` first`);
  const mapped = mapRecords(records, detected.choice);
  const prepared = prepareDataset(tok, mapped.samples, { maxLength, pack: true, seed: 42, evalSplit: 0 }, [...rejected, ...mapped.rejected]);
  console.log(`data: ${path} as ${detected.choice.id}; ${prepared.stats.samples} samples, ${prepared.stats.supervisedTokens} supervised tokens, ${prepared.rejected.length} rejected rows`);
  for (const r of prepared.rejected.slice(0, 5)) console.log(`  rejected ${describeSource(r)}: ${r.reason}`);
  if (prepared.train.length === 0) throw new Error(`${path}: no trainable rows (see the rejected rows above)`);
  return prepared.train;
}

export const trainCommand: CliCommand = {
  summary: 'train a LoRA/QLoRA adapter on prepared token rows',
  usage,
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        model: { type: 'string' }, data: { type: 'string' }, out: { type: 'string', default: 'adapter' }, f32: { type: 'boolean', default: false },
        rank: { type: 'string' }, alpha: { type: 'string' }, targets: { type: 'string' }, lr: { type: 'string' }, schedule: { type: 'string' },
        'warmup-ratio': { type: 'string' }, epochs: { type: 'string' }, 'max-steps': { type: 'string' }, batch: { type: 'string' },
        'grad-accum': { type: 'string' }, 'weight-decay': { type: 'string' }, 'max-grad-norm': { type: 'string' }, seed: { type: 'string' }, 'max-length': { type: 'string' }, 'budget-gib': { type: 'string' }, force: { type: 'boolean', default: false }, dropout: { type: 'string' }, offload: { type: 'string' }, 'matmul-precision': { type: 'string' }, 'loss-chunk': { type: 'string' }, 'recompute-attention': { type: 'boolean', default: false },
      },
    });
    if (!values.model || !values.data) throw new Error('needs --model <dir> and --data <rows.jsonl>; see --help');
    const rows = await loadRows(values.data, values.model, Number(values['max-length'] ?? 2048));
    const schedule = values.schedule;
    if (schedule !== undefined && !['cosine', 'constant', 'linear'].includes(schedule)) throw new Error(`--schedule: '${schedule}' is not cosine, constant or linear`);
    if (values.offload !== undefined && !['gpu', 'cpu', 'disk'].includes(values.offload)) throw new Error(`--offload: '${values.offload}' is not gpu, cpu or disk`);
    const precision = values['matmul-precision'];
    if (precision !== undefined && precision !== 'f32' && precision !== 'int8') throw new Error(`--matmul-precision: '${precision}' is not f32 or int8`);
    const overrides: Partial<TrainConfig> = Object.fromEntries(
      Object.entries({
        loraRank: num(values.rank, '--rank'), loraAlpha: num(values.alpha, '--alpha'), lr: num(values.lr, '--lr'), schedule,
        warmupRatio: num(values['warmup-ratio'], '--warmup-ratio'), epochs: num(values.epochs, '--epochs'), maxSteps: num(values['max-steps'], '--max-steps'),
        microBatch: num(values.batch, '--batch'), gradAccum: num(values['grad-accum'], '--grad-accum'), weightDecay: num(values['weight-decay'], '--weight-decay'),
        maxGradNorm: num(values['max-grad-norm'], '--max-grad-norm'), seed: num(values.seed, '--seed'), loraDropout: num(values.dropout, '--dropout'),
        optimizerOffload: values.offload,
        matmulPrecision: precision,
        lossChunkTokens: num(values['loss-chunk'], '--loss-chunk'),
        keepAttention: values['recompute-attention'] ? false : undefined,
        targets: values.targets ? (values.targets.split(',').map((t) => t.trim()) as LoraModule[]) : undefined,
      }).filter(([, v]) => v !== undefined),
    );
    const io = directoryAccess(values.model);
    const cfgSrc = await io.open('config.json');
    const configText = new TextDecoder().decode(await cfgSrc.read(0, cfgSrc.size));
    const spec = parseModelConfig(configText, join(values.model, 'config.json'));
    // The memory plan before anything is allocated: say what to change rather than fail mid-run.
    const c0 = { ...DEFAULT_TRAIN_CONFIG, ...overrides };
    const seqLen = Math.max(...rows.map((r) => r.inputIds.length));
    const budgetBytes = Number(values['budget-gib'] ?? 8) * 2 ** 30;
    // Attention outputs are kept where the plan then fits the budget (unless --recompute-attention): the trainer gets the choice.
    const planned = withAttentionChoice(
      spec,
      { seqLen, microBatch: c0.microBatch, loraRank: c0.loraRank, ...(c0.targets ? { targets: c0.targets } : {}), quantBits: values.f32 ? 32 : 4, groupSize: 64,
        optimizerOffload: c0.optimizerOffload ?? 'gpu', activationCheckpointing: true, ...(c0.keepAttention === undefined ? {} : { keepAttention: c0.keepAttention }), ceChunkTokens: ceChunkTokens(spec.vocabSize, seqLen * c0.microBatch, { chunkTokens: c0.lossChunkTokens }) },
      budgetBytes,
    );
    overrides.keepAttention = planned.keepAttention;
    const plan = planMemory(spec, planned, { budgetBytes });
    console.log(`memory plan: ${formatBytes(plan.totalBytes)} of a ${formatBytes(plan.budgetBytes)} budget (weights ${formatBytes(plan.weights.bytes)}, LoRA ${formatBytes(plan.lora.bytes)}, optimizer ${formatBytes(plan.optimizer.bytes)}, activations ${formatBytes(plan.activations.bytes)}, loss ${formatBytes(plan.ce.bytes)})`);
    if (!plan.fits) {
      for (const a of plan.advice) console.log(`  - ${a}`);
      if (!values.force) throw new Error('the run does not fit the memory budget; change what the plan suggests (or pass --force / --budget-gib)');
    }
    const ctx = await createNodeGpuContext();
    console.log(`adapter: ${ctx.adapter.vendor} ${ctx.adapter.device}`.trim());
    const index = await CheckpointIndex.open(spec, io.open);
    const weights = await loadBaseWeights(ctx, index, { quantize: !values.f32 });
    console.log(`model: ${spec.architecture}, ${spec.layers} layers, hidden ${spec.hidden}; base ${values.f32 ? 'f32' : '4-bit'}: ${formatBytes(ctx.pool.liveBytes)} on the GPU`);
    await mkdir(values.out!, { recursive: true });
    const trainer = new Trainer(ctx, weights, rows, overrides, values.model, { momentStore: (n) => fileMomentStore(nodeSyncFile(join(values.out!, 'optimizer-moments.bin')), n) });
    const c = trainer.config;
    console.log(`data: ${rows.length} rows of up to ${trainer.seq} tokens; ${trainer.totalSteps} steps (batch ${c.microBatch} × accumulation ${c.gradAccum}), LoRA r=${c.loraRank} alpha=${c.loraAlpha}, lr ${c.lr} ${c.schedule}`);
    // run.json: what export-recipe (and a later look at this folder) needs to know about the run.
    const dataIsRows = /^\s*\{\s*"input_ids"\s*:/.test((await readFile(values.data, 'utf8')).slice(0, 4096));
    const runRecord: RunRecord = {
      format: 'webtune-run', version: 1, model: resolve(values.model), modelId: modelIdOf(values.model, configText), family: spec.family, data: resolve(values.data),
      dataKind: dataIsRows ? 'rows' : 'dataset', maxLength: Number(values['max-length'] ?? 2048), pack: true, quantize: !values.f32, config: c, startedAt: new Date().toISOString(),
    };
    await writeRunRecord(values.out!, runRecord);
    let lastLoss: number | null = null;
    await trainer.train((p) => {
      lastLoss = p.loss;
      console.log(
        `step ${String(p.step).padStart(String(p.totalSteps).length)}/${p.totalSteps}  loss ${p.loss.toFixed(4)}  lr ${p.lr.toExponential(2)}  grad-norm ${p.gradNorm.toFixed(3)}  ` +
          `${p.tokensPerSecond.toFixed(0)} tok/s  ETA ${p.etaSeconds.toFixed(0)} s  GPU ${formatBytes(p.liveBytes)} (peak ${formatBytes(p.peakBytes)})`,
      );
    });
    const { adapterConfigJson, adapterSafetensors } = await trainer.exportPeft();
    await mkdir(values.out!, { recursive: true });
    await writeFile(join(values.out!, 'adapter_config.json'), adapterConfigJson);
    await writeFile(join(values.out!, 'adapter_model.safetensors'), adapterSafetensors);
    console.log(`saved the adapter to ${values.out}`);
    await writeRunRecord(values.out!, { ...runRecord, steps: trainer.step, finalLoss: lastLoss });
    trainer.release();
    releaseBaseWeights(ctx, weights);
    ctx.destroy();
    return 0;
  },
};
