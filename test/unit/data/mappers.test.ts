import { describe, expect, it } from 'vitest';
import { detectMapper, guessColumns, mapRecords, type MapperChoice } from '../../../src/data/mappers.ts';
import { parseTextByFormat } from '../../../src/data/import.ts';
import type { RawRecord } from '../../../src/data/types.ts';

const recs = (...values: unknown[]): RawRecord[] => values.map((value, i) => ({ value, source: { file: 'd.jsonl', line: i + 1 } }));
const map = (choice: MapperChoice, ...values: unknown[]) => mapRecords(recs(...values), choice);

describe('xtuner mapper', () => {
  it('maps multi-turn conversations with a system prompt and output_with_loss', () => {
    const r = map({ id: 'xtuner' }, {
      conversation: [
        { system: 'Be brief.', input: 'Hi', output: 'Hello!' },
        { input: 'Who are you?', output: 'An assistant.', output_with_loss: false },
      ],
    });
    expect(r.rejected).toEqual([]);
    expect(r.samples[0]).toEqual({
      kind: 'chat',
      source: { file: 'd.jsonl', line: 1 },
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello!' },
        { role: 'user', content: 'Who are you?' },
        { role: 'assistant', content: 'An assistant.', loss: false },
      ],
    });
  });
  it('rejects malformed records with the reason', () => {
    const r = map({ id: 'xtuner' }, { conv: [] }, { conversation: [{ input: 'q' }] }, { conversation: [{ input: 'q', output: '  ' }] }, [1, 2]);
    expect(r.samples).toEqual([]);
    expect(r.rejected.map((x) => [x.line, x.reason])).toEqual([
      [1, "missing field 'conversation' (an array of {system, input, output})"],
      [2, "missing field 'conversation[0].output'"],
      [3, 'message 2: empty assistant turn'],
      [4, 'expected a JSON object (got an array)'],
    ]);
    expect(r.rejected.every((x) => x.file === 'd.jsonl' && x.stage === 'map')).toBe(true);
  });
});

describe('openai mapper', () => {
  it('maps messages, honours loss flags, joins text parts', () => {
    const r = map({ id: 'openai' }, {
      messages: [
        { role: 'system', content: 'S' },
        { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
        { role: 'assistant', content: 'c', loss: false },
        { role: 'user', content: 'd' },
        { role: 'assistant', content: 'e', loss: true },
      ],
    });
    expect(r.samples[0]!.kind === 'chat' && r.samples[0]!.messages).toEqual([
      { role: 'system', content: 'S' },
      { role: 'user', content: 'ab' },
      { role: 'assistant', content: 'c', loss: false },
      { role: 'user', content: 'd' },
      { role: 'assistant', content: 'e', loss: true },
    ]);
  });
  it('rejects unknown roles, bad loss flags, missing assistant', () => {
    const r = map({ id: 'openai' },
      { messages: [{ role: 'tool', content: 'x' }] },
      { messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y', loss: 'yes' }] },
      { messages: [{ role: 'user', content: 'x' }] },
      { messages: [{ role: 'user' }, { role: 'assistant', content: 'y' }] },
    );
    expect(r.rejected.map((x) => x.reason)).toEqual([
      "messages[0].role: unsupported role 'tool' (system, user and assistant turns are supported)",
      'messages[1].loss must be true or false',
      'no assistant turn',
      "missing field 'messages[0].content'",
    ]);
  });
});

describe('sharegpt mapper', () => {
  it('maps from/value with human/gpt roles and a top-level system', () => {
    const r = map({ id: 'sharegpt' }, { system: 'S', conversations: [{ from: 'human', value: 'q' }, { from: 'gpt', value: 'a' }] });
    expect(r.samples[0]!.kind === 'chat' && r.samples[0]!.messages).toEqual([
      { role: 'system', content: 'S' },
      { role: 'user', content: 'q' },
      { role: 'assistant', content: 'a' },
    ]);
  });
  it('rejects unknown speakers and non-object turns', () => {
    const r = map({ id: 'sharegpt' }, { conversations: [{ from: 'narrator', value: 'q' }] }, { conversations: ['q'] });
    expect(r.rejected.map((x) => x.reason)).toEqual([
      "conversations[0].from: unsupported role 'narrator' (system, user and assistant turns are supported)",
      'conversations[0] must be an object',
    ]);
  });
});

describe('alpaca mapper', () => {
  it('joins instruction and input, output is the answer', () => {
    const r = map({ id: 'alpaca' }, { instruction: 'Translate', input: 'hola', output: 'hello' }, { instruction: 'Greet', input: '', output: 'hi' });
    expect(r.samples.map((s) => s.kind === 'chat' && s.messages)).toEqual([
      [{ role: 'user', content: 'Translate\n\nhola' }, { role: 'assistant', content: 'hello' }],
      [{ role: 'user', content: 'Greet' }, { role: 'assistant', content: 'hi' }],
    ]);
  });
  it('rejects a missing output and a non-string field', () => {
    const r = map({ id: 'alpaca' }, { instruction: 'x' }, { instruction: { a: 1 }, output: 'y' });
    expect(r.rejected.map((x) => x.reason)).toEqual(["missing field 'output'", "field 'instruction' must be a string (got object)"]);
  });
});

describe('column mapper', () => {
  const medqa = {
    question: 'A 45-year-old man presents with chest pain. What is the next step?',
    options: { A: 'ECG', B: 'Discharge', C: 'MRI' },
    answer: 'ECG',
    answer_idx: 'A',
  };
  it('guesses MedQA columns: question + options → user, answer → assistant', () => {
    expect(guessColumns(Object.keys(medqa))).toEqual({ user: '{question}\n{options}', assistant: '{answer}' });
    const d = detectMapper(recs(medqa));
    expect(d.choice?.id).toBe('columns');
    const r = mapRecords(recs(medqa), d.choice!);
    expect(r.samples[0]!.kind === 'chat' && r.samples[0]!.messages).toEqual([
      { role: 'user', content: `${medqa.question}\nA. ECG\nB. Discharge\nC. MRI` },
      { role: 'assistant', content: 'ECG' },
    ]);
  });
  it('uses user-chosen templates and rejects rows missing a field, naming it', () => {
    const choice: MapperChoice = { id: 'columns', columns: { system: 'You answer {subject} questions.', user: 'Q: {q}', assistant: '{a}' } };
    const r = map(choice, { subject: 'math', q: '1+1', a: 2 }, { subject: 'math', q: '2+2' });
    expect(r.samples[0]!.kind === 'chat' && r.samples[0]!.messages).toEqual([
      { role: 'system', content: 'You answer math questions.' },
      { role: 'user', content: 'Q: 1+1' },
      { role: 'assistant', content: '2' },
    ]);
    expect(r.rejected).toEqual([{ file: 'd.jsonl', line: 2, stage: 'map', reason: "assistant: missing field 'a'" }]);
  });
});

describe('text mapper', () => {
  it('maps strings and {text} records; rejects empty text and missing fields', () => {
    const r = map({ id: 'text' }, 'doc one', { text: 'doc two' }, { text: '   ' }, { body: 'x' });
    expect(r.samples.map((s) => s.kind === 'text' && s.text)).toEqual(['doc one', 'doc two']);
    expect(r.rejected.map((x) => [x.line, x.reason])).toEqual([[3, 'empty text'], [4, "missing field 'text'"]]);
  });
});

describe('oasst1 mapper', () => {
  // A tree: prompt p1 → assistant replies a1 (rank 1) and a2 (rank 0); a2 → prompter p2 → assistant a3.
  const flat = [
    { message_id: 'p1', parent_id: null, role: 'prompter', text: 'Hi?', message_tree_id: 't' },
    { message_id: 'a1', parent_id: 'p1', role: 'assistant', text: 'worse answer', rank: 1 },
    { message_id: 'a2', parent_id: 'p1', role: 'assistant', text: 'best answer', rank: 0 },
    { message_id: 'p2', parent_id: 'a2', role: 'prompter', text: 'More?' },
    { message_id: 'a3', parent_id: 'p2', role: 'assistant', text: 'Sure.', rank: 0 },
    { message_id: 'x', parent_id: 'missing', role: 'assistant', text: 'orphan' },
    { message_id: 'd', parent_id: 'p1', role: 'assistant', text: 'deleted', deleted: true, rank: -5 },
  ];
  it('detects the format and takes the best-ranked branch by default', () => {
    const d = detectMapper(recs(...flat));
    expect(d.choice).toEqual({ id: 'oasst1' });
    const r = mapRecords(recs(...flat), d.choice!);
    expect(r.samples.map((s) => s.kind === 'chat' && s.messages.map((m) => m.content))).toEqual([['Hi?', 'best answer', 'More?', 'Sure.']]);
    expect(r.rejected).toEqual([{ file: 'd.jsonl', line: 6, stage: 'map', reason: "parent_id 'missing' not found in the file (or deleted)" }]);
  });
  it('all paths: one conversation per path to a leaf', () => {
    const r = mapRecords(recs(...flat), { id: 'oasst1', allPaths: true });
    expect(r.samples.map((s) => s.kind === 'chat' && s.messages.map((m) => m.content))).toEqual([
      ['Hi?', 'worse answer'],
      ['Hi?', 'best answer', 'More?', 'Sure.'],
    ]);
  });
  it('tree form (prompt + replies), a trailing prompter leaf is dropped', () => {
    const tree = {
      message_tree_id: 't',
      prompt: {
        text: 'Q', role: 'prompter', replies: [
          { text: 'A', role: 'assistant', rank: 0, replies: [{ text: 'unanswered follow-up', role: 'prompter', replies: [] }] },
        ],
      },
    };
    const r = map({ id: 'oasst1' }, tree);
    expect(r.samples.map((s) => s.kind === 'chat' && s.messages)).toEqual([[{ role: 'user', content: 'Q' }, { role: 'assistant', content: 'A' }]]);
  });
});

describe('detection', () => {
  it('proposes the right mapper per format', () => {
    expect(detectMapper(recs({ conversation: [] })).choice?.id).toBe('xtuner');
    expect(detectMapper(recs({ messages: [] })).choice?.id).toBe('openai');
    expect(detectMapper(recs({ conversations: [] })).choice?.id).toBe('sharegpt');
    expect(detectMapper(recs({ instruction: 'a', input: '', output: 'b' })).choice?.id).toBe('alpaca');
    expect(detectMapper(recs('plain text')).choice?.id).toBe('text');
    expect(detectMapper(recs({ text: 'x', meta: 1 })).choice?.id).toBe('text');
    const none = detectMapper(recs({ foo: 1, bar: 2 }));
    expect(none.choice).toBeNull();
    expect(none.reason).toContain('foo, bar');
  });
});

describe('malformed files end to end (parse + map)', () => {
  it('a bad JSON line becomes a rejected row naming the file and line; the rest maps', () => {
    const text = '{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}\n{"messages": [oops\n\n{"messages":[{"role":"user","content":"q2"}]}\n';
    const parsed = parseTextByFormat(text, 'chat.jsonl', 'jsonl');
    expect(parsed.rejected).toHaveLength(1);
    expect(parsed.rejected[0]).toMatchObject({ file: 'chat.jsonl', line: 2, stage: 'parse' });
    expect(parsed.rejected[0]!.reason).toMatch(/^invalid JSON/);
    const mapped = mapRecords(parsed.records, { id: 'openai' });
    expect(mapped.samples).toHaveLength(1);
    expect(mapped.rejected).toEqual([{ file: 'chat.jsonl', line: 4, stage: 'map', reason: 'no assistant turn' }]);
  });
});
