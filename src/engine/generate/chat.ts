/**
 * Text on top of the token generator: streamed text deltas with user stop strings, and a multi-turn chat
 * that renders the conversation with the tokenizer's chat template (the same code path training uses:
 * applyChatTemplate, then encode without special tokens) with add_generation_prompt.
 */
import type { LoadedTokenizer } from '../../data/tokenizer.ts';
import type { ChatMessage } from '../../data/types.ts';
import type { Generator } from './generator.ts';
import type { GenerationResult, GenerationSettings } from './settings.ts';

export type ChatTokenizer = Pick<LoadedTokenizer, 'encode' | 'decode' | 'applyChatTemplate' | 'eosTokenIds'>;

/**
 * Turns a growing list of token ids into text deltas. Text is held back while it ends in an incomplete
 * UTF-8 sequence or in a prefix of a stop string; a stop string ends the text just before it.
 */
export class TextStream {
  private ids: number[] = [];
  private emitted = '';
  private finalText: string | null = null;

  constructor(
    private readonly decode: (ids: number[]) => string,
    private readonly stopStrings: readonly string[] = [],
  ) {}

  /** Adds a token; returns the new text to show and whether a stop string was reached. */
  push(id: number): { delta: string; stopped: boolean } {
    this.ids.push(id);
    const text = this.decode(this.ids);
    let cut = -1;
    for (const s of this.stopStrings) {
      if (!s) continue;
      const at = text.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.finalText = text.slice(0, cut);
      return { delta: this.take(this.finalText), stopped: true };
    }
    let safe = text.endsWith('\uFFFD') ? text.slice(0, -1) : text;
    let hold = 0;
    for (const s of this.stopStrings) for (let n = Math.min(s.length - 1, safe.length); n > hold; n--) if (safe.endsWith(s.slice(0, n))) hold = n;
    safe = safe.slice(0, safe.length - hold);
    return { delta: this.take(safe), stopped: false };
  }

  /** The rest of the text once generation has ended (what was held back, unless a stop string cut it). */
  finish(): string {
    const text = this.finalText ?? this.decode(this.ids);
    this.finalText = text;
    return this.take(text);
  }

  get text(): string {
    return this.finalText ?? this.emitted;
  }

  private take(upTo: string): string {
    if (!upTo.startsWith(this.emitted)) return ''; // the decoder revised earlier text (rare): keep what was shown
    const d = upTo.slice(this.emitted.length);
    this.emitted = upTo;
    return d;
  }
}

/** Renders messages with the chat template and add_generation_prompt, and tokenizes them as training does. */
export function encodeChatPrompt(tok: ChatTokenizer, messages: readonly ChatMessage[], extra?: Record<string, unknown>): number[] {
  const text = tok.applyChatTemplate(messages, { addGenerationPrompt: true, ...(extra ? { extra } : {}) });
  return tok.encode(text, { addSpecialTokens: false });
}

export interface ChatReply {
  text: string;
  result: GenerationResult;
}

/**
 * The system prompt a chat template puts in when the conversation has none (Qwen2.5's "You are Qwen,
 * created by Alibaba Cloud…"), found by rendering: the conversation [user] must equal the conversation
 * [system: S, user] with S replaced by the default. '' for a template whose system block is always there
 * (Llama 3.2), null when the template adds none (or rejects a system turn).
 */
export function defaultSystemPrompt(tok: Pick<ChatTokenizer, 'applyChatTemplate'>, extra?: Record<string, unknown>): string | null {
  const SENTINEL = '\u0001webtune-system\u0001';
  const user = { role: 'user', content: '\u0001webtune-user\u0001' };
  const opts = { addGenerationPrompt: true, ...(extra ? { extra } : {}) };
  let without: string;
  let withSystem: string;
  try {
    without = tok.applyChatTemplate([user], opts);
    withSystem = tok.applyChatTemplate([{ role: 'system', content: SENTINEL }, user], opts);
  } catch {
    return null;
  }
  const at = withSystem.indexOf(SENTINEL);
  if (at < 0) return null;
  const before = withSystem.slice(0, at);
  const after = withSystem.slice(at + SENTINEL.length);
  if (without.length < before.length + after.length || !without.startsWith(before) || !without.endsWith(after)) return null;
  return without.slice(before.length, without.length - after.length);
}

/**
 * The eos_token_id of a generation_config.json (a number or a list, as transformers allows); [] when absent.
 * A malformed value is an error naming the file and field.
 */
export function generationConfigEosIds(text: string, file = 'generation_config.json'): number[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null) throw new Error(`${file}: not a JSON object`);
  const eos = (json as Record<string, unknown>).eos_token_id;
  if (eos === undefined || eos === null) return [];
  const list = Array.isArray(eos) ? eos : [eos];
  for (const e of list) if (typeof e !== 'number' || !Number.isInteger(e) || e < 0) throw new Error(`${file}: 'eos_token_id' ${JSON.stringify(eos)} holds something that is not a token id`);
  return list as number[];
}

/** Stop ids of a chat: the tokenizer's (eos and the template's end-of-turn tokens) plus every eos list given (config.json, generation_config.json). */
export function chatStopTokenIds(tok: Pick<ChatTokenizer, 'eosTokenIds'>, ...eosLists: (readonly number[])[]): number[] {
  return [...new Set([...tok.eosTokenIds, ...eosLists.flat()])];
}

/** Tokens per second of a reply's decoding (the tokens after the first, which the prefill produced). */
export function decodeTokensPerSecond(r: Pick<GenerationResult, 'tokens' | 'decodeMs'>): number {
  return r.tokens.length > 1 && r.decodeMs > 0 ? ((r.tokens.length - 1) / r.decodeMs) * 1000 : 0;
}

/**
 * A multi-turn conversation: an editable system prompt, the turns so far, and a generator whose KV cache
 * keeps the rendered conversation between turns (only the new part is prefilled).
 */
export class ChatSession {
  /**
   * The system prompt. Equal to the template's default (or '' when it has none): no system turn is sent,
   * so the prompt is exactly what the template renders for training rows without one. Anything else
   * (including '' over a default) is sent as the system turn.
   */
  system: string;
  readonly messages: ChatMessage[] = [];
  /** The template's own default system prompt (defaultSystemPrompt), null if it has none. */
  readonly templateDefaultSystem: string | null;

  constructor(
    readonly generator: Generator,
    readonly tokenizer: ChatTokenizer,
    opts: { system?: string; templateExtra?: Record<string, unknown>; stopTokenIds?: readonly number[] } = {},
  ) {
    this.templateExtra = opts.templateExtra;
    this.stopTokenIds = [...(opts.stopTokenIds ?? tokenizer.eosTokenIds)];
    this.templateDefaultSystem = defaultSystemPrompt(tokenizer, opts.templateExtra);
    this.system = opts.system ?? this.templateDefaultSystem ?? '';
  }

  private readonly templateExtra: Record<string, unknown> | undefined;
  /** Ids that end a reply (default: the tokenizer's eosTokenIds; see chatStopTokenIds). */
  readonly stopTokenIds: readonly number[];

  /** The conversation as the template sees it (the system turn first unless the template's default applies). */
  conversation(): ChatMessage[] {
    const implicit = this.system === (this.templateDefaultSystem ?? '');
    return [...(implicit ? [] : [{ role: 'system', content: this.system }]), ...this.messages];
  }

  clear(): void {
    this.messages.length = 0;
  }

  /**
   * Adds a user turn, generates the reply streaming its text through onText, and adds it as the assistant
   * turn — also when stopped early (signal, stop string, max tokens): the partial reply stays in the
   * conversation. Stop ids default to the tokenizer's eosTokenIds (eos and the end-of-turn tokens; the
   * model's generation_config eos list is folded in by the caller when it has one).
   */
  async send(user: string, settings: Partial<GenerationSettings> = {}, onText?: (delta: string) => void, signal?: AbortSignal): Promise<ChatReply> {
    this.messages.push({ role: 'user', content: user });
    try {
      const prompt = encodeChatPrompt(this.tokenizer, this.conversation(), this.templateExtra);
      const stream = new TextStream((ids) => this.tokenizer.decode(ids, { skipSpecialTokens: true }), settings.stopStrings ?? []);
      const result = await this.generator.generate(prompt, { stopTokenIds: [...this.stopTokenIds], ...settings }, (id) => {
        const { delta, stopped } = stream.push(id);
        if (delta) onText?.(delta);
        return stopped;
      }, signal);
      const rest = stream.finish();
      if (rest) onText?.(rest);
      this.messages.push({ role: 'assistant', content: stream.text });
      return { text: stream.text, result };
    } catch (err) {
      this.messages.pop();
      throw err;
    }
  }
}
