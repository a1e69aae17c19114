/**
 * The offline demo model: a tiny Llama-architecture model the app creates from a seed, with no download,
 * so that a first visit (or a machine with no network) can try the whole flow on any WebGPU adapter.
 * It is produced as an ordinary Hugging Face folder (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json, generation_config.json), so it loads through exactly the code path of any
 * local or downloaded checkpoint. Its tokenizer is the byte-level ChatML tokenizer of
 * src/data/fallback-tokenizer.ts (one token per UTF-8 byte).
 */
import { seededGaussian } from '../random.ts';
import { fallbackTokenizerSource } from '../../data/fallback-tokenizer.ts';
import { writeSafetensors, type TensorToWrite } from '../../formats/safetensors.ts';
import { modelSpecFromConfig } from '../model/config.ts';
import { hfCheckpointLayout, modelParams } from '../model/weights.ts';

export const DEMO_MODEL_ID = 'webtune/demo-tiny-llama';

/** 259 byte-level tokens; about 0.4M parameters. */
export const DEMO_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 259,
  hidden_size: 128,
  intermediate_size: 256,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
  bos_token_id: null,
  eos_token_id: 258,
  pad_token_id: 256,
  torch_dtype: 'float32',
};


/** The demo model's files, keyed by file name, generated from `seed` (the same seed gives the same bytes). */
export function demoModelFiles(seed = 1): Map<string, string | Uint8Array> {
  const spec = modelSpecFromConfig(DEMO_CONFIG, 'demo model');
  const names = new Map(hfCheckpointLayout(spec).map(({ param, source }) => [param.name, source.tensor]));
  const tensors: TensorToWrite[] = [];
  modelParams(spec).forEach((p, i) => {
    if (p.kind === 'lm_head' && spec.tieWordEmbeddings) return;
    const n = p.shape.reduce((a, b) => a * b, 1);
    const data = p.kind.endsWith('norm') ? new Float32Array(n).fill(1) : seededGaussian(n, seed * 7919 + i, 0.05);
    tensors.push({ name: names.get(p.name)!, dtype: 'F32', shape: p.shape, data });
  });
  const tok = fallbackTokenizerSource();
  const files = new Map<string, string | Uint8Array>();
  files.set('config.json', JSON.stringify(DEMO_CONFIG, null, 2));
  files.set('generation_config.json', JSON.stringify({ eos_token_id: [258], pad_token_id: 256 }, null, 2));
  files.set('model.safetensors', writeSafetensors(tensors, { format: 'pt' }));
  files.set('tokenizer.json', JSON.stringify(tok.tokenizerJson));
  files.set('tokenizer_config.json', JSON.stringify({ ...(tok.tokenizerConfig as object), chat_template: tok.chatTemplate, model_max_length: 512 }, null, 2));
  return files;
}
