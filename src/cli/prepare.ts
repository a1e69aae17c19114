/**
 * `webtune prepare`: the data pipeline from the command line, the same code the app's Data section
 * runs in its worker. Prints the stats and writes the token rows as JSONL.
 */
import { closeSync, createReadStream, createWriteStream, existsSync, openSync, readdirSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import type { CliCommand } from './main.ts';
import { detectFormat, FILE_FORMATS, parseStream, type FileFormat } from '../data/import.ts';
import { detectMapper, MAPPERS, mapRecords, type MapperChoice, type MapperId } from '../data/mappers.ts';
import { formatStats, prepareDataset } from '../data/pipeline.ts';
import { rowToJson, type TokenRow } from '../data/rows.ts';
import { BUILTIN_TEMPLATES, builtinTemplate } from '../data/templates.ts';
import { loadTokenizer } from '../data/tokenizer.ts';
import { TOKENIZER_FILE_NAMES, tokenizerSourceFromFiles, type TokenizerFiles } from '../data/tokenizer-files.ts';
import { describeSource, type RawRecord, type RejectedRow, type Sample } from '../data/types.ts';

const usage = `Usage: npm run cli -- prepare --data <file> --tokenizer <dir> [options]

Reads a dataset, maps it to conversations (or pretraining text), renders the chat template, tokenizes,
masks the labels, fits, shuffles, splits and packs; prints the stats and writes the rows as JSONL
{"input_ids","labels","position_ids","document_ids"}.

  --data <file>          dataset file (.jsonl .json .csv .tsv .xlsx .txt .md); repeat for several
  --tokenizer <dir>      folder with tokenizer.json (or tokenizer.model), tokenizer_config.json and
                         optionally chat_template.jinja
  --format <mapper>      ${MAPPERS.map((m) => m.id).join(' | ')} (default: detected per file)
  --file-format <fmt>    ${FILE_FORMATS.join(' | ')} (default: from the file name)
  --system/--user/--assistant <template>
                         column mapper templates, e.g. --user '{question}\\n{options}' --assistant '{answer}'
  --all-paths            oasst1: every path to a leaf instead of the best-ranked branch
  --template <id|file>   chat template: ${BUILTIN_TEMPLATES.map((t) => t.id).join(', ')}, or a .jinja file
  --max-length <N>       truncate chat samples / split text at N tokens (default 2048; 0 = no limit)
  --pack                 pack several samples per row (padded to max length)
  --train-on-prompt      supervise the prompt tokens too
  --seed <N>             shuffle seed (default 42; 'none' keeps file order)
  --eval-split <x>       fraction (0..1) or count (>=1) held out for evaluation (default 0)
  --out <file>           train rows JSONL (default rows.jsonl)
  --eval-out <file>      eval rows JSONL (default: <out> with .eval.jsonl)
  --rejected <file>      write the rejected-rows report as JSONL
`;

interface Args {
  data: string[];
  tokenizer?: string;
  format?: MapperId;
  fileFormat?: FileFormat;
  system?: string;
  user?: string;
  assistant?: string;
  allPaths: boolean;
  template?: string;
  maxLength: number | null;
  pack: boolean;
  trainOnPrompt: boolean;
  seed: number | null;
  evalSplit: number;
  out: string;
  evalOut?: string;
  rejected?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { data: [], allPaths: false, maxLength: 2048, pack: false, trainOnPrompt: false, seed: 42, evalSplit: 0, out: 'rows.jsonl' };
  const value = (i: number, flag: string): string => {
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${flag} needs a value`);
    return v;
  };
  const int = (v: string, flag: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag}: expected a non-negative integer, got '${v}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i]!;
    switch (f) {
      case '--data': a.data.push(value(i++, f)); break;
      case '--tokenizer': a.tokenizer = value(i++, f); break;
      case '--format': {
        const v = value(i++, f);
        if (!MAPPERS.some((m) => m.id === v)) throw new Error(`--format: unknown format '${v}' (known: ${MAPPERS.map((m) => m.id).join(', ')})`);
        a.format = v as MapperId;
        break;
      }
      case '--file-format': {
        const v = value(i++, f);
        if (!FILE_FORMATS.includes(v as FileFormat)) throw new Error(`--file-format: unknown '${v}' (known: ${FILE_FORMATS.join(', ')})`);
        a.fileFormat = v as FileFormat;
        break;
      }
      case '--system': a.system = value(i++, f); break;
      case '--user': a.user = value(i++, f); break;
      case '--assistant': a.assistant = value(i++, f); break;
      case '--all-paths': a.allPaths = true; break;
      case '--template': a.template = value(i++, f); break;
      case '--max-length': {
        const n = int(value(i++, f), f);
        a.maxLength = n === 0 ? null : n;
        break;
      }
      case '--pack': a.pack = true; break;
      case '--train-on-prompt': a.trainOnPrompt = true; break;
      case '--seed': {
        const v = value(i++, f);
        a.seed = v === 'none' ? null : int(v, f);
        break;
      }
      case '--eval-split': {
        const v = Number(value(i++, f));
        if (!(v >= 0)) throw new Error(`--eval-split: expected a fraction or a count, got '${argv[i]}'`);
        a.evalSplit = v;
        break;
      }
      case '--out': a.out = value(i++, f); break;
      case '--eval-out': a.evalOut = value(i++, f); break;
      case '--rejected': a.rejected = value(i++, f); break;
      default:
        throw new Error(`unknown option '${f}' (see --help)`);
    }
  }
  if (a.data.length === 0) throw new Error('--data <file> is required');
  if (!a.tokenizer) throw new Error('--tokenizer <dir> is required');
  return a;
}

export function readTokenizerDir(dir: string): TokenizerFiles {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`--tokenizer: '${dir}' is not a folder`);
  const files: TokenizerFiles = new Map();
  const present = new Set(readdirSync(dir));
  for (const name of TOKENIZER_FILE_NAMES) {
    if (!present.has(name)) continue;
    const p = join(dir, name);
    files.set(name, name === 'tokenizer.model' ? new Uint8Array(readFileSync(p)) : readFileSync(p, 'utf8'));
  }
  return files;
}

export async function readDataFile(path: string, format: FileFormat | undefined): Promise<{ records: RawRecord[]; rejected: RejectedRow[] }> {
  if (!existsSync(path)) throw new Error(`--data: no such file '${path}'`);
  const size = statSync(path).size;
  let fmt = format;
  if (!fmt) {
    const head = Buffer.alloc(Math.min(4096, size));
    const fd = openSync(path, 'r');
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    fmt = detectFormat(basename(path), head.toString('utf8'));
  }
  const stream = Readable.toWeb(createReadStream(path)) as unknown as ReadableStream<Uint8Array>;
  let lastPct = -1;
  const r = await parseStream(stream, basename(path), fmt, size, (p) => {
    const pct = Math.floor((100 * p.bytes) / Math.max(1, p.totalBytes));
    if (size > 8 << 20 && pct >= lastPct + 10) {
      lastPct = pct;
      process.stderr.write(`  reading ${basename(path)}: ${pct}%\n`);
    }
  });
  return r;
}

function rejectedLine(r: RejectedRow): string {
  return `  ${describeSource(r)} [${r.stage}]: ${r.reason}`;
}

async function writeRows(path: string, rows: readonly TokenRow[]): Promise<void> {
  const out = createWriteStream(path);
  for (const r of rows) {
    if (!out.write(rowToJson(r) + '\n')) await new Promise<void>((res) => out.once('drain', () => res()));
  }
  await new Promise<void>((res, rej) => out.end((err?: Error | null) => (err ? rej(err) : res())));
}

async function run(argv: string[]): Promise<number> {
  const a = parseArgs(argv);
  const src = tokenizerSourceFromFiles(readTokenizerDir(a.tokenizer!), a.tokenizer!);
  if (a.template) {
    src.chatTemplate = BUILTIN_TEMPLATES.some((t) => t.id === a.template) ? builtinTemplate(a.template) : readFileSync(a.template, 'utf8');
  }
  const tok = loadTokenizer(src);

  // Each file is mapped on its own: with --format, or with the format detected for it.
  const samples: Sample[] = [];
  const rejected: RejectedRow[] = [];
  for (const file of a.data) {
    const r = await readDataFile(file, a.fileFormat);
    rejected.push(...r.rejected);
    let choice: MapperChoice;
    if (a.format) {
      choice = { id: a.format };
      if (a.format === 'columns') {
        if (!a.user || !a.assistant) throw new Error('--format columns needs --user and --assistant templates');
        choice.columns = { user: a.user, assistant: a.assistant, ...(a.system ? { system: a.system } : {}) };
      }
    } else {
      const d = detectMapper(r.records);
      if (!d.choice) throw new Error(`${file}: cannot detect the dataset format: ${d.reason}; pass --format`);
      choice = d.choice;
      console.log(`${basename(file)}: format ${choice.id} (${d.reason})${choice.columns ? ` ${JSON.stringify(choice.columns)}` : ''}`);
    }
    if (a.allPaths) choice.allPaths = true;
    const mapped = mapRecords(r.records, choice);
    samples.push(...mapped.samples);
    rejected.push(...mapped.rejected);
  }

  const prepared = prepareDataset(tok, samples, {
    maxLength: a.maxLength,
    pack: a.pack,
    seed: a.seed,
    evalSplit: a.evalSplit,
    trainOnPrompt: a.trainOnPrompt,
  }, rejected);

  console.log(formatStats(prepared.stats));
  if (prepared.lengthReports.length) {
    console.log(`length changes (${prepared.lengthReports.length}):`);
    for (const r of prepared.lengthReports.slice(0, 20)) {
      console.log(`  ${describeSource(r.source)}: ${r.from} tokens ${r.action === 'truncated' ? `truncated to ${r.to}` : `split into ${r.to} chunks`}`);
    }
    if (prepared.lengthReports.length > 20) console.log(`  ... and ${prepared.lengthReports.length - 20} more`);
  }
  if (prepared.rejected.length) {
    console.log(`rejected rows (${prepared.rejected.length}):`);
    for (const r of prepared.rejected.slice(0, 20)) console.log(rejectedLine(r));
    if (prepared.rejected.length > 20) console.log(`  ... and ${prepared.rejected.length - 20} more${a.rejected ? '' : ' (--rejected <file> writes them all)'}`);
  }
  if (a.rejected) writeFileSync(a.rejected, prepared.rejected.map((r) => JSON.stringify(r)).join('\n') + (prepared.rejected.length ? '\n' : ''));
  await writeRows(a.out, prepared.train);
  console.log(`wrote ${prepared.train.length} rows to ${a.out}`);
  if (prepared.eval.length) {
    const evalOut = a.evalOut ?? a.out.replace(/(\.jsonl)?$/, '.eval.jsonl');
    await writeRows(evalOut, prepared.eval);
    console.log(`wrote ${prepared.eval.length} eval rows to ${evalOut}`);
  }
  if (prepared.train.length === 0) {
    console.error('no rows were produced; see the rejected rows above');
    return 1;
  }
  return 0;
}

export const prepareCommand: CliCommand = {
  summary: 'Prepare a dataset: map, template, tokenize, mask, pack; print stats, write token rows',
  usage,
  run,
};
