/**
 * Mappers: records of many dataset formats → one internal form (XTuner's "map function" idea).
 * A chat sample is a list of {role: system|user|assistant, content}; a text sample is raw text for
 * continued pretraining. Every record that cannot be mapped becomes a rejected-row entry with the reason.
 */
import type { ChatMessage, RawRecord, RejectedRow, Sample, SourceRef } from './types.ts';
import { reject } from './types.ts';

export type MapperId = 'xtuner' | 'openai' | 'sharegpt' | 'alpaca' | 'oasst1' | 'text' | 'columns';

export const MAPPERS: readonly { id: MapperId; label: string }[] = [
  { id: 'xtuner', label: 'XTuner {conversation: [{system, input, output}]}' },
  { id: 'openai', label: 'OpenAI / HF {messages: [{role, content}]}' },
  { id: 'sharegpt', label: 'ShareGPT {conversations: [{from, value}]}' },
  { id: 'alpaca', label: 'Alpaca {instruction, input, output}' },
  { id: 'oasst1', label: 'OpenAssistant oasst1 message trees' },
  { id: 'text', label: 'Raw text (continued pretraining)' },
  { id: 'columns', label: 'Column mapper' },
];

/** Column templates: `{field}` is replaced by the record's field (objects and arrays are formatted). */
export interface ColumnMapping {
  system?: string;
  user: string;
  assistant: string;
}

export interface MapperChoice {
  id: MapperId;
  /** For 'columns'. */
  columns?: ColumnMapping;
  /** For 'oasst1': every root-to-leaf path instead of the best-ranked branch. */
  allPaths?: boolean;
  /** For 'text' on JSON records: the field holding the text (default "text"). */
  textField?: string;
}

export interface MapResult {
  samples: Sample[];
  rejected: RejectedRow[];
}

class MapError extends Error {}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function str(v: unknown, field: string, required: boolean): string | undefined {
  if (v === undefined || v === null) {
    if (required) throw new MapError(`missing field '${field}'`);
    return undefined;
  }
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new MapError(`field '${field}' must be a string (got ${Array.isArray(v) ? 'an array' : typeof v})`);
}

/** Content as string; OpenAI content-part arrays ([{type: 'text', text}]) are joined. */
function contentOf(v: unknown, field: string): string {
  if (Array.isArray(v)) {
    const texts = v.map((p, i) => {
      if (isObj(p) && typeof p.text === 'string') return p.text;
      throw new MapError(`${field}[${i}]: only text content parts are supported`);
    });
    return texts.join('');
  }
  return str(v, field, true)!;
}

const USER_ROLES = new Set(['user', 'human', 'prompter', 'question']);
const ASSISTANT_ROLES = new Set(['assistant', 'gpt', 'chatgpt', 'bard', 'bing', 'model', 'bot', 'answer']);

function normRole(r: unknown, field: string): string {
  const s = str(r, field, true)!.toLowerCase();
  if (s === 'system') return 'system';
  if (USER_ROLES.has(s)) return 'user';
  if (ASSISTANT_ROLES.has(s)) return 'assistant';
  throw new MapError(`${field}: unsupported role '${s}' (system, user and assistant turns are supported)`);
}

/** Checks the shape every chat sample must have. */
export function validateConversation(messages: ChatMessage[]): void {
  if (messages.length === 0) throw new MapError('empty conversation');
  let assistants = 0;
  messages.forEach((m, i) => {
    if (m.role !== 'system' && m.role !== 'user' && m.role !== 'assistant') throw new MapError(`message ${i + 1}: unsupported role '${m.role}'`);
    if (m.role === 'assistant') {
      assistants++;
      if (m.content.trim() === '') throw new MapError(`message ${i + 1}: empty assistant turn`);
    }
  });
  if (assistants === 0) throw new MapError('no assistant turn');
}

function mapXtuner(v: Obj): ChatMessage[] {
  const conv = v.conversation;
  if (!Array.isArray(conv)) throw new MapError("missing field 'conversation' (an array of {system, input, output})");
  const out: ChatMessage[] = [];
  conv.forEach((turn, i) => {
    const f = `conversation[${i}]`;
    if (!isObj(turn)) throw new MapError(`${f} must be an object`);
    const system = str(turn.system, `${f}.system`, false);
    if (system !== undefined && system !== '') out.push({ role: 'system', content: system });
    const input = str(turn.input, `${f}.input`, false);
    if (input !== undefined && input !== '') out.push({ role: 'user', content: input });
    const output = str(turn.output, `${f}.output`, true)!;
    const msg: ChatMessage = { role: 'assistant', content: output };
    if (turn.output_with_loss === false) msg.loss = false;
    out.push(msg);
  });
  return out;
}

function mapOpenai(v: Obj): ChatMessage[] {
  if (!Array.isArray(v.messages)) throw new MapError("missing field 'messages' (an array of {role, content})");
  return v.messages.map((m, i) => {
    const f = `messages[${i}]`;
    if (!isObj(m)) throw new MapError(`${f} must be an object`);
    const msg: ChatMessage = { role: normRole(m.role, `${f}.role`), content: contentOf(m.content, `${f}.content`) };
    if (m.loss !== undefined) {
      if (typeof m.loss !== 'boolean') throw new MapError(`${f}.loss must be true or false`);
      msg.loss = m.loss;
    }
    return msg;
  });
}

function mapSharegpt(v: Obj): ChatMessage[] {
  if (!Array.isArray(v.conversations)) throw new MapError("missing field 'conversations' (an array of {from, value})");
  const out: ChatMessage[] = [];
  const sys = str(v.system, 'system', false);
  if (sys) out.push({ role: 'system', content: sys });
  v.conversations.forEach((m, i) => {
    const f = `conversations[${i}]`;
    if (!isObj(m)) throw new MapError(`${f} must be an object`);
    const role = normRole(m.from ?? m.role, `${f}.from`);
    out.push({ role, content: contentOf(m.value ?? m.content, `${f}.value`) });
  });
  return out;
}

function mapAlpaca(v: Obj): ChatMessage[] {
  const instruction = str(v.instruction, 'instruction', true)!;
  const input = str(v.input, 'input', false) ?? '';
  const output = str(v.output, 'output', true)!;
  const out: ChatMessage[] = [];
  const sys = str(v.system, 'system', false);
  if (sys) out.push({ role: 'system', content: sys });
  out.push({ role: 'user', content: input.trim() ? `${instruction}\n\n${input}` : instruction });
  out.push({ role: 'assistant', content: output });
  return out;
}

/** Formats a field value for the column mapper: options objects become "A. ...\nB. ..." lines. */
export function formatField(v: unknown): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return v.map(formatField).join('\n');
  if (isObj(v)) return Object.entries(v).map(([k, x]) => `${k}. ${formatField(x)}`).join('\n');
  return '';
}

export function fillTemplate(template: string, v: Obj, part: string): string {
  return template.replace(/\{([^{}]+)\}/g, (_, name: string) => {
    const x = v[name];
    if (x === undefined || x === null || x === '') throw new MapError(`${part}: missing field '${name}'`);
    return formatField(x);
  });
}

function mapColumns(v: Obj, c: ColumnMapping): ChatMessage[] {
  const out: ChatMessage[] = [];
  if (c.system && c.system.trim()) out.push({ role: 'system', content: fillTemplate(c.system, v, 'system') });
  out.push({ role: 'user', content: fillTemplate(c.user, v, 'user') });
  out.push({ role: 'assistant', content: fillTemplate(c.assistant, v, 'assistant') });
  return out;
}

function textOf(v: unknown, field: string): string {
  if (typeof v === 'string') return v;
  if (isObj(v)) return str(v[field], field, true)!;
  throw new MapError(`expected text or an object with '${field}'`);
}

// ---- oasst1 ----------------------------------------------------------------------------------------

interface TreeNode {
  text: string;
  role: string;
  rank: number | null;
  children: TreeNode[];
  source: SourceRef;
}

function oasstRole(r: unknown, where: string): 'user' | 'assistant' {
  if (r === 'prompter' || r === 'user') return 'user';
  if (r === 'assistant') return 'assistant';
  throw new MapError(`${where}: unknown oasst role '${String(r)}'`);
}

function isDeleted(o: Obj): boolean {
  return o.deleted === true || o.review_result === false;
}

/** Root-to-leaf paths: the best-ranked child at each step (rank 0 is best), or every path. */
function paths(root: TreeNode, all: boolean): TreeNode[][] {
  const out: TreeNode[][] = [];
  const walk = (n: TreeNode, acc: TreeNode[]) => {
    const next = [...acc, n];
    if (n.children.length === 0) {
      out.push(next);
      return;
    }
    if (all) for (const c of n.children) walk(c, next);
    else {
      const best = n.children.reduce((a, b) => ((b.rank ?? Infinity) < (a.rank ?? Infinity) ? b : a));
      walk(best, next);
    }
  };
  walk(root, []);
  return out;
}

function pathToSample(p: TreeNode[]): Sample | RejectedRow {
  const msgs = p.map((n) => ({ role: n.role, content: n.text }));
  while (msgs.length && msgs[msgs.length - 1]!.role !== 'assistant') msgs.pop();
  const leaf = p[p.length - 1]!;
  try {
    validateConversation(msgs);
  } catch (err) {
    return reject(leaf.source, 'map', (err as Error).message);
  }
  return { kind: 'chat', messages: msgs, source: leaf.source };
}

function mapOasst(records: readonly RawRecord[], all: boolean): MapResult {
  const samples: Sample[] = [];
  const rejected: RejectedRow[] = [];
  const push = (r: Sample | RejectedRow) => ('kind' in r ? samples.push(r) : rejected.push(r));
  const flat = new Map<string, { node: TreeNode; parent: string | null }>();
  for (const rec of records) {
    const v = rec.value;
    try {
      if (!isObj(v)) throw new MapError('expected an object');
      if (isObj(v.prompt)) {
        // Tree form (oasst "trees.jsonl"): {prompt: {text, role, replies: [...]}}.
        const build = (o: Obj, where: string): TreeNode | null => {
          if (isDeleted(o)) return null;
          const node: TreeNode = {
            text: str(o.text, `${where}.text`, true)!,
            role: oasstRole(o.role, `${where}.role`),
            rank: typeof o.rank === 'number' ? o.rank : null,
            children: [],
            source: rec.source,
          };
          const replies = Array.isArray(o.replies) ? o.replies : [];
          replies.forEach((c, i) => {
            if (!isObj(c)) throw new MapError(`${where}.replies[${i}] must be an object`);
            const child = build(c, `${where}.replies[${i}]`);
            if (child) node.children.push(child);
          });
          return node;
        };
        const root = build(v.prompt, 'prompt');
        if (root) for (const p of paths(root, all)) push(pathToSample(p));
        continue;
      }
      const id = str(v.message_id, 'message_id', true)!;
      if (isDeleted(v)) continue;
      const parent = v.parent_id === null || v.parent_id === undefined ? null : str(v.parent_id, 'parent_id', true)!;
      flat.set(id, {
        node: { text: str(v.text, 'text', true)!, role: oasstRole(v.role, 'role'), rank: typeof v.rank === 'number' ? v.rank : null, children: [], source: rec.source },
        parent,
      });
    } catch (err) {
      rejected.push(reject(rec.source, 'map', (err as Error).message));
    }
  }
  const roots: TreeNode[] = [];
  for (const [, { node, parent }] of flat) {
    if (parent === null) roots.push(node);
    else {
      const p = flat.get(parent);
      if (p) p.node.children.push(node);
      else rejected.push(reject(node.source, 'map', `parent_id '${parent}' not found in the file (or deleted)`));
    }
  }
  for (const r of roots) for (const p of paths(r, all)) push(pathToSample(p));
  return { samples, rejected };
}

// ---- entry points ----------------------------------------------------------------------------------

function mapOne(v: unknown, choice: MapperChoice): ChatMessage[] | string {
  if (choice.id === 'text') return textOf(v, choice.textField ?? 'text');
  if (!isObj(v)) throw new MapError(`expected a JSON object (got ${Array.isArray(v) ? 'an array' : typeof v})`);
  switch (choice.id) {
    case 'xtuner':
      return mapXtuner(v);
    case 'openai':
      return mapOpenai(v);
    case 'sharegpt':
      return mapSharegpt(v);
    case 'alpaca':
      return mapAlpaca(v);
    case 'columns':
      if (!choice.columns) throw new Error('column mapper chosen without a column mapping');
      return mapColumns(v, choice.columns);
    case 'oasst1':
      throw new Error('oasst1 maps whole trees; use mapRecords');
  }
}

export function mapRecords(records: readonly RawRecord[], choice: MapperChoice): MapResult {
  if (choice.id === 'oasst1') return mapOasst(records, choice.allPaths ?? false);
  const samples: Sample[] = [];
  const rejected: RejectedRow[] = [];
  for (const rec of records) {
    try {
      const m = mapOne(rec.value, choice);
      if (typeof m === 'string') {
        if (m.trim() === '') throw new MapError('empty text');
        samples.push({ kind: 'text', text: m, source: rec.source });
      } else {
        validateConversation(m);
        samples.push({ kind: 'chat', messages: m, source: rec.source });
      }
    } catch (err) {
      if (!(err instanceof MapError)) throw err;
      rejected.push(reject(rec.source, 'map', err.message));
    }
  }
  return { samples, rejected };
}

/** Field names seen in the first records (for the column mapper). */
export function fieldNames(records: readonly RawRecord[], limit = 50): string[] {
  const seen = new Set<string>();
  for (const r of records.slice(0, limit)) if (isObj(r.value)) for (const k of Object.keys(r.value)) seen.add(k);
  return [...seen];
}

const USER_FIELDS = ['question', 'prompt', 'query', 'instruction', 'input', 'problem', 'context'];
const OPTION_FIELDS = ['options', 'choices'];
const ASSISTANT_FIELDS = ['answer', 'response', 'output', 'completion', 'target', 'solution', 'answer_idx', 'label'];

/** A column mapping guessed from field names (e.g. MedQA: question + options → user, answer → assistant). */
export function guessColumns(fields: readonly string[]): ColumnMapping | null {
  const lower = new Map(fields.map((f) => [f.toLowerCase(), f]));
  const pick = (names: string[]) => names.map((n) => lower.get(n)).find((f) => f !== undefined);
  const user = pick(USER_FIELDS);
  const assistant = pick(ASSISTANT_FIELDS);
  if (!user || !assistant || user === assistant) return null;
  const options = pick(OPTION_FIELDS);
  const system = lower.get('system');
  return {
    ...(system ? { system: `{${system}}` } : {}),
    user: options ? `{${user}}\n{${options}}` : `{${user}}`,
    assistant: `{${assistant}}`,
  };
}

export interface Detection {
  choice: MapperChoice | null;
  /** Why, in words, for the UI. */
  reason: string;
  fields: string[];
}

/** Proposes a mapper from the first records; the user can override it. */
export function detectMapper(records: readonly RawRecord[]): Detection {
  const sample = records.slice(0, 20);
  const fields = fieldNames(records);
  if (sample.length === 0) return { choice: null, reason: 'no records', fields };
  if (sample.every((r) => typeof r.value === 'string')) return { choice: { id: 'text' }, reason: 'plain text', fields };
  const has = (k: string) => sample.filter((r) => isObj(r.value) && k in r.value).length >= Math.ceil(sample.length / 2);
  if (has('conversation')) return { choice: { id: 'xtuner' }, reason: "records have 'conversation'", fields };
  if (has('messages')) return { choice: { id: 'openai' }, reason: "records have 'messages'", fields };
  if (has('conversations')) return { choice: { id: 'sharegpt' }, reason: "records have 'conversations'", fields };
  if ((has('message_id') && has('parent_id')) || (has('prompt') && sample.some((r) => isObj(r.value) && isObj(r.value.prompt)))) {
    return { choice: { id: 'oasst1' }, reason: 'oasst1 message trees (message_id / parent_id)', fields };
  }
  if (has('instruction') && has('output')) return { choice: { id: 'alpaca' }, reason: "records have 'instruction' and 'output'", fields };
  const columns = guessColumns(fields);
  if (columns) return { choice: { id: 'columns', columns }, reason: `columns guessed from field names (${fields.join(', ')})`, fields };
  if (has('text')) return { choice: { id: 'text' }, reason: "records have only 'text'", fields };
  return { choice: null, reason: `no known format; map the columns (${fields.join(', ')})`, fields };
}
