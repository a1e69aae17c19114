import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { demoModelFiles } from '../engine/demo/demo-model.ts';

export const demoModelCommand: CliCommand = {
  summary: 'write the offline demo model (tiny Llama, byte-level tokenizer) as a Hugging Face folder',
  usage: 'Usage: npm run cli -- demo-model --out <dir> [--seed <n>]\n\nThe same model the app offers offline; train, chat and export work on it like on any checkpoint.',
  async run(args) {
    const { values } = parseArgs({ args, options: { out: { type: 'string' }, seed: { type: 'string', default: '1' } } });
    if (!values.out) throw new Error('needs --out <dir>');
    await mkdir(values.out, { recursive: true });
    for (const [name, data] of demoModelFiles(Number(values.seed))) await writeFile(join(values.out, name), data);
    console.log(`wrote the demo model to ${values.out}`);
    return 0;
  },
};
