/**
 * The one typed interface of the data worker. `workers/data.worker.ts` exposes a `DataSession` (which
 * implements it) with comlink; the UI holds `Comlink.Remote<DataWorkerApi>`. Callbacks go through
 * `Comlink.proxy`; prepared rows come back as transferable typed arrays.
 */
import type { FileFormat, ParseProgress } from './import.ts';
import type { IdentityOptions } from './identity.ts';
import type { MapperChoice } from './mappers.ts';
import type { DatasetStats, PrepareOptions } from './pipeline.ts';
import type { LengthReport } from './pack.ts';
import type { TokenRow } from './rows.ts';
import type { TokenizerSource } from './tokenizer.ts';
import type { ChatMessage, RejectedRow, SourceRef } from './types.ts';

export interface TokenizerInfo {
  vocabSize: number;
  bos: string | null;
  eos: string | null;
  pad: string | null;
  eosTokenIds: number[];
  padTokenId: number | null;
  /** The template in use (the model's, a built-in or a custom one), or null. */
  chatTemplate: string | null;
  /** The model's own template (tokenizer_config.json / chat_template.jinja), or null. */
  modelChatTemplate: string | null;
}

export interface ImportedFile {
  /** Unique within the session (a second file of the same name gets " (2)"). */
  name: string;
  records: number;
  /** Records that could not be parsed. */
  rejected: number;
  /** Proposed mapper (null: none recognised) and why. */
  detected: MapperChoice | null;
  reason: string;
  /** Field names seen in the first records (for the column mapper). */
  fields: string[];
  /** The first few raw records. */
  head: unknown[];
}

export interface ImportSummary {
  /** Files imported so far in this session, in order. */
  files: ImportedFile[];
  /** Parse-stage rejects so far. */
  rejected: RejectedRow[];
}

/** The mapper chosen for each imported file, by file name (each file may have its own format). */
export type DatasetMapping = Record<string, MapperChoice>;

export interface MappingPreview {
  /** Samples the mapping produced (all files). */
  samples: number;
  /** Samples per file. */
  perFile: Record<string, number>;
  /** Records rejected by the mapping (and parse-stage rejects). */
  rejected: RejectedRow[];
  /** The first few mapped samples of each file. */
  head: Record<string, PreviewSample[]>;
}

export type PreviewSample =
  | { kind: 'chat'; messages: ChatMessage[]; source: SourceRef }
  | { kind: 'text'; text: string; source: SourceRef };

/** One sample rendered with the template and tokenized: for the sample viewer. */
export interface RenderedSample {
  index: number;
  total: number;
  source: SourceRef;
  /** Rendered text. */
  text: string;
  /** The characters each token covers, in order (concatenated = the text, for chat samples). */
  pieces: string[];
  ids: number[];
  labels: number[];
  /** Set when this sample is rejected (template error, no supervised turn...): the reason. */
  error?: string;
}

export type PrepareProgress =
  | { status: 'mapping' }
  | { status: 'tokenizing'; done: number; total: number }
  | { status: 'done' };

export interface PreparedResult {
  train: TokenRow[];
  eval: TokenRow[];
  stats: DatasetStats;
  rejected: RejectedRow[];
  lengthReports: LengthReport[];
}

/** A mapped sample without its source: a conversation or raw text (what a training recipe ships as JSONL). */
export type PlainSample = { messages: ChatMessage[] } | { text: string };

export interface DataWorkerApi {
  /** Loads a tokenizer (tokenizer.json text/object + config + optional template). */
  loadTokenizer(source: TokenizerSource): Promise<TokenizerInfo>;
  /** Loads a tokenizer from a model's files (file name → text, or bytes for tokenizer.model). */
  loadTokenizerFiles(files: Record<string, string | Uint8Array>): Promise<TokenizerInfo>;
  /** Replaces the chat template (null: back to the model's own). */
  setChatTemplate(template: string | null): Promise<TokenizerInfo>;
  /** Parses a file (streamed, with progress) and adds its records to the session. */
  importFile(file: Blob, name: string, format?: FileFormat, onProgress?: (p: ParseProgress) => void): Promise<ImportSummary>;
  /** Adds the personal-assistant identity dataset as records. */
  addIdentityDataset(options: IdentityOptions): Promise<ImportSummary>;
  /** Forgets all imported records. */
  clear(): Promise<void>;
  /** Maps every file with its mapper; returns the head and the rejects. Files without one are reported. */
  previewMapping(mapping: DatasetMapping, limit?: number): Promise<MappingPreview>;
  /** Renders and tokenizes mapped sample `index` (wraps around). */
  renderSample(mapping: DatasetMapping, index: number, options: Pick<PrepareOptions, 'trainOnPrompt'>): Promise<RenderedSample>;
  /** The whole pipeline; the rows' buffers are transferred. */
  prepare(mapping: DatasetMapping, options: PrepareOptions, onProgress?: (p: PrepareProgress) => void): Promise<PreparedResult>;
  /** Every mapped sample as a conversation ({messages}) or raw text ({text}): the dataset a training recipe ships as JSONL. */
  mappedSamples(mapping: DatasetMapping): Promise<PlainSample[]>;
}
