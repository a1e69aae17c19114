/**
 * The data worker's state and operations (implements DataWorkerApi). Pure TypeScript: the worker
 * exposes it with comlink, and tests drive it directly in Node.
 */
import type { DataWorkerApi, ImportSummary, MappingPreview, PreparedResult, PrepareProgress, RenderedSample, TokenizerInfo } from './api.ts';
import { generateIdentityRecords, type IdentityOptions } from './identity.ts';
import { detectFormat, parseStream, type FileFormat, type ParseProgress } from './import.ts';
import { detectMapper, mapRecords, type MapperChoice, type MapResult } from './mappers.ts';
import { encodeChat, encodeText, SampleError, tokenPieces } from './mask.ts';
import { prepareDataset, type PrepareOptions } from './pipeline.ts';
import { loadTokenizer, type LoadedTokenizer, type TokenizerSource } from './tokenizer.ts';
import { tokenizerSourceFromFiles } from './tokenizer-files.ts';
import type { RawRecord, RejectedRow } from './types.ts';

export class DataSession implements DataWorkerApi {
  private tok: LoadedTokenizer | null = null;
  private modelTemplate: string | null = null;
  private records: RawRecord[] = [];
  private parseRejects: RejectedRow[] = [];
  private files: { name: string; records: number; rejected: number }[] = [];
  private mapped: { key: string; result: MapResult } | null = null;

  private info(): TokenizerInfo {
    const t = this.tokenizer();
    return {
      vocabSize: t.vocabSize,
      bos: t.specialTokens.bos,
      eos: t.specialTokens.eos,
      pad: t.specialTokens.pad,
      eosTokenIds: t.eosTokenIds,
      padTokenId: t.padTokenId,
      chatTemplate: t.chatTemplate,
      modelChatTemplate: this.modelTemplate,
    };
  }

  private tokenizer(): LoadedTokenizer {
    if (!this.tok) throw new Error('no tokenizer loaded');
    return this.tok;
  }

  async loadTokenizer(source: TokenizerSource): Promise<TokenizerInfo> {
    this.tok = loadTokenizer(source);
    this.modelTemplate = this.tok.chatTemplate;
    return this.info();
  }

  async loadTokenizerFiles(files: Record<string, string | Uint8Array>): Promise<TokenizerInfo> {
    return this.loadTokenizer(tokenizerSourceFromFiles(new Map(Object.entries(files))));
  }

  async setChatTemplate(template: string | null): Promise<TokenizerInfo> {
    this.tok = this.tokenizer().withChatTemplate(template ?? this.modelTemplate);
    return this.info();
  }

  private summary(): ImportSummary {
    const d = detectMapper(this.records);
    return {
      files: this.files.slice(),
      records: this.records.length,
      rejected: this.parseRejects.slice(),
      detected: d.choice,
      reason: d.reason,
      fields: d.fields,
      head: this.records.slice(0, 5).map((r) => r.value),
    };
  }

  private add(name: string, records: RawRecord[], rejected: RejectedRow[]): ImportSummary {
    this.records.push(...records);
    this.parseRejects.push(...rejected);
    this.files.push({ name, records: records.length, rejected: rejected.length });
    this.mapped = null;
    return this.summary();
  }

  async importFile(file: Blob, name: string, format?: FileFormat, onProgress?: (p: ParseProgress) => void): Promise<ImportSummary> {
    const fmt = format ?? detectFormat(name, await file.slice(0, 4096).text());
    const r = await parseStream(file.stream() as ReadableStream<Uint8Array>, name, fmt, file.size, onProgress);
    return this.add(name, r.records, r.rejected);
  }

  async addIdentityDataset(options: IdentityOptions): Promise<ImportSummary> {
    return this.add('identity.jsonl', generateIdentityRecords(options), []);
  }

  async clear(): Promise<void> {
    this.records = [];
    this.parseRejects = [];
    this.files = [];
    this.mapped = null;
  }

  private map(choice: MapperChoice): MapResult {
    const key = JSON.stringify(choice);
    if (this.mapped?.key !== key) this.mapped = { key, result: mapRecords(this.records, choice) };
    return this.mapped.result;
  }

  async previewMapping(choice: MapperChoice, limit = 5): Promise<MappingPreview> {
    const m = this.map(choice);
    return { samples: m.samples.length, rejected: [...this.parseRejects, ...m.rejected], head: m.samples.slice(0, limit) };
  }

  async renderSample(choice: MapperChoice, index: number, options: Pick<PrepareOptions, 'trainOnPrompt'>): Promise<RenderedSample> {
    const tok = this.tokenizer();
    const { samples } = this.map(choice);
    if (samples.length === 0) throw new Error('no samples: the mapping produced none');
    const i = ((index % samples.length) + samples.length) % samples.length;
    const s = samples[i]!;
    try {
      const e = s.kind === 'chat' ? encodeChat(tok, s.messages, { trainOnPrompt: options.trainOnPrompt ?? false }) : encodeText(tok, s.text);
      return { index: i, total: samples.length, source: s.source, text: e.text, pieces: tokenPieces(tok, e.text, e.inputIds), ids: e.inputIds, labels: e.labels };
    } catch (err) {
      if (!(err instanceof SampleError)) throw err;
      return { index: i, total: samples.length, source: s.source, text: '', pieces: [], ids: [], labels: [], error: err.message };
    }
  }

  async prepare(choice: MapperChoice, options: PrepareOptions, onProgress?: (p: PrepareProgress) => void): Promise<PreparedResult> {
    const tok = this.tokenizer();
    onProgress?.({ status: 'mapping' });
    const m = this.map(choice);
    let last = 0;
    const r = prepareDataset(tok, m.samples, options, [...this.parseRejects, ...m.rejected], (done, total) => {
      const now = Date.now();
      if (onProgress && (now - last > 100 || done === total)) {
        last = now;
        onProgress({ status: 'tokenizing', done, total });
      }
    });
    onProgress?.({ status: 'done' });
    return r;
  }
}

/** The buffers of prepared rows, for Comlink.transfer. */
export function rowBuffers(r: PreparedResult): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  for (const row of [...r.train, ...r.eval]) {
    for (const a of [row.inputIds, row.labels, row.positionIds, row.documentIds]) out.push(a.buffer as ArrayBuffer);
  }
  return out;
}
