import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { createNodeGpuContext } from '../node/gpu.ts';
import { directoryAccess } from '../node/fixture-dir.ts';
import { referenceRun } from '../engine/reference-run.ts';
import { writeSafetensors } from '../formats/safetensors.ts';

export const referenceRunCommand: CliCommand = {
  summary: 'reproduce a PyTorch/PEFT reference fixture with our kernels (f32 base)',
  usage: `Usage: npm run cli -- reference-run <fixtureDir> --out <result.safetensors>

Loads <fixtureDir>/config.json + model.safetensors (+ adapter_init/ when present) with an f32 base and
writes the keys of case.safetensors: base_logits, lora_logits, lora_loss, grad.<peft name>, adamw_losses,
packed_logits, greedy_output, merged_logits (those the fixture's inputs allow).`,
  async run(args) {
    const { values, positionals } = parseArgs({ args, options: { out: { type: 'string' } }, allowPositionals: true });
    const dir = positionals[0];
    if (!dir || !values.out) throw new Error('needs <fixtureDir> and --out <file>; see --help');
    const ctx = await createNodeGpuContext();
    const t0 = performance.now();
    const tensors = await referenceRun(ctx, { ...directoryAccess(dir), log: (l) => console.log(`  ${l} (${((performance.now() - t0) / 1000).toFixed(1)} s)`) });
    await writeFile(values.out, writeSafetensors(tensors, { format: 'pt', producer: 'webtune reference-run' }));
    console.log(`wrote ${tensors.length} tensors to ${values.out} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    ctx.destroy();
    return 0;
  },
};
