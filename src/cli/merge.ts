import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { openAdapterDir, openModelDir } from './share-io.ts';
import { CheckpointIndex } from '../engine/model/weights.ts';
import { mergeExport } from '../engine/share/merge-export.ts';
import { nodeDirSinks } from '../engine/share/node.ts';
import { fileSource } from '../node/files.ts';
import { formatBytes } from '../engine/gpu/errors.ts';
import { join } from 'node:path';

const PASS_THROUGH = /^(tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|chat_template\.jinja|chat_template\.json|.*\.py)$/;

export const mergeCommand: CliCommand = {
  summary: 'merge a LoRA adapter into its base and write Hugging Face safetensors shards',
  usage: `Usage: npm run cli -- merge --model <dir> --adapter <peft dir> --out <dir> [--dtype bf16|f16|f32] [--shard-gb <x>]

Streams the base tensor by tensor, adds s·B·A where the adapter applies, converts to --dtype (default bf16)
and writes model*.safetensors (+ index), config.json, generation_config.json and the tokenizer files.`,
  async run(args) {
    const { values } = parseArgs({ args, options: { model: { type: 'string' }, adapter: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string', default: 'bf16' }, 'shard-gb': { type: 'string', default: '2' } } });
    if (!values.model || !values.adapter || !values.out) throw new Error('needs --model, --adapter and --out; see --help');
    if (!['bf16', 'f16', 'f32'].includes(values.dtype!)) throw new Error(`--dtype: '${values.dtype}' is not bf16, f16 or f32`);
    const { spec, configJson, io, files } = await openModelDir(values.model);
    const adapter = await openAdapterDir(values.adapter, spec);
    const index = await CheckpointIndex.open(spec, io.open, files);
    const passThrough = new Map(await Promise.all(files.filter((f) => PASS_THROUGH.test(f)).map(async (f) => [f, await fileSource(join(values.model!, f))] as const)));
    const generationConfigJson = files.includes('generation_config.json') ? new TextDecoder().decode(await (await io.open('generation_config.json')).read(0, (await io.open('generation_config.json')).size)) : null;
    let last = -1;
    const result = await mergeExport(index, adapter, nodeDirSinks(values.out), {
      dtype: values.dtype as 'bf16' | 'f16' | 'f32',
      maxShardBytes: Number(values['shard-gb']) * 1e9,
      configJson,
      generationConfigJson,
      passThrough,
      onProgress: (p) => {
        const pct = Math.floor((100 * p.done) / p.total);
        if (pct >= last + 10) console.log(`  ${pct}% (${p.tensor})`), (last = pct);
      },
    });
    console.log(`wrote ${result.files.length} files (${result.shards.length} shard(s), ${formatBytes(result.totalBytes)}) to ${values.out}`);
    return 0;
  },
};
