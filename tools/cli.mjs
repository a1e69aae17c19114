#!/usr/bin/env node
// `npm run cli -- <command> ...`: bundles src/cli/main.ts (esbuild, well under a second) and runs it, so
// the CLI uses the very same engine and WGSL files as the app without a TypeScript loader.
import { build } from 'esbuild';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';
import { nodeBundle } from './esbuild-common.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = join(root, 'dist-cli', 'webtune.mjs');
await build({ ...nodeBundle, entryPoints: [join(root, 'src/cli/main.ts')], outfile });
const { main } = await import(pathToFileURL(outfile).href);
process.exitCode = await main(process.argv.slice(2));
