import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** `../shared/reference/fixtures` beside the checkout (CI has it there). Missing fixtures fail loudly. */
export function fixturesDir(...parts: string[]): string {
  const dir = process.env.WEBTUNE_FIXTURES ?? resolve(REPO_ROOT, '../shared/reference/fixtures');
  if (!existsSync(dir)) throw new Error(`reference fixtures not found at ${dir}: they live in ../shared/reference/fixtures beside the checkout (or set WEBTUNE_FIXTURES)`);
  return join(dir, ...parts);
}

export const FIXTURE_FAMILIES = ['llama', 'qwen2', 'qwen3', 'internlm2'] as const;
