import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { readDataFile, readTokenizerDir } from './prepare.ts';
import { detectMapper, mapRecords } from '../data/mappers.ts';
import { tokenizerSourceFromFiles } from '../data/tokenizer-files.ts';
import { parseModelConfig, type ModelFamily } from '../engine/model/config.ts';
import { buildRecipe, type RecipeSample } from '../engine/share/recipe.ts';
import type { TrainConfig } from '../engine/train/trainer.ts';

/** What `train` records in its output folder (run.json), so the run can be exported or repeated. */
export interface RunRecord {
  format: 'webtune-run';
  version: 1;
  /** The model folder trained on (as given), and its Hub id when known. */
  model: string;
  modelId: string;
  family: ModelFamily;
  /** The dataset as given to train (a dataset file, or rows written by prepare). */
  data: string;
  dataKind: 'dataset' | 'rows';
  maxLength: number;
  pack: boolean;
  quantize: boolean;
  config: TrainConfig;
  startedAt: string;
  /** Filled in when training ends. */
  steps?: number;
  finalLoss?: number | null;
}

export const RUN_RECORD = 'run.json';

/** A Hub id for a model folder: config.json's `_name_or_path` when it looks like one, else the folder. */
export function modelIdOf(modelDir: string, configText: string): string {
  try {
    const n = (JSON.parse(configText) as { _name_or_path?: unknown })._name_or_path;
    if (typeof n === 'string' && /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(n)) return n;
  } catch {
    /* the config was parsed before; nothing to add */
  }
  return resolve(modelDir);
}

export async function writeRunRecord(dir: string, record: RunRecord): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, RUN_RECORD), JSON.stringify(record, null, 2) + '\n');
}

async function readRunRecord(dir: string): Promise<RunRecord> {
  const path = join(dir, RUN_RECORD);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new Error(`${path}: no run record; it is written by \`npm run cli -- train --out ${dir}\` (runs trained before it existed cannot be exported; train again)`);
  }
  let r: RunRecord;
  try {
    r = JSON.parse(text) as RunRecord;
  } catch (e) {
    throw new Error(`${path}: not JSON (${(e as Error).message})`);
  }
  if (r.format !== 'webtune-run' || r.version !== 1) throw new Error(`${path}: not a WebTune run record`);
  for (const k of ['model', 'modelId', 'family', 'data', 'config'] as const) if (!r[k]) throw new Error(`${path}: missing '${k}'`);
  return r;
}

const usage = `Usage: npm run cli -- export-recipe --run <dir> --out <dir> [--data <file>] [--model-id <owner/name>]

Writes the training run recorded in <run>/run.json (by \`train --out <run>\`) as a recipe for a GPU cluster:
  xtuner_config.py   an XTuner QLoRA config (xtuner train xtuner_config.py --deepspeed deepspeed_zero2)
  train_peft.py      a plain transformers + PEFT script (python train_peft.py / torchrun)
  data/train.jsonl   the dataset in the messages format
  README.md          how to run each and import the adapter back

  --run <dir>            the folder train wrote (adapter + run.json)
  --out <dir>            where to write the recipe
  --data <file>          the source dataset, when the run was trained on prepared token rows
  --model-id <id>        the base model's Hub id, when the run recorded only a local folder
  --eval <a|b|...>       evaluation prompts (XTuner's evaluation_inputs), separated by |
  --eval-every <n>       answer them every n optimizer steps (default 50)`;

export const exportRecipeCommand: CliCommand = {
  summary: 'export a run as an XTuner config + transformers/PEFT script + JSONL dataset',
  usage,
  async run(args) {
    const { values } = parseArgs({
      args,
      options: { run: { type: 'string' }, out: { type: 'string' }, data: { type: 'string' }, 'model-id': { type: 'string' }, eval: { type: 'string' }, 'eval-every': { type: 'string' } },
    });
    if (!values.run || !values.out) throw new Error('needs --run <dir> and --out <dir>; see --help');
    const run = await readRunRecord(values.run);
    const runDir = resolve(values.run);
    const rel = (p: string) => (isAbsolute(p) ? p : existsSync(resolve(p)) ? resolve(p) : resolve(runDir, p));

    let dataPath = values.data ?? run.data;
    if (!values.data && run.dataKind === 'rows') {
      throw new Error(`the run was trained on prepared token rows (${run.data}); the recipe needs the conversations: pass the source dataset with --data <file>`);
    }
    dataPath = rel(dataPath);
    const { records, rejected } = await readDataFile(dataPath, undefined);
    const detected = detectMapper(records);
    if (!detected.choice) throw new Error(`${dataPath}: cannot detect the dataset format (${detected.reason}); map it with \`npm run cli -- prepare --format ...\` first`);
    const mapped = mapRecords(records, detected.choice);
    const samples: RecipeSample[] = mapped.samples.map((s) => (s.kind === 'chat' ? { messages: s.messages.map(({ role, content, loss }) => (typeof loss === 'boolean' ? { role, content, loss } : { role, content })) } : { text: s.text }));
    const skipped = rejected.length + mapped.rejected.length;

    let family = run.family;
    let chatTemplate: string | null = null;
    const modelDir = rel(run.model);
    if (existsSync(join(modelDir, 'config.json'))) {
      family = parseModelConfig(await readFile(join(modelDir, 'config.json'), 'utf8'), join(modelDir, 'config.json')).family;
      try {
        chatTemplate = tokenizerSourceFromFiles(readTokenizerDir(modelDir), modelDir).chatTemplate ?? null;
      } catch {
        chatTemplate = null; // no tokenizer files: the family's XTuner template is used
      }
    }
    const prompts = values.eval ? values.eval.split('|').map((p) => p.trim()).filter(Boolean) : [];
    const files = buildRecipe({
      modelId: values['model-id'] ?? run.modelId,
      family,
      config: run.config,
      maxLength: run.maxLength,
      pack: run.pack,
      quantize: run.quantize,
      samples,
      chatTemplate,
      ...(prompts.length ? { evaluation: { prompts, every: Number(values['eval-every'] ?? 50) } } : {}),
    });
    for (const [name, text] of files) {
      const path = join(values.out, name);
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, text);
    }
    console.log(`wrote ${[...files.keys()].join(', ')} to ${values.out} (${samples.length} samples from ${dataPath} as ${detected.choice.id}${skipped ? `; ${skipped} rows skipped as in training` : ''})`);
    if ((values['model-id'] ?? run.modelId).startsWith('/')) console.log('note: the base model is a local folder; pass --model-id <owner/name> so the cluster downloads it from the Hub');
    return 0;
  },
};
