/**
 * The data worker's state and operations (implements DataWorkerApi). Pure TypeScript: the worker
 * exposes it with comlink, and tests drive it directly in Node.
 */
import type { DatasetMapping, DataWorkerApi, ImportedFile, ImportSummary, MappingPreview, PlainSample, PreparedResult, PrepareProgress, RenderedSample, TokenizerInfo } from './api.ts';
import { generateIdentityRecords, type IdentityOptions } from './identity.ts';
import { detectFormat, parseStream, type FileFormat, type ParseProgress } from './import.ts';
import { detectMapper, mapRecords, type MapResult } from './mappers.ts';
import { encodeChat, encodeText, SampleError, tokenPieces } from './mask.ts';
import { prepareDataset, type PrepareOptions } from './pipeline.ts';
import { loadTokenizer, type LoadedTokenizer, type TokenizerSource } from './tokenizer.ts';
import { tokenizerSourceFromFiles } from './tokenizer-files.ts';
import { reject, type RawRecord, type RejectedRow, type Sample } from './types.ts';

interface FileData {
  info: ImportedFile;
  records: RawRecord[];
}

export class DataSession implements DataWorkerApi {
  private tok: LoadedTokenizer | null = null;
  private modelTemplate: string | null = null;
  private data: FileData[] = [];
  private parseRejects: RejectedRow[] = [];
  private mapped = new Map<string, { key: string; result: MapResult }>();

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
    return { files: this.data.map((d) => d.info), rejected: this.parseRejects.slice() };
  }

  private add(name: string, records: RawRecord[], rejected: RejectedRow[]): ImportSummary {
    let unique = name;
    for (let k = 2; this.data.some((d) => d.info.name === unique); k++) unique = `${name} (${k})`;
    if (unique !== name) {
      for (const r of records) r.source.file = unique;
      for (const r of rejected) r.file = unique;
    }
    const d = detectMapper(records);
    this.data.push({
      info: { name: unique, records: records.length, rejected: rejected.length, detected: d.choice, reason: d.reason, fields: d.fields, head: records.slice(0, 5).map((r) => r.value) },
      records,
    });
    this.parseRejects.push(...rejected);
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
    this.data = [];
    this.parseRejects = [];
    this.mapped.clear();
  }

  /** Maps each file with its mapper (cached per file and choice). */
  private map(mapping: DatasetMapping, headSize = 0): { samples: Sample[]; rejected: RejectedRow[]; perFile: Record<string, number>; head: Record<string, Sample[]> } {
    const samples: Sample[] = [];
    const rejected: RejectedRow[] = [];
    const perFile: Record<string, number> = {};
    const head: Record<string, Sample[]> = {};
    for (const d of this.data) {
      const choice = mapping[d.info.name];
      if (!choice) {
        perFile[d.info.name] = 0;
        if (d.records.length) rejected.push(reject({ file: d.info.name }, 'map', `no format chosen for this file: its ${d.records.length} records are not used`));
        continue;
      }
      const key = JSON.stringify(choice);
      let m = this.mapped.get(d.info.name);
      if (m?.key !== key) {
        m = { key, result: mapRecords(d.records, choice) };
        this.mapped.set(d.info.name, m);
      }
      samples.push(...m.result.samples);
      rejected.push(...m.result.rejected);
      perFile[d.info.name] = m.result.samples.length;
      head[d.info.name] = m.result.samples.slice(0, headSize);
    }
    return { samples, rejected, perFile, head };
  }

  async previewMapping(mapping: DatasetMapping, limit = 5): Promise<MappingPreview> {
    const m = this.map(mapping, limit);
    return { samples: m.samples.length, perFile: m.perFile, rejected: [...this.parseRejects, ...m.rejected], head: m.head };
  }

  async renderSample(mapping: DatasetMapping, index: number, options: Pick<PrepareOptions, 'trainOnPrompt'>): Promise<RenderedSample> {
    const tok = this.tokenizer();
    const { samples } = this.map(mapping);
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

  async prepare(mapping: DatasetMapping, options: PrepareOptions, onProgress?: (p: PrepareProgress) => void): Promise<PreparedResult> {
    const tok = this.tokenizer();
    onProgress?.({ status: 'mapping' });
    const m = this.map(mapping);
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

  async mappedSamples(mapping: DatasetMapping): Promise<PlainSample[]> {
    return this.map(mapping).samples.map((s) => (s.kind === 'chat' ? { messages: s.messages } : { text: s.text }));
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
