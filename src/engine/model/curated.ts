/**
 * The curated 1.8B-class chat models the app offers as cards, with their config.json (as published on the
 * Hub, bundled so the app can plan a model's GPU memory before downloading a byte of it).
 */
import internlm2 from './curated/internlm2-chat-1_8b.json';
import qwen25 from './curated/Qwen2.5-1.5B-Instruct.json';
import qwen3 from './curated/Qwen3-1.7B.json';
import llama32 from './curated/Llama-3.2-1B-Instruct.json';
import smollm2 from './curated/SmolLM2-1.7B-Instruct.json';

export interface CuratedModel {
  /** Hub repo id. */
  readonly id: string;
  readonly name: string;
  /** The bf16 safetensors download, rounded. */
  readonly downloadBytes: number;
  readonly licence: string;
  /** The Hub asks the user to accept a licence first (a token is needed). */
  readonly gated: boolean;
  readonly config: unknown;
}

export const CURATED_MODELS: readonly CuratedModel[] = [
  { id: 'internlm/internlm2-chat-1_8b', name: 'InternLM2-Chat-1.8B', downloadBytes: 3.8e9, licence: 'InternLM licence (free commercial use on application); code Apache-2.0', gated: false, config: internlm2 },
  { id: 'Qwen/Qwen2.5-1.5B-Instruct', name: 'Qwen2.5-1.5B-Instruct', downloadBytes: 3.1e9, licence: 'Apache-2.0', gated: false, config: qwen25 },
  { id: 'Qwen/Qwen3-1.7B', name: 'Qwen3-1.7B', downloadBytes: 4.1e9, licence: 'Apache-2.0', gated: false, config: qwen3 },
  { id: 'meta-llama/Llama-3.2-1B-Instruct', name: 'Llama-3.2-1B-Instruct', downloadBytes: 2.5e9, licence: 'Llama 3.2 Community Licence (gated: accept it on the Hub)', gated: true, config: llama32 },
  { id: 'HuggingFaceTB/SmolLM2-1.7B-Instruct', name: 'SmolLM2-1.7B-Instruct', downloadBytes: 3.4e9, licence: 'Apache-2.0', gated: false, config: smollm2 },
];
