/** Generation settings, their defaults (XTuner's chat) and the result of one generation. */
import type { SamplingParams } from '../kernels/sampling.ts';

export interface GenerationSettings extends SamplingParams {
  /** Most tokens in the reply. */
  maxNewTokens: number;
  /** Ids that end the reply (the tokenizer's eosTokenIds: eos and the template's end-of-turn tokens). */
  stopTokenIds: number[];
  /** Strings that end the reply (checked on the decoded text as tokens stream; see TextStopper). */
  stopStrings: string[];
}

/** XTuner's chat defaults: temperature 0.1, top-p 0.75, top-k 40, repetition penalty 1.0 (max_new_tokens 2048). */
export const DEFAULT_SETTINGS: GenerationSettings = {
  temperature: 0.1,
  topP: 0.75,
  topK: 40,
  repetitionPenalty: 1.0,
  seed: 0,
  maxNewTokens: 2048,
  stopTokenIds: [],
  stopStrings: [],
};

export function validateSettings(s: GenerationSettings): GenerationSettings {
  const bad = (what: string, v: unknown) => {
    throw new RangeError(`generation setting ${what}: ${String(v)}`);
  };
  if (!Number.isFinite(s.temperature) || s.temperature < 0) bad('temperature must be ≥ 0', s.temperature);
  if (!(s.topP > 0) || s.topP > 1) bad('top-p must be in (0, 1]', s.topP);
  if (!Number.isInteger(s.topK) || s.topK < 0) bad('top-k must be an integer ≥ 0', s.topK);
  if (!(s.repetitionPenalty > 0) || !Number.isFinite(s.repetitionPenalty)) bad('repetition penalty must be > 0', s.repetitionPenalty);
  if (!Number.isInteger(s.maxNewTokens) || s.maxNewTokens < 1) bad('max new tokens must be an integer ≥ 1', s.maxNewTokens);
  if (!Number.isInteger(s.seed) || s.seed < 0 || s.seed > 0xffffffff) bad('seed must be an integer in [0, 2^32)', s.seed);
  return s;
}

export type FinishReason = 'eos' | 'length' | 'stop' | 'abort' | 'cache';

export interface GenerationResult {
  /** The reply's ids (the stop id included when it ended on one). */
  tokens: number[];
  /** eos: a stop id; length: max new tokens; stop: onToken asked (stop string); abort: the signal; cache: the KV cache is full. */
  finishReason: FinishReason;
  promptTokens: number;
  /** Prompt tokens whose keys/values were reused from the previous call. */
  reusedTokens: number;
  /** Prompt processing until the first token was known (ms). */
  prefillMs: number;
  /** From the first token to the end (ms). */
  decodeMs: number;
}
