// `npm run bench:build`: bundles bench/main.ts into dist-bench/bench.mjs (WGSL inlined, only `webgpu`
// external) to run on a machine with a GPU and no node_modules: see README "Benchmarks".
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { nodeBundle } from '../tools/esbuild-common.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entries = { bench: join(root, 'bench/main.ts'), ...Object.fromEntries(process.argv.slice(2).map((p) => [p.replace(/.*\//, '').replace(/\.ts$/, ''), join(root, p)])) };
await build({ ...nodeBundle, sourcemap: false, entryPoints: entries, outdir: join(root, 'dist-bench'), outExtension: { '.js': '.mjs' } });
console.log(`built ${Object.keys(entries).map((e) => `dist-bench/${e}.mjs`).join(', ')}`);
