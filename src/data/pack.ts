/**
 * Length handling and row assembly: truncation (reported per sample), splitting of long pretraining
 * text, packing of several samples per row (each keeping its own positions and attention span), padding.
 */
import { IGNORE_INDEX } from './mask.ts';
import type { TokenRow } from './rows.ts';
import { describeSource, type SourceRef } from './types.ts';

export interface TokenizedSample {
  inputIds: number[];
  labels: number[];
  source: SourceRef;
  kind: 'chat' | 'text';
}

export interface LengthReport {
  source: SourceRef;
  /** Tokens before truncation / splitting. */
  from: number;
  /** Tokens kept (truncate), or the number of chunks (split). */
  to: number;
  action: 'truncated' | 'split';
}

export interface FitResult {
  samples: TokenizedSample[];
  report: LengthReport | null;
  /** Set when the sample must be dropped; the reason names what went wrong. */
  dropReason?: string;
}

function supervisedCount(labels: readonly number[]): number {
  let n = 0;
  for (const l of labels) if (l !== IGNORE_INDEX) n++;
  return n;
}

/**
 * Fits one sample to maxLength. Chat samples are truncated at the end (and dropped when nothing
 * supervised is left); pretraining text is split into maxLength chunks, so no text is lost.
 */
export function fitToLength(s: TokenizedSample, maxLength: number | null): FitResult {
  const n = s.inputIds.length;
  if (maxLength === null || n <= maxLength) return { samples: [s], report: null };
  if (maxLength < 2) throw new Error(`max length must be at least 2 (got ${maxLength})`);
  if (s.kind === 'text') {
    const chunks: TokenizedSample[] = [];
    for (let a = 0; a < n; a += maxLength) {
      const ids = s.inputIds.slice(a, a + maxLength);
      if (ids.length < 2) continue; // a lone trailing token teaches nothing (its label is never used)
      chunks.push({ ...s, inputIds: ids, labels: s.labels.slice(a, a + maxLength) });
    }
    return { samples: chunks, report: { source: s.source, from: n, to: chunks.length, action: 'split' } };
  }
  const cut: TokenizedSample = { ...s, inputIds: s.inputIds.slice(0, maxLength), labels: s.labels.slice(0, maxLength) };
  const report: LengthReport = { source: s.source, from: n, to: maxLength, action: 'truncated' };
  // The first token's label is never used (nothing predicts it), so count from the second.
  if (supervisedCount(cut.labels.slice(1)) === 0) {
    return { samples: [], report, dropReason: `over-long: ${n} tokens; no supervised token left after truncation to ${maxLength}` };
  }
  return { samples: [cut], report };
}

export interface RowOptions {
  maxLength: number | null;
  /** Several samples per row (greedy, in order, samples never split across rows). */
  pack: boolean;
  /** Pad every row to maxLength (needs maxLength). */
  padToMaxLength: boolean;
  padTokenId: number;
}

/**
 * Builds rows. Within a row each document has positions from 0 and its own document id; the label of
 * each document's first token is -100 (no token of the row may predict it: in a packed row the token
 * before it belongs to another document).
 */
export function buildRows(samples: readonly TokenizedSample[], o: RowOptions): TokenRow[] {
  if (o.pack && o.maxLength === null) throw new Error('packing needs a max length');
  if (o.padToMaxLength && o.maxLength === null) throw new Error('padding to max length needs a max length');
  const groups: TokenizedSample[][] = [];
  if (o.pack) {
    let cur: TokenizedSample[] = [];
    let len = 0;
    for (const s of samples) {
      const n = s.inputIds.length;
      if (n > o.maxLength!) throw new Error(`sample of ${n} tokens exceeds max length ${o.maxLength}; fit samples first`);
      if (len + n > o.maxLength! && cur.length) {
        groups.push(cur);
        cur = [];
        len = 0;
      }
      cur.push(s);
      len += n;
    }
    if (cur.length) groups.push(cur);
  } else {
    for (const s of samples) groups.push([s]);
  }
  return groups.map((g) => {
    const used = g.reduce((a, s) => a + s.inputIds.length, 0);
    const total = o.padToMaxLength ? Math.max(o.maxLength!, used) : used;
    const row: TokenRow = {
      inputIds: new Int32Array(total).fill(o.padTokenId),
      labels: new Int32Array(total).fill(IGNORE_INDEX),
      positionIds: new Int32Array(total),
      documentIds: new Int32Array(total).fill(-1),
      sources: g.map((s) => describeSource(s.source)),
    };
    let at = 0;
    g.forEach((s, d) => {
      const n = s.inputIds.length;
      row.inputIds.set(s.inputIds, at);
      row.labels.set(s.labels, at);
      row.labels[at] = IGNORE_INDEX;
      for (let t = 0; t < n; t++) {
        row.positionIds[at + t] = t;
        row.documentIds[at + t] = d;
      }
      at += n;
    });
    return row;
  });
}
