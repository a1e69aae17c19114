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

/**
 * 259 byte-level tokens, one layer, hidden 64: about 70k parameters. Small on purpose: on SwiftShader (a
 * CPU) a training step costs in proportion to tokens × parameters, and the demo must learn the identity
 * dataset in about a minute there (40 steps of 4 rows). The head is not tied to the embedding (see
 * DEMO_INIT_STD).
 */
export const DEMO_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 259,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  head_dim: 32,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  bos_token_id: null,
  eos_token_id: 258,
  pad_token_id: 256,
  torch_dtype: 'float32',
};

/**
 * Initial weights, chosen so that LoRA alone can teach the random model (the adapter must carry everything):
 * - projections: std 1/√in (gain 1), so a signal and its gradient cross every matrix at full strength. At a
 *   flat 0.05 (gain 0.4 at hidden 64) the SwiGLU product silu(g)·u was near zero, the adapters on gate/up/
 *   down got almost no gradient, and the loss stalled at the answers' byte frequencies (~3.5).
 * - embedding: std 1, as large as the layers' outputs, so the current byte survives in the residual stream.
 * - head (untied): the final RMSNorm gives it vectors of length √hidden, so a logit can reach std·hidden:
 *   0.25 → 16 against others spread ±2, enough for a near-certain next byte. (Tied to a 0.05 embedding the
 *   ceiling was 6.4 at hidden 128; tied to a large one the model starts by predicting the byte it just saw.)
 */
export const DEMO_INIT_STD = { embedding: 1, head: 0.25 };

/** The demo model's HF folder; `config` changes its shape (tests: more layers), DEMO_CONFIG by default. */
export function demoModelFiles(seed = 1, config: typeof DEMO_CONFIG = DEMO_CONFIG): Map<string, string | Uint8Array> {
  const spec = modelSpecFromConfig(config, 'demo model');
  const names = new Map(hfCheckpointLayout(spec).map(({ param, source }) => [param.name, source.tensor]));
  const tensors: TensorToWrite[] = [];
  modelParams(spec).forEach((p, i) => {
    if (p.kind === 'lm_head' && spec.tieWordEmbeddings) return;
    const n = p.shape.reduce((a, b) => a * b, 1);
    const std = p.kind === 'embed' ? DEMO_INIT_STD.embedding : p.kind === 'lm_head' ? DEMO_INIT_STD.head : 1 / Math.sqrt(p.shape[1]!);
    const data = p.kind.endsWith('norm') ? new Float32Array(n).fill(1) : seededGaussian(n, seed * 7919 + i, std);
    tensors.push({ name: names.get(p.name)!, dtype: 'F32', shape: p.shape, data });
  });
  const tok = fallbackTokenizerSource();
  const files = new Map<string, string | Uint8Array>();
  files.set('config.json', JSON.stringify(config, null, 2));
  files.set('generation_config.json', JSON.stringify({ eos_token_id: [258], pad_token_id: 256 }, null, 2));
  files.set('model.safetensors', writeSafetensors(tensors, { format: 'pt' }));
  files.set('tokenizer.json', JSON.stringify(tok.tokenizerJson));
  files.set('tokenizer_config.json', JSON.stringify({ ...(tok.tokenizerConfig as object), chat_template: tok.chatTemplate, model_max_length: 512 }, null, 2));
  return files;
}
