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
 * A multi-turn conversation: an editable system prompt, the turns so far, and a generator whose KV cache
 * keeps the rendered conversation between turns (only the new part is prefilled).
 */
export class ChatSession {
  system: string;
  readonly messages: ChatMessage[] = [];

  constructor(
    readonly generator: Generator,
    readonly tokenizer: ChatTokenizer,
    opts: { system?: string; templateExtra?: Record<string, unknown> } = {},
  ) {
    this.system = opts.system ?? '';
    this.templateExtra = opts.templateExtra;
  }

  private readonly templateExtra: Record<string, unknown> | undefined;

  /** The conversation as the template sees it (system first when set). */
  conversation(): ChatMessage[] {
    return [...(this.system ? [{ role: 'system', content: this.system }] : []), ...this.messages];
  }

  clear(): void {
    this.messages.length = 0;
  }

  /**
   * Adds a user turn, generates the reply streaming its text through onText, and adds it as the assistant
   * turn. Stop ids default to the tokenizer's eosTokenIds (eos and the end-of-turn tokens).
   */
  async send(user: string, settings: Partial<GenerationSettings> = {}, onText?: (delta: string) => void, signal?: AbortSignal): Promise<ChatReply> {
    this.messages.push({ role: 'user', content: user });
    try {
      const prompt = encodeChatPrompt(this.tokenizer, this.conversation(), this.templateExtra);
      const stream = new TextStream((ids) => this.tokenizer.decode(ids, { skipSpecialTokens: true }), settings.stopStrings ?? []);
      const result = await this.generator.generate(prompt, { stopTokenIds: this.tokenizer.eosTokenIds, ...settings }, (id) => {
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
