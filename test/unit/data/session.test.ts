import { describe, expect, it } from 'vitest';
import { fallbackTokenizerSource } from '../../../src/data/fallback-tokenizer.ts';
import { generateIdentityRecords, validateIdentityOptions } from '../../../src/data/identity.ts';
import { mapRecords } from '../../../src/data/mappers.ts';
import { DataSession, rowBuffers } from '../../../src/data/session.ts';
import type { ParseProgress } from '../../../src/data/import.ts';
import type { PrepareProgress } from '../../../src/data/api.ts';

describe('identity dataset generator', () => {
  const opts = { assistantName: "Xiaoming's assistant", owner: 'Xiaoming', description: 'I run on a 1.8B model.', languages: ['en', 'zh'] as ('en' | 'zh')[], repeat: 3, seed: 1 };
  it('every question in every language, repeated; answers name the assistant; deterministic per seed', () => {
    const recs = generateIdentityRecords(opts);
    const once = generateIdentityRecords({ ...opts, repeat: 1 });
    expect(recs.length).toBe(3 * once.length);
    expect(generateIdentityRecords(opts)).toEqual(recs);
    const m = mapRecords(recs, { id: 'xtuner' });
    expect(m.rejected).toEqual([]);
    for (const s of m.samples) {
      if (s.kind !== 'chat') throw new Error('chat expected');
      expect(s.messages[1]!.content).toContain("Xiaoming's assistant");
      expect(s.messages[1]!.content).toContain('1.8B');
    }
    const questions = new Set(m.samples.map((s) => (s.kind === 'chat' ? s.messages[0]!.content : '')));
    expect(questions).toContain('请介绍一下你自己');
    expect(questions).toContain('Who are you?');
    const answers = new Set(m.samples.map((s) => (s.kind === 'chat' ? s.messages[1]!.content : '')));
    expect(answers.size).toBeGreaterThan(4); // several phrasings in both languages
  });
  it('invalid settings are refused with the field named', () => {
    expect(validateIdentityOptions({ ...opts, assistantName: ' ', repeat: 0, languages: [] })).toEqual([
      'assistant name: required', 'languages: choose at least one', 'repeat: a whole number from 1 to 100000',
    ]);
    expect(() => generateIdentityRecords({ ...opts, description: '' })).toThrow('identity dataset: description: required');
  });
});

describe('DataSession (what the worker exposes)', () => {
  it('import with progress → detect → preview → render → prepare with progress', async () => {
    const s = new DataSession();
    await expect(s.renderSample({ 'chat.jsonl': { id: 'openai' } }, 0, {})).rejects.toThrow('no tokenizer loaded');
    const info = await s.loadTokenizer(fallbackTokenizerSource());
    expect(info.eos).toBe('<|im_end|>');
    const lines = [
      JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] }),
      'broken',
      JSON.stringify({ messages: [{ role: 'user', content: 'q' }] }),
      JSON.stringify({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y' }] }),
    ];
    const events: ParseProgress[] = [];
    const sum = await s.importFile(new Blob([lines.join('\n')]), 'chat.jsonl', undefined, (p) => events.push(p));
    expect(events[events.length - 1]!.status).toBe('done');
    const f = sum.files[0]!;
    expect(f.records).toBe(3);
    expect(sum.rejected).toEqual([expect.objectContaining({ file: 'chat.jsonl', line: 2, stage: 'parse' })]);
    expect(f.detected).toEqual({ id: 'openai' });
    const mapping = { 'chat.jsonl': f.detected! };
    const prev = await s.previewMapping(mapping);
    expect(prev.samples).toBe(2);
    expect(prev.perFile).toEqual({ 'chat.jsonl': 2 });
    expect(prev.rejected.map((r) => r.line)).toEqual([2, 3]);
    const r = await s.renderSample(mapping, 0, {});
    expect(r.pieces.join('')).toBe(r.text);
    const supervised = r.pieces.filter((_, i) => r.labels[i] !== -100).join('');
    expect(supervised).toBe('hello<|im_end|>');
    expect((await s.renderSample(mapping, -1, {})).index).toBe(1);
    const progress: PrepareProgress[] = [];
    const prepared = await s.prepare(mapping, { maxLength: 64, pack: true, seed: 1, evalSplit: 0 }, (p) => progress.push(p));
    expect(prepared.train).toHaveLength(1);
    expect(prepared.stats.rejected).toBe(2);
    expect(progress[0]).toEqual({ status: 'mapping' });
    expect(progress[progress.length - 1]).toEqual({ status: 'done' });
    expect(rowBuffers(prepared)).toHaveLength(4);
    // The training recipe's dataset: the mapped conversations without their sources, rejected lines left out.
    const plain = await s.mappedSamples(mapping);
    expect(plain).toHaveLength(prev.samples);
    expect(plain.every((x) => 'messages' in x && x.messages.some((m) => m.role === 'assistant'))).toBe(true);
  });
  it('each file keeps its own format; a file without one is reported, not silently dropped', async () => {
    const s = new DataSession();
    await s.loadTokenizer(fallbackTokenizerSource());
    await s.importFile(new Blob([JSON.stringify({ instruction: 'a', input: '', output: 'b' })]), 'a.jsonl');
    await s.importFile(new Blob([JSON.stringify({ instruction: 'c', input: '', output: 'd' })]), 'a.jsonl');
    const sum = await s.addIdentityDataset({ assistantName: 'Bot', description: 'A demo.', languages: ['en'], repeat: 1 });
    expect(sum.files.map((f) => [f.name, f.detected?.id])).toEqual([['a.jsonl', 'alpaca'], ['a.jsonl (2)', 'alpaca'], ['identity.jsonl', 'xtuner']]);
    const prev = await s.previewMapping({ 'a.jsonl': { id: 'alpaca' }, 'identity.jsonl': { id: 'xtuner' } });
    expect(prev.perFile['a.jsonl (2)']).toBe(0);
    expect(prev.rejected).toEqual([{ file: 'a.jsonl (2)', stage: 'map', reason: 'no format chosen for this file: its 1 records are not used' }]);
    expect(prev.samples).toBe(1 + sum.files[2]!.records);
  });
  it('a chat template override and back', async () => {
    const s = new DataSession();
    await s.loadTokenizer(fallbackTokenizerSource());
    const t = await s.setChatTemplate('{% for m in messages %}[{{ m.role }}]{{ m.content }}<|im_end|>{% endfor %}');
    expect(t.chatTemplate).toContain('[{{ m.role }}]');
    const sum = await s.addIdentityDataset({ assistantName: 'Bot', description: 'A demo.', languages: ['en'], repeat: 1 });
    const r = await s.renderSample({ 'identity.jsonl': sum.files[0]!.detected! }, 0, {});
    expect(r.text.startsWith('[user]')).toBe(true);
    const back = await s.setChatTemplate(null);
    expect(back.chatTemplate).toBe(back.modelChatTemplate);
  });
});
