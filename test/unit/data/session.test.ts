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
    await expect(s.renderSample({ id: 'openai' }, 0, {})).rejects.toThrow('no tokenizer loaded');
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
    expect(sum.records).toBe(3);
    expect(sum.rejected).toEqual([expect.objectContaining({ file: 'chat.jsonl', line: 2, stage: 'parse' })]);
    expect(sum.detected).toEqual({ id: 'openai' });
    const prev = await s.previewMapping(sum.detected!);
    expect(prev.samples).toBe(2);
    expect(prev.rejected.map((r) => r.line)).toEqual([2, 3]);
    const r = await s.renderSample(sum.detected!, 0, {});
    expect(r.pieces.join('')).toBe(r.text);
    const supervised = r.pieces.filter((_, i) => r.labels[i] !== -100).join('');
    expect(supervised).toBe('hello<|im_end|>');
    expect((await s.renderSample(sum.detected!, -1, {})).index).toBe(1);
    const progress: PrepareProgress[] = [];
    const prepared = await s.prepare(sum.detected!, { maxLength: 64, pack: true, seed: 1, evalSplit: 0 }, (p) => progress.push(p));
    expect(prepared.train).toHaveLength(1);
    expect(prepared.stats.rejected).toBe(2);
    expect(progress[0]).toEqual({ status: 'mapping' });
    expect(progress[progress.length - 1]).toEqual({ status: 'done' });
    expect(rowBuffers(prepared)).toHaveLength(4);
  });
  it('a chat template override and back; the identity generator adds records', async () => {
    const s = new DataSession();
    await s.loadTokenizer(fallbackTokenizerSource());
    const t = await s.setChatTemplate('{% for m in messages %}[{{ m.role }}]{{ m.content }}<|im_end|>{% endfor %}');
    expect(t.chatTemplate).toContain('[{{ m.role }}]');
    const sum = await s.addIdentityDataset({ assistantName: 'Bot', description: 'A demo.', languages: ['en'], repeat: 1 });
    expect(sum.detected).toEqual({ id: 'xtuner' });
    const r = await s.renderSample({ id: 'xtuner' }, 0, {});
    expect(r.text.startsWith('[user]')).toBe(true);
    const back = await s.setChatTemplate(null);
    expect(back.chatTemplate).toBe(back.modelChatTemplate);
  });
});
