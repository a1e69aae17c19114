/**
 * The prepared row: what the trainer consumes. One row may hold several packed documents.
 * HF convention: labels[t] = inputIds[t] where supervised and -100 elsewhere; the model shifts.
 */
export interface TokenRow {
  inputIds: Int32Array;
  /** -100 = no loss. */
  labels: Int32Array;
  /** Restart at 0 for each packed document. */
  positionIds: Int32Array;
  /** 0, 1, 2, ... per packed document within the row; -1 for padding. */
  documentIds: Int32Array;
  /** Where each packed document came from ("data.jsonl, line 3"), so a bad row can be named in training. */
  sources?: string[];
}

/** The longest row's token count (0 for none): what a plan over these rows pads every row to. */
export function longestRow(rows: readonly { inputIds: ArrayLike<number> }[]): number {
  return Math.max(0, ...rows.map((r) => r.inputIds.length));
}

interface RowJson {
  input_ids: number[];
  labels: number[];
  position_ids: number[];
  document_ids: number[];
  sources?: string[];
}

export function rowToJson(row: TokenRow): string {
  const o: RowJson = {
    input_ids: Array.from(row.inputIds),
    labels: Array.from(row.labels),
    position_ids: Array.from(row.positionIds),
    document_ids: Array.from(row.documentIds),
  };
  if (row.sources) o.sources = row.sources;
  return JSON.stringify(o);
}

/** Rows as JSONL, one `{"input_ids","labels","position_ids","document_ids"}` object per line. */
export function rowsToJsonl(rows: Iterable<TokenRow>): string {
  let out = '';
  for (const r of rows) out += rowToJson(r) + '\n';
  return out;
}

function intArray(v: unknown, field: string, where: string): Int32Array {
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x))) throw new Error(`${where}: field '${field}' must be an array of integers`);
  return Int32Array.from(v as number[]);
}

/** Parses rows JSONL; errors name the file and line. */
export function rowsFromJsonl(text: string, file = 'rows.jsonl'): TokenRow[] {
  const rows: TokenRow[] = [];
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${file} line ${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      throw new Error(`${where}: invalid JSON (${(err as Error).message})`);
    }
    const row: TokenRow = {
      inputIds: intArray(o.input_ids, 'input_ids', where),
      labels: intArray(o.labels, 'labels', where),
      positionIds: intArray(o.position_ids, 'position_ids', where),
      documentIds: intArray(o.document_ids, 'document_ids', where),
    };
    if (o.sources !== undefined) {
      if (!Array.isArray(o.sources) || !o.sources.every((x) => typeof x === 'string')) throw new Error(`${where}: field 'sources' must be an array of strings`);
      row.sources = o.sources as string[];
    }
    const n = row.inputIds.length;
    if (row.labels.length !== n || row.positionIds.length !== n || row.documentIds.length !== n) {
      throw new Error(`${where}: input_ids, labels, position_ids and document_ids must have the same length`);
    }
    rows.push(row);
  });
  return rows;
}
