import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { prepareCommand } from '../../../src/cli/prepare.ts';
import { rowsFromJsonl } from '../../../src/data/rows.ts';
import { realTokenizer, tokenizerDir } from './helpers.ts';

describe('cli prepare', () => {
  it('prepares a JSONL file into rows, reports rejects, and the rows carry the mask', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wt-prepare-'));
    const data = path.join(dir, 'alpaca.jsonl');
    fs.writeFileSync(data, [
      JSON.stringify({ instruction: 'Say hi', input: '', output: 'Hi there!' }),
      '{not json',
      JSON.stringify({ instruction: 'Name a colour', input: '', output: 'Blue.' }),
    ].join('\n'));
    const out = path.join(dir, 'rows.jsonl');
    const rejected = path.join(dir, 'rejected.jsonl');
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const rc = await prepareCommand.run(['--data', data, '--tokenizer', tokenizerDir('llama3'), '--seed', 'none', '--out', out, '--rejected', rejected]);
    const printed = log.mock.calls.map((c) => c.join(' ')).join('\n');
    log.mockRestore();
    expect(rc).toBe(0);
    expect(printed).toContain('alpaca.jsonl: format alpaca');
    expect(printed).toMatch(/rejected rows\s+1/);
    const rows = rowsFromJsonl(fs.readFileSync(out, 'utf8'), out);
    expect(rows).toHaveLength(2);
    const tok = realTokenizer('llama3');
    const sup = Array.from(rows[0]!.labels).filter((l) => l !== -100);
    expect(tok.decode(sup)).toBe('Hi there!<|eot_id|>');
    expect(JSON.parse(fs.readFileSync(rejected, 'utf8').trim())).toMatchObject({ file: 'alpaca.jsonl', line: 2, stage: 'parse' });
  }, 120_000); // loads the real Llama 3 tokenizer twice

  it('bad options fail with a clear message', async () => {
    await expect(prepareCommand.run(['--tokenizer', 'x'])).rejects.toThrow('--data <file> is required');
    await expect(prepareCommand.run(['--data', 'x', '--tokenizer', 'y', '--format', 'nope'])).rejects.toThrow(/unknown format 'nope'/);
    await expect(prepareCommand.run(['--data', '/nonexistent.jsonl', '--tokenizer', tokenizerDir('qwen3')])).rejects.toThrow(/no such file/);
  });
});
