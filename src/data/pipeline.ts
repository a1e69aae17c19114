/**
 * The whole preparation: mapped samples → tokenized, masked, fitted to length, shuffled with a seed,
 * split into train/eval, packed into rows, with stats and the rejected-rows report.
 * Pure: runs the same in the worker, in Node (CLI) and in tests.
 */
import { encodeChat, encodeText, IGNORE_INDEX, SampleError, type EncodeOptions } from './mask.ts';
import { buildRows, fitToLength, type LengthReport, type TokenizedSample } from './pack.ts';
import { shuffled } from './rng.ts';
import type { TokenRow } from './rows.ts';
import type { LoadedTokenizer } from './tokenizer.ts';
import type { RejectedRow, Sample } from './types.ts';
import { reject } from './types.ts';

export interface PrepareOptions extends EncodeOptions {
  /** null: no limit. */
  maxLength: number | null;
  pack: boolean;
  /** Pad rows to maxLength; defaults to `pack`. */
  padToMaxLength?: boolean;
  /** Shuffle seed; null keeps the file order. */
  seed: number | null;
  /** Fraction (0..1) of samples held out for evaluation, or an absolute count when ≥ 1. */
  evalSplit: number;
}

export const DEFAULT_PREPARE_OPTIONS: PrepareOptions = { maxLength: 2048, pack: false, seed: 42, evalSplit: 0 };

export interface Histogram {
  /** Bin edges: bin i counts lengths in [edges[i], edges[i+1]). */
  edges: number[];
  counts: number[];
}

export interface DatasetStats {
  /** Samples after mapping (input to tokenization). */
  samples: number;
  /** Documents that made it into rows: samples after drops, each chunk of a split text counted. */
  keptSamples: number;
  trainSamples: number;
  evalSamples: number;
  rows: number;
  evalRows: number;
  /** Non-padding tokens in all rows. */
  tokens: number;
  /** Tokens with a label (≠ -100) in all rows. */
  supervisedTokens: number;
  paddingTokens: number;
  truncated: number;
  split: number;
  dropped: number;
  rejected: number;
  /** Token lengths of the samples before fitting. */
  lengthHistogram: Histogram;
  minLength: number;
  maxLength: number;
  meanLength: number;
}

export interface PreparedDataset {
  train: TokenRow[];
  eval: TokenRow[];
  stats: DatasetStats;
  rejected: RejectedRow[];
  lengthReports: LengthReport[];
}

export function lengthHistogram(lengths: readonly number[], bins = 20): Histogram {
  if (lengths.length === 0) return { edges: [0, 1], counts: [0] };
  const max = Math.max(...lengths);
  const width = Math.max(1, Math.ceil((max + 1) / bins));
  const n = Math.ceil((max + 1) / width);
  const edges = Array.from({ length: n + 1 }, (_, i) => i * width);
  const counts = new Array<number>(n).fill(0);
  for (const l of lengths) counts[Math.min(n - 1, Math.floor(l / width))]!++;
  return { edges, counts };
}

/** Tokenizes and masks one sample (throws SampleError with the reason). */
export function tokenizeSample(tok: LoadedTokenizer, s: Sample, o: EncodeOptions = {}): TokenizedSample & { text: string } {
  const e = s.kind === 'chat' ? encodeChat(tok, s.messages, o) : encodeText(tok, s.text);
  return { inputIds: e.inputIds, labels: e.labels, source: s.source, kind: s.kind, text: e.text };
}

export function prepareDataset(
  tok: LoadedTokenizer,
  samples: readonly Sample[],
  options: PrepareOptions,
  earlierRejects: readonly RejectedRow[] = [],
  onProgress?: (done: number, total: number) => void,
): PreparedDataset {
  const rejected: RejectedRow[] = [...earlierRejects];
  const lengthReports: LengthReport[] = [];
  const lengths: number[] = [];
  const fitted: TokenizedSample[][] = [];
  let dropped = 0;
  samples.forEach((s, i) => {
    if (onProgress && i % 256 === 0) onProgress(i, samples.length);
    let t: TokenizedSample;
    try {
      t = tokenizeSample(tok, s, options);
    } catch (err) {
      if (!(err instanceof SampleError)) throw err;
      rejected.push(reject(s.source, s.kind === 'chat' ? 'template' : 'tokenize', err.message));
      dropped++;
      return;
    }
    lengths.push(t.inputIds.length);
    const fit = fitToLength(t, options.maxLength);
    if (fit.report) lengthReports.push(fit.report);
    if (fit.dropReason) {
      rejected.push(reject(s.source, 'truncate', fit.dropReason));
      dropped++;
      return;
    }
    fitted.push(fit.samples);
  });
  onProgress?.(samples.length, samples.length);

  // Shuffle and split whole samples (a split text document stays on one side).
  const order = options.seed === null ? fitted : shuffled(fitted, options.seed);
  const nEval = options.evalSplit >= 1 ? Math.min(order.length, Math.floor(options.evalSplit)) : Math.round(order.length * options.evalSplit);
  const evalSamples = order.slice(order.length - nEval).flat();
  const trainSamples = order.slice(0, order.length - nEval).flat();

  const rowOptions = {
    maxLength: options.maxLength,
    pack: options.pack,
    padToMaxLength: options.padToMaxLength ?? options.pack,
    padTokenId: tok.padTokenId ?? tok.eosTokenId ?? 0,
  };
  const train = buildRows(trainSamples, rowOptions);
  const evalRows = buildRows(evalSamples, rowOptions);

  let tokens = 0;
  let supervised = 0;
  let padding = 0;
  for (const r of [...train, ...evalRows]) {
    for (let t = 0; t < r.inputIds.length; t++) {
      if (r.documentIds[t] === -1) padding++;
      else tokens++;
      if (r.labels[t] !== IGNORE_INDEX) supervised++;
    }
  }
  const stats: DatasetStats = {
    samples: samples.length,
    keptSamples: trainSamples.length + evalSamples.length,
    trainSamples: trainSamples.length,
    evalSamples: evalSamples.length,
    rows: train.length,
    evalRows: evalRows.length,
    tokens,
    supervisedTokens: supervised,
    paddingTokens: padding,
    truncated: lengthReports.filter((r) => r.action === 'truncated').length,
    split: lengthReports.filter((r) => r.action === 'split').length,
    dropped,
    rejected: rejected.length,
    lengthHistogram: lengthHistogram(lengths),
    minLength: lengths.length ? Math.min(...lengths) : 0,
    maxLength: lengths.length ? Math.max(...lengths) : 0,
    meanLength: lengths.length ? lengths.reduce((a, b) => a + b, 0) / lengths.length : 0,
  };
  return { train, eval: evalRows, stats, rejected, lengthReports };
}

export function formatStats(s: DatasetStats): string {
  const lines = [
    `samples            ${s.samples} mapped; ${s.keptSamples} documents in rows (train ${s.trainSamples}, eval ${s.evalSamples})`,
    `rows               ${s.rows} train, ${s.evalRows} eval`,
    `tokens             ${s.tokens} (+${s.paddingTokens} padding)`,
    `supervised tokens  ${s.supervisedTokens} (${s.tokens ? ((100 * s.supervisedTokens) / s.tokens).toFixed(1) : '0'}%)`,
    `sample length      min ${s.minLength}, mean ${s.meanLength.toFixed(1)}, max ${s.maxLength}`,
    `truncated          ${s.truncated}`,
    `split (text)       ${s.split}`,
    `dropped            ${s.dropped}`,
    `rejected rows      ${s.rejected}`,
    'length histogram:',
  ];
  const peak = Math.max(1, ...s.lengthHistogram.counts);
  s.lengthHistogram.counts.forEach((c, i) => {
    const a = s.lengthHistogram.edges[i]!;
    const b = s.lengthHistogram.edges[i + 1]! - 1;
    lines.push(`  ${`${a}-${b}`.padStart(13)} ${String(c).padStart(7)} ${'#'.repeat(Math.round((40 * c) / peak))}`);
  });
  return lines.join('\n');
}
