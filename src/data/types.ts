/** The pipeline's internal forms: conversations (after mapping) and where each record came from. */

export type Role = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: Role | string;
  content: string;
  /** XTuner's openai-format flag: force loss on (true) or off (false) for this message. */
  loss?: boolean;
  [key: string]: unknown;
}

/** Where a record came from, for error messages and the rejected-rows report. */
export interface SourceRef {
  file: string;
  /** 1-based line (JSONL, JSON, txt). */
  line?: number;
  /** 1-based spreadsheet row (CSV/TSV/xlsx; the header is row 1). */
  row?: number;
  /** For JSON arrays: the element's path, e.g. `[12]` or `train[3]`. */
  item?: string;
  sheet?: string;
}

export function describeSource(s: SourceRef): string {
  const parts = [s.file];
  if (s.sheet !== undefined) parts.push(`sheet ${s.sheet}`);
  if (s.line !== undefined) parts.push(`line ${s.line}`);
  if (s.row !== undefined) parts.push(`row ${s.row}`);
  if (s.item !== undefined) parts.push(`item ${s.item}`);
  return parts.join(', ');
}

/** One parsed input record (a JSON object, a CSV row as an object, or a text document). */
export interface RawRecord {
  value: unknown;
  source: SourceRef;
}

/** A mapped training sample: a conversation, or raw text for continued pretraining. */
export type Sample =
  | { kind: 'chat'; messages: ChatMessage[]; source: SourceRef }
  | { kind: 'text'; text: string; source: SourceRef };

export type RejectStage = 'parse' | 'map' | 'template' | 'tokenize' | 'truncate';

export interface RejectedRow {
  file: string;
  line?: number;
  row?: number;
  item?: string;
  sheet?: string;
  stage: RejectStage;
  reason: string;
}

export function reject(source: SourceRef, stage: RejectStage, reason: string): RejectedRow {
  return { ...source, stage, reason };
}
