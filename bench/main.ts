/**
 * The benchmark runner: `node dist-bench/bench.mjs [suite...] [--quick] [--json out.json]`.
 * Built by `npm run bench:build`; runs wherever Dawn finds a GPU (the lent H100: see README).
 */
import { writeFileSync } from 'node:fs';
import { createNodeGpuContext } from '../src/node/gpu.ts';
import type { GpuContext } from '../src/engine/gpu/context.ts';
import { formatTable, type BenchRow } from './harness.ts';
import { bench as matmul } from './matmul.bench.ts';
import { bench as copy } from './copy.bench.ts';
import { bench as attention } from './attention.bench.ts';
import { bench as ceAdamw } from './ce-adamw.bench.ts';
import { bench as quant4Lora } from './quant4-lora.bench.ts';
import { bench as trainStep } from './train-step.bench.ts';
import { bench as denseOps } from './dense-ops.bench.ts';
import { bench as decode } from './decode.bench.ts';
import { bench as offload } from './offload.bench.ts';

export type Suite = (ctx: GpuContext, quick: boolean) => Promise<BenchRow[]>;

export const SUITES: Record<string, Suite> = { copy, matmul, 'dense-ops': denseOps, attention, 'ce-adamw': ceAdamw, 'quant4-lora': quant4Lora, 'train-step': trainStep, decode, offload };

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const jsonAt = args.indexOf('--json');
  const json = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
  const names = args.filter((a, i) => !a.startsWith('--') && (jsonAt < 0 || i !== jsonAt + 1));
  const selected = names.length ? names : Object.keys(SUITES);
  const unknown = selected.filter((n) => !SUITES[n]);
  if (unknown.length) throw new Error(`unknown suite(s) ${unknown.join(', ')}; known: ${Object.keys(SUITES).join(', ')}`);
  const ctx = await createNodeGpuContext();
  const { adapter, features } = ctx.summary();
  console.log(`adapter: ${adapter.vendor} ${adapter.architecture} ${adapter.device} | subgroups ${features.subgroups} f16 ${features.shaderF16} timestamps ${features.timestampQuery}`);
  const all: Record<string, BenchRow[]> = {};
  for (const name of selected) {
    const t0 = performance.now();
    all[name] = await SUITES[name]!(ctx, quick);
    console.log(`\n## ${name} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n${formatTable(all[name]!)}`);
  }
  if (json) writeFileSync(json, JSON.stringify({ adapter, features, results: all }, null, 2));
  ctx.destroy();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
