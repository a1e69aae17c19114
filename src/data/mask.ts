/**
 * From a sample to token ids and labels, with the loss mask taken from character spans of the rendered
 * text (never from guessing token positions, never from comparing ids with the pad id).
 *
 * 1. Render the conversation with the chat template (the real text).
 * 2. Render it again with each message's content replaced by a sentinel: the "skeleton" tells which
 *    characters the template wrote around each message. Walking the real text against the skeleton gives
 *    the characters each message became, so a template that injects text (Qwen3's empty
 *    `<think>\n\n</think>\n\n`), trims content (Llama 3's `| trim`) or reorders turns is handled. If the
 *    skeleton does not line up (a template whose output depends on the content itself), the contents are
 *    searched for in order instead.
 * 3. The supervised span of an assistant turn is its content plus the end-of-turn token that follows it
 *    (<|im_end|>, <|eot_id|>, eos...), so the model learns to stop.
 * 4. Tokens are mapped to characters by byte alignment (`LoadedTokenizer.offsets`); a token is supervised
 *    when it overlaps a supervised span (a token straddling the start of a turn, like "\n\n" made of the
 *    template's "\n" and the content's "\n", carries content and is supervised). Tokenizers whose normalizer rewrites text fall back to encoding
 *    prefixes of the text.
 */
import type { LoadedTokenizer } from './tokenizer.ts';
import type { ChatMessage } from './types.ts';

export const IGNORE_INDEX = -100;

export interface Span {
  start: number;
  end: number;
}

export interface EncodeOptions {
  /** Supervise every token, prompt included (default false: assistant turns only). */
  trainOnPrompt?: boolean;
  /** Extra chat template variables (e.g. enable_thinking). */
  templateExtra?: Record<string, unknown>;
}

export interface EncodedSample {
  /** The rendered text (chat template output, or the raw text for pretraining). */
  text: string;
  inputIds: number[];
  labels: number[];
  /** Supervised character spans in `text`. */
  spans: Span[];
}

/** An error about one sample; the pipeline turns it into a rejected-row entry. */
export class SampleError extends Error {}

const SENTINEL = (i: number) => `\uE000${i}\uE001`;
const SENTINEL_RE = /\uE000(\d+)\uE001/g;

function isSupervised(m: ChatMessage): boolean {
  return typeof m.loss === 'boolean' ? m.loss : m.role === 'assistant';
}

/** Forms the template may give a content: as is, trimmed, or (Qwen3) only the part after </think>. */
function contentCandidates(content: string): string[] {
  const c = [content, content.trim(), content.replace(/^\n+/, ''), content.trimEnd()];
  const k = content.lastIndexOf('</think>');
  if (k >= 0) {
    const after = content.slice(k + '</think>'.length).replace(/^\n+/, '');
    c.push(after, after.trim());
  }
  return [...new Set(c)].filter((s) => s.length > 0);
}

/** Characters of `text` that each message became, from the sentinel skeleton; null if it does not line up. */
function alignWithSkeleton(text: string, skeleton: string, count: number): (Span | null)[] | null {
  const segments: string[] = [];
  const order: number[] = [];
  let last = 0;
  for (const m of skeleton.matchAll(SENTINEL_RE)) {
    segments.push(skeleton.slice(last, m.index));
    order.push(Number(m[1]));
    last = m.index + m[0].length;
  }
  segments.push(skeleton.slice(last));
  if (new Set(order).size !== order.length) return null;
  const out: (Span | null)[] = new Array<Span | null>(count).fill(null);
  if (!text.startsWith(segments[0]!)) return null;
  let pos = segments[0]!.length;
  for (let k = 0; k < order.length; k++) {
    const next = segments[k + 1]!;
    let end: number;
    if (k === order.length - 1) {
      if (!text.endsWith(next) || text.length - next.length < pos) return null;
      end = text.length - next.length;
    } else {
      if (next.length === 0) return null; // two adjacent messages: ambiguous
      end = text.indexOf(next, pos);
      if (end < 0) return null;
    }
    out[order[k]!] = { start: pos, end };
    pos = end + next.length;
  }
  return out;
}

function endOfTurnAfter(tok: LoadedTokenizer, text: string, end: number): number {
  for (let gap = 0; gap <= 2; gap++) {
    const j = end + gap;
    if (gap > 0 && !/\s/.test(text[j - 1] ?? '')) break;
    for (const name of tok.endOfTurnTokens.keys()) if (text.startsWith(name, j)) return j + name.length;
  }
  return end;
}

/** Supervised character spans of a rendered conversation. Throws SampleError naming the turn. */
export function supervisedSpans(
  tok: LoadedTokenizer,
  messages: readonly ChatMessage[],
  text: string,
  templateExtra?: Record<string, unknown>,
): Span[] {
  let regions: (Span | null)[] | null = null;
  try {
    const skeleton = tok.applyChatTemplate(
      messages.map((m, i) => ({ ...m, content: SENTINEL(i) })),
      { addGenerationPrompt: false, ...(templateExtra ? { extra: templateExtra } : {}) },
    );
    regions = alignWithSkeleton(text, skeleton, messages.length);
  } catch {
    regions = null;
  }
  const spans: Span[] = [];
  let cursor = 0;
  messages.forEach((m, i) => {
    const supervised = isSupervised(m);
    const cands = contentCandidates(m.content);
    let found: Span | null = null;
    const region = regions?.[i] ?? null;
    if (region) {
      const rendered = text.slice(region.start, region.end);
      for (const c of cands) {
        const o = rendered.indexOf(c);
        if (o >= 0) {
          found = { start: region.start + o, end: region.start + o + c.length };
          break;
        }
      }
      // The template rendered this content in its own way: what it wrote in its place is the turn.
      if (!found && rendered.length > 0) found = { ...region };
    } else {
      for (const c of cands) {
        const o = text.indexOf(c, cursor);
        if (o >= 0) {
          found = { start: o, end: o + c.length };
          break;
        }
      }
      // Reasoning moved into a <think> block by the template: supervise the block too.
      if (found && m.content.includes('</think>')) {
        const before = text.slice(cursor, found.start);
        const t = before.lastIndexOf('<think>');
        if (t >= 0) found.start = cursor + t;
      }
    }
    if (!found) {
      if (supervised) throw new SampleError(`${m.role} turn ${i + 1}: the chat template did not render its content`);
      return;
    }
    cursor = found.end;
    if (supervised) {
      const end = endOfTurnAfter(tok, text, found.end);
      spans.push({ start: found.start, end });
      cursor = end;
    }
  });
  return spans;
}

/** Per-token labels from character spans. */
export function labelsFromSpans(tok: LoadedTokenizer, text: string, ids: readonly number[], spans: readonly Span[]): number[] {
  const labels = new Array<number>(ids.length).fill(IGNORE_INDEX);
  if (spans.length === 0 || ids.length === 0) return labels;
  const off = tok.offsets(text, ids);
  if (off) {
    let s = 0;
    for (let i = 0; i < ids.length; i++) {
      const a = off.starts[i]!;
      const b = Math.max(off.ends[i]!, a + 1);
      while (s < spans.length && spans[s]!.end <= a) s++;
      const sp = spans[s];
      if (sp && sp.start < b && sp.end > a) labels[i] = ids[i]!;
    }
    return labels;
  }
  // Fallback: count the tokens that lie wholly before a boundary by encoding the prefix.
  const before = (p: number): { k: number; clean: boolean } => {
    const pre = tok.encode(text.slice(0, p), { addSpecialTokens: false });
    let k = 0;
    while (k < pre.length && pre[k] === ids[k]) k++;
    return { k, clean: k === pre.length };
  };
  for (const sp of spans) {
    const first = before(sp.start).k;
    const e = before(sp.end);
    const last = Math.min(ids.length, e.clean ? e.k : e.k + 1);
    for (let i = first; i < last; i++) labels[i] = ids[i]!;
  }
  return labels;
}

/** Renders, tokenizes and masks one conversation. */
export function encodeChat(tok: LoadedTokenizer, messages: readonly ChatMessage[], options: EncodeOptions = {}): EncodedSample {
  let text: string;
  try {
    text = tok.applyChatTemplate(messages, { addGenerationPrompt: false, ...(options.templateExtra ? { extra: options.templateExtra } : {}) });
  } catch (err) {
    throw new SampleError((err as Error).message);
  }
  const inputIds = tok.encode(text, { addSpecialTokens: false });
  if (options.trainOnPrompt) {
    return { text, inputIds, labels: inputIds.slice(), spans: [{ start: 0, end: text.length }] };
  }
  const spans = supervisedSpans(tok, messages, text, options.templateExtra);
  if (spans.length === 0) throw new SampleError('no supervised turn (no assistant message, or all have loss: false)');
  const labels = labelsFromSpans(tok, text, inputIds, spans);
  return { text, inputIds, labels, spans };
}

/**
 * Raw text for continued pretraining: BOS (and whatever else the tokenizer's post-processor adds) as
 * the tokenizer defines them, then eos appended when it is not already last; every token supervised.
 */
export function encodeText(tok: LoadedTokenizer, text: string): EncodedSample {
  if (text.trim().length === 0) throw new SampleError('empty text');
  const inputIds = tok.encode(text, { addSpecialTokens: true });
  if (tok.eosTokenId !== null && inputIds[inputIds.length - 1] !== tok.eosTokenId) inputIds.push(tok.eosTokenId);
  return { text, inputIds, labels: inputIds.slice(), spans: [{ start: 0, end: text.length }] };
}

/** Token pieces of a rendered sample for display: the characters each token covers (no repeats). */
export function tokenPieces(tok: LoadedTokenizer, text: string, ids: readonly number[]): string[] {
  const off = tok.offsets(text, ids);
  if (!off) return ids.map((id) => tok.decode([id]));
  const out: string[] = [];
  let prevEnd = 0;
  for (let i = 0; i < ids.length; i++) {
    const a = Math.max(off.starts[i]!, prevEnd);
    const b = off.ends[i]!;
    out.push(b > a ? text.slice(a, b) : '');
    prevEnd = Math.max(prevEnd, b);
  }
  return out;
}
