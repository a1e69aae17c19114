/**
 * `webtune chat`: talk to a model (4-bit or f32 base, optionally with a PEFT LoRA adapter) in the
 * terminal, with the same generator, sampling kernels and chat-template code path as the app.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { createNodeGpuContext } from '../node/gpu.ts';
import { directoryAccess } from '../node/fixture-dir.ts';
import { fileSource } from '../node/files.ts';
import { loadTokenizer } from '../data/tokenizer.ts';
import { TOKENIZER_FILE_NAMES, tokenizerSourceFromFiles, type TokenizerFiles } from '../data/tokenizer-files.ts';
import { parseModelConfig } from '../engine/model/config.ts';
import { CheckpointIndex } from '../engine/model/weights.ts';
import { loadBaseWeights, releaseBaseWeights } from '../engine/model/base-weights.ts';
import { formatBytes } from '../engine/gpu/errors.ts';
import { Generator } from '../engine/generate/generator.ts';
import { ChatSession, chatStopTokenIds, decodeTokensPerSecond, generationConfigEosIds } from '../engine/generate/chat.ts';
import { loadLoraAdapter } from '../engine/generate/adapter.ts';
import { DEFAULT_SETTINGS, validateSettings, type GenerationSettings } from '../engine/generate/settings.ts';

const d = DEFAULT_SETTINGS;
const usage = `Usage: npm run cli -- chat --model <dir> [--adapter <dir>] [--prompt "..."] [options]

Chats with a model: interactive (one line per turn; /reset clears the conversation, /system <text> sets
the system prompt, /quit or Ctrl-D ends) or one-shot with --prompt. Tokens stream to stdout. Ctrl-C stops
the answer being generated (the partial answer stays in the conversation); at the prompt it ends.

  --model <dir>             Hugging Face checkpoint folder (config.json, model.safetensors or shards,
                            tokenizer.json or tokenizer.model, tokenizer_config.json, chat template)
  --adapter <dir>           PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
  --prompt <text>           one-shot: answer this and exit
  --system <text>           system prompt (default: the chat template's own, if it has one)
  --f32                     keep the base in f32 instead of 4-bit
  --temperature <x>         0 = greedy (default ${d.temperature})
  --top-p <x>               (default ${d.topP})
  --top-k <n>               0 = off (default ${d.topK})
  --repetition-penalty <x>  (default ${d.repetitionPenalty})
  --seed <n>                sampling seed (default ${d.seed})
  --max-new-tokens <n>      (default ${d.maxNewTokens})
  --stop <text>             stop string (repeatable); the template's end-of-turn tokens and the eos ids of
                            config.json / generation_config.json always stop
  --max-tokens <n>          KV-cache size: conversation tokens kept on the GPU (default 4096)
  --no-thinking             pass enable_thinking=false to the template (Qwen3)`;

function num(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${flag}: '${v}' is not a number`);
  return n;
}

function readTokenizerFiles(dir: string): TokenizerFiles {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`--model: '${dir}' is not a folder`);
  const files: TokenizerFiles = new Map();
  const present = new Set(readdirSync(dir));
  for (const name of TOKENIZER_FILE_NAMES) {
    if (!present.has(name)) continue;
    const p = join(dir, name);
    files.set(name, name === 'tokenizer.model' ? new Uint8Array(readFileSync(p)) : readFileSync(p, 'utf8'));
  }
  return files;
}

export const chatCommand: CliCommand = {
  summary: 'chat with a model (and a LoRA adapter), streamed, with sampling controls',
  usage,
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        model: { type: 'string' }, adapter: { type: 'string' }, prompt: { type: 'string' }, system: { type: 'string' }, f32: { type: 'boolean', default: false },
        temperature: { type: 'string' }, 'top-p': { type: 'string' }, 'top-k': { type: 'string' }, 'repetition-penalty': { type: 'string' },
        seed: { type: 'string' }, 'max-new-tokens': { type: 'string' }, stop: { type: 'string', multiple: true }, 'max-tokens': { type: 'string' },
        'no-thinking': { type: 'boolean', default: false },
      },
    });
    if (!values.model) throw new Error('needs --model <dir>; see --help');
    const settings: GenerationSettings = validateSettings({
      ...DEFAULT_SETTINGS,
      ...Object.fromEntries(
        Object.entries({
          temperature: num(values.temperature, '--temperature'), topP: num(values['top-p'], '--top-p'), topK: num(values['top-k'], '--top-k'),
          repetitionPenalty: num(values['repetition-penalty'], '--repetition-penalty'), seed: num(values.seed, '--seed'), maxNewTokens: num(values['max-new-tokens'], '--max-new-tokens'),
        }).filter(([, v]) => v !== undefined),
      ),
      stopStrings: values.stop ?? [],
    });
    const maxTokens = num(values['max-tokens'], '--max-tokens') ?? 4096;
    const tok = loadTokenizer(tokenizerSourceFromFiles(readTokenizerFiles(values.model), values.model));
    if (!tok.chatTemplate) throw new Error(`${values.model}: the tokenizer has no chat template (tokenizer_config.json chat_template or chat_template.jinja)`);
    const io = directoryAccess(values.model);
    const cfg = await io.open('config.json');
    const spec = parseModelConfig(new TextDecoder().decode(await cfg.read(0, cfg.size)), join(values.model, 'config.json'));
    const ctx = await createNodeGpuContext();
    const weights = await loadBaseWeights(ctx, await CheckpointIndex.open(spec, io.open), { quantize: !values.f32 });
    let adapter: Awaited<ReturnType<typeof loadLoraAdapter>> | null = null;
    if (values.adapter) {
      adapter = await loadLoraAdapter(ctx, spec, readFileSync(join(values.adapter, 'adapter_config.json'), 'utf8'), await fileSource(join(values.adapter, 'adapter_model.safetensors')));
    }
    const gen = await Generator.create(ctx, weights, { maxTokens, lora: adapter?.lora ?? null });
    const info = `${spec.architecture}, ${spec.layers} layers; base ${values.f32 ? 'f32' : '4-bit'}${adapter ? ` + LoRA r=${adapter.lora.layout.rank}` : ''}; ${formatBytes(ctx.pool.liveBytes)} on ${ctx.adapter.vendor || 'the GPU'} ${ctx.adapter.device}`.trim();
    const genConfig = join(values.model, 'generation_config.json');
    const stopTokenIds = chatStopTokenIds(tok, spec.eosTokenIds, existsSync(genConfig) ? generationConfigEosIds(readFileSync(genConfig, 'utf8'), genConfig) : []);
    const chat = new ChatSession(gen, tok, { stopTokenIds, ...(values.system !== undefined ? { system: values.system } : {}), ...(values['no-thinking'] ? { templateExtra: { enable_thinking: false } } : {}) });
    // Ctrl-C: stops the answer being generated; otherwise ends the program. In a terminal readline reads
    // Ctrl-C itself (raw mode) and emits 'SIGINT' on the interface, not on the process: both are handled.
    let answering: AbortController | null = null;
    let rl: ReturnType<typeof createInterface> | null = null;
    const onInterrupt = () => {
      if (answering) answering.abort();
      else if (rl) rl.close();
      else process.exit(130);
    };
    process.on('SIGINT', onInterrupt);
    const say = async (text: string) => {
      const ac = new AbortController();
      answering = ac;
      try {
        const { result } = await chat.send(text, settings, (delta) => process.stdout.write(delta), ac.signal);
        process.stdout.write('\n');
        console.error(
          `[${result.tokens.length} tokens, ${result.finishReason === 'abort' ? 'stopped' : result.finishReason}; prompt ${result.promptTokens} (${result.reusedTokens} cached) in ${result.prefillMs.toFixed(0)} ms; ${decodeTokensPerSecond(result).toFixed(1)} tokens/s]`,
        );
      } finally {
        answering = null;
      }
    };
    try {
      if (values.prompt !== undefined) {
        await say(values.prompt);
        return 0;
      }
      console.error(`${info}\n/reset clears the conversation, /system <text> sets the system prompt, /quit ends; Ctrl-C stops a reply.`);
      rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY ?? false, prompt: '> ' });
      rl.on('SIGINT', onInterrupt);
      try {
        rl.prompt();
        // The line iterator buffers input typed (or piped) while a reply is being generated.
        for await (const line of rl) {
          const t = line.trim();
          if (t === '/quit' || t === '/exit') break;
          if (t === '/reset') chat.clear();
          else if (t.startsWith('/system')) {
            chat.system = t.slice('/system'.length).trim();
            chat.clear();
          } else if (t) await say(line);
          rl.prompt();
        }
      } finally {
        rl.close();
      }
      return 0;
    } finally {
      process.off('SIGINT', onInterrupt);
      gen.release();
      adapter?.release();
      releaseBaseWeights(ctx, weights);
      ctx.destroy();
    }
  },
};
