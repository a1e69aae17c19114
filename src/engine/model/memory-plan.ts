/**
 * Predicts the peak GPU memory of a LoRA/QLoRA training run before anything is allocated, so the app can
 * say "shorten the maximum length to 1024" instead of crashing with an out-of-memory error.
 *
 * The prediction is a sum of named terms, each a buffer (or a family of buffers) that the engine
 * allocates, f32 unless stated. The GPU engine compares it with the buffer pool's measured peak
 * (`BufferPool.peakBytes`, live bytes only) and must land within 10%. The terms mirror the engine's
 * allocations (base-weights.ts, transformer.ts StepPlan, kernels/cross_entropy.ts, kernels/adamw.ts); when
 * one of those changes what it keeps, change the matching line here (`layerForwardTerms`,
 * `layerBackwardTerms`, `ceTerms`, or the sections of planMemory) or a knob in MemoryPlanAssumptions.
 *
 * Sections:
 * - weights: projections (4-bit codes + one u32 scale word per group of 64, or f32; a projection whose
 *   input size is not a multiple of the group stays f32), norms and biases, embedding and untied lm_head.
 * - lora: the optimizer's flat params and grads (every matrix padded to 64 floats).
 * - optimizer: AdamW m and v, or with offload a streaming chunk of one layer's moments.
 * - activations: with checkpointing, each layer's input (+ the final hidden state) and, unless
 *   keepAttention is false, its attention output, lse and LoRA input products U; one layer's forward
 *   scratch (reused by every layer and by the recompute) and one layer's gradient scratch.
 * - ce: the final norm output, per-token losses and the cross-entropy workspace (one chunk of logits,
 *   which the loss kernel overwrites with dlogits, plus the chunk copies of hidden / dhidden and stats).
 * - workspace: token ids, labels, positions, document ids and spans, rope frequencies, fixed small buffers.
 *
 * The engine's StepPlan allocates every buffer of a step once and keeps it (no allocation inside a step),
 * so by default the training peak is the sum of all sections. With `stepBuffersPersistent: false` the plan
 * assumes the loss workspace and the layer scratch are never live together and takes the larger.
 * Loading (quantizing on the GPU while streaming) peaks at the weights + one f32 staging chunk; the plan's
 * total is the larger of loading and training.
 */
import type { ModelSpec } from './config.ts';
import { loraModules, loraModuleShape, type LoraModule } from './peft.ts';
import { loraScratchElems } from '../kernels/lora.ts';
import { ceDhiddenSplits } from '../kernels/cross_entropy.ts';
import { splitKPartialElems } from '../kernels/matmul.ts';

export type OptimizerOffload = 'gpu' | 'cpu' | 'disk';

export interface TrainingMemoryConfig {
  /** Tokens per row (the maximum length). */
  readonly seqLen: number;
  /** Rows per micro-batch. */
  readonly microBatch: number;
  readonly loraRank: number;
  /** LoRA target modules (peft.ts names for the family); default all of them. */
  readonly targets?: readonly LoraModule[];
  /** 4: QLoRA (4-bit base with per-group scales); 32: f32 base (LoRA). */
  readonly quantBits: 4 | 32;
  /** Input columns per quantization group (4-bit only). */
  readonly groupSize: number;
  /** Where AdamW's moments live; cpu/disk keep only a per-layer streaming chunk on the GPU. */
  readonly optimizerOffload: OptimizerOffload;
  /** Recompute each layer in the backward (keep only layer inputs). */
  readonly activationCheckpointing: boolean;
  /**
   * With checkpointing, also keep each layer's attention output and lse so the recompute skips attention
   * (TransformerOptions.keepAttention; default true, as in the engine; withAttentionChoice decides it
   * against a budget).
   */
  readonly keepAttention?: boolean;
  /** Tokens per cross-entropy chunk: the logits buffer is ceChunkTokens × vocab. */
  readonly ceChunkTokens: number;
  /** The 4-bit base's matmuls run on int8 tensor cores (adds their activation scratch). */
  readonly int8Matmuls?: boolean;
  /**
   * The longest held-out row when the run measures an eval loss (0 or absent: no eval rows): a forward-only
   * plan of one such row is kept beside the step's buffers (Trainer.evalLoss).
   */
  readonly evalSeqLen?: number;
}

/** Tokens per cross-entropy chunk of the eval-loss plan (at most; its speed hardly matters, its memory does). */
export const EVAL_CE_CHUNK_TOKENS = 256;

/** The engine-dependent constants; calibrate them against the pool's measured peak. */
export interface MemoryPlanAssumptions {
  /** Bytes per quantization group besides the packed nibbles: 4 = one u32 word (f16 step + f16 min). */
  readonly scaleBytesPerGroup: number;
  /** Bytes per element of the embedding table (4 = f32; the base's embeddings are not quantized). */
  readonly embedBytesPerElement: number;
  /** Bytes per element of an untied lm_head (4 = f32). */
  readonly lmHeadBytesPerElement: number;
  /** Each LoRA matrix's slot in the optimizer's flat buffers is padded to this many floats. */
  readonly optimizerSlotAlign: number;
  /** Layers of AdamW moments staged on the GPU at once when offloaded. */
  readonly offloadChunkLayers: number;
  /** Fixed small buffers: uniforms, reduction partials, grad norm, loss scalars. */
  readonly fixedWorkspaceBytes: number;
  /** f32 bytes staged per quantizer upload while loading a 4-bit base. */
  readonly loadChunkBytes: number;
  /** Every step buffer stays allocated for the whole run (the StepPlan design): the peak is their sum. */
  readonly stepBuffersPersistent: boolean;
}

export const DEFAULT_ASSUMPTIONS: MemoryPlanAssumptions = {
  scaleBytesPerGroup: 4,
  embedBytesPerElement: 4,
  lmHeadBytesPerElement: 4,
  optimizerSlotAlign: 64,
  offloadChunkLayers: 1,
  fixedWorkspaceBytes: 4 * 2 ** 20,
  loadChunkBytes: 32 * 2 ** 20,
  stepBuffersPersistent: true,
};

export const DEFAULT_BUDGET_BYTES = 8 * 2 ** 30;

export interface MemoryTerm {
  readonly name: string;
  readonly bytes: number;
  /** What the buffer holds and how its size is computed. */
  readonly note: string;
}

export interface MemorySection {
  readonly bytes: number;
  readonly terms: readonly MemoryTerm[];
}

/** 'training': all step buffers together (persistent); 'loss' / 'layer-backward': the larger phase otherwise. */
export type PeakPhase = 'training' | 'loss' | 'layer-backward' | 'loading';

export interface MemoryPlan {
  /** Predicted peak GPU bytes: the larger of training and loading. */
  readonly totalBytes: number;
  readonly budgetBytes: number;
  readonly fits: boolean;
  /** Where the peak happens. */
  readonly peakPhase: PeakPhase;
  /** The breakdown at the training peak; the sections sum to trainingPeakBytes. */
  readonly weights: MemorySection;
  readonly lora: MemorySection;
  readonly optimizer: MemorySection;
  /** Saved layer inputs + one layer's forward and gradient scratch (the latter not at a loss-phase peak). */
  readonly activations: MemorySection;
  /** Final norm, losses and the cross-entropy workspace (empty at a layer-backward-phase peak). */
  readonly ce: MemorySection;
  /** The eval loss's forward-only plan (one held-out row at a time; empty without eval rows). */
  readonly evaluation: MemorySection;
  readonly workspace: MemorySection;
  readonly trainingPeakBytes: number;
  /** Weights + one staging chunk while quantizing during loading. */
  readonly loadingPeakBytes: number;
  /** The two phase-dependent parts, for the report: the loss workspace and one layer's scratch. */
  readonly phaseBytes: { readonly loss: number; readonly layerBackward: number };
  /** The largest single buffer (compare with maxStorageBufferBindingSize: tables beyond it are split in row blocks). */
  readonly largestBuffer: { readonly name: string; readonly bytes: number };
  /** What to change when it does not fit (empty when it does). */
  readonly advice: readonly string[];
  /** When over budget: a configuration that fits (the first single change that does, else the combination), or null. */
  readonly suggestedConfig: TrainingMemoryConfig | null;
}

const F32 = 4;

const section = (terms: MemoryTerm[]): MemorySection => ({ bytes: terms.reduce((a, t) => a + t.bytes, 0), terms });

function validate(spec: ModelSpec, c: TrainingMemoryConfig): readonly LoraModule[] {
  const posInt = (v: number, what: string) => {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`memory plan: ${what} is ${v}; expected a positive integer`);
  };
  posInt(c.seqLen, 'seqLen');
  posInt(c.microBatch, 'microBatch');
  posInt(c.loraRank, 'loraRank');
  posInt(c.groupSize, 'groupSize');
  posInt(c.ceChunkTokens, 'ceChunkTokens');
  if (c.quantBits !== 4 && c.quantBits !== 32) throw new RangeError(`memory plan: quantBits is ${c.quantBits as number}; expected 4 or 32`);
  const all = loraModules(spec.family);
  const targets = c.targets ?? all;
  for (const t of targets) if (!all.includes(t)) throw new RangeError(`memory plan: '${t}' is not a LoRA target of ${spec.family} models (${all.join(', ')})`);
  return targets;
}

/** The base projections of one layer as [out, in]: q, k, v, o, gate, up, down (InternLM2's wqkv is loaded as q, k, v). */
function layerProjections(spec: ModelSpec): Array<{ name: string; out: number; in: number }> {
  const { hidden: h, intermediate: i, headDim: d } = spec;
  const q = spec.nHeads * d;
  const kv = spec.nKvHeads * d;
  return [
    { name: 'q', out: q, in: h },
    { name: 'k', out: kv, in: h },
    { name: 'v', out: kv, in: h },
    { name: 'o', out: h, in: q },
    { name: 'gate', out: i, in: h },
    { name: 'up', out: i, in: h },
    { name: 'down', out: h, in: i },
  ];
}

/** Bytes of one [out, in] base matrix at the configured precision (f32 when `in` is not a multiple of the group). */
function matrixBytes(out: number, inF: number, c: TrainingMemoryConfig, a: MemoryPlanAssumptions): number {
  if (c.quantBits === 32 || inF % c.groupSize !== 0) return out * inF * F32;
  return (out * inF) / 2 + out * (inF / c.groupSize) * a.scaleBytesPerGroup;
}

/**
 * `c` with keepAttention decided where it is unset: kept when the whole plan then fits `budgetBytes`, else
 * recomputed (it changes no result, only speed, so a run that fits without it is never refused for it).
 */
export function withAttentionChoice(spec: ModelSpec, c: TrainingMemoryConfig, budgetBytes: number): TrainingMemoryConfig & { keepAttention: boolean } {
  if (c.keepAttention !== undefined) return { ...c, keepAttention: c.keepAttention };
  const kept = { ...c, keepAttention: true };
  return planMemory(spec, kept, { budgetBytes, advise: false }).fits ? kept : { ...c, keepAttention: false };
}

/** Whether the plan keeps each layer's attention output (only with checkpointing; default on, as in the engine). */
function keepsAttention(c: TrainingMemoryConfig): boolean {
  return c.activationCheckpointing && (c.keepAttention ?? true);
}

/**
 * One layer's forward scratch (StepPlan's LayerScratch), shared by every layer and by the recompute; without
 * the attention output, lse and LoRA U when the training plan keeps those per layer (`attentionKept`).
 */
function layerForwardTerms(spec: ModelSpec, c: TrainingMemoryConfig, targets: readonly LoraModule[], attentionKept = false): MemoryTerm[] {
  const bt = c.seqLen * c.microBatch;
  const { hidden: h, intermediate: inter, headDim: d, nHeads, nKvHeads } = spec;
  const q = nHeads * d;
  const kv = nKvHeads * d;
  const t = (name: string, elems: number, note: string): MemoryTerm => ({ name, bytes: elems * F32, note });
  const terms = [
    t('n1, rstd1', bt * (h + 1), 'attention RMSNorm output and 1/rms [B·T, hidden + 1]'),
    t('q, k, v', bt * (q + 2 * kv), 'projected (+bias, +rope) [B·T, (nHeads + 2·nKv)·headDim]'),
  ];
  if (spec.qkNorm) terms.push(t('q, k before q_norm/k_norm (+ rstd)', bt * (q + kv + nHeads + nKvHeads), 'per-head RMSNorm inputs and 1/rms'));
  if (!attentionKept) {
    terms.push(
      t('attention out', bt * q, 'softmax(QKᵀ)V [B·T, nHeads·headDim]'),
      t('attention lse', bt * nHeads, 'log-sum-exp per query row for the flash-style backward [nHeads, B·T]'),
    );
  }
  terms.push(
    t('o proj out, h mid', 2 * bt * h, 'attention output projection and the residual after it [B·T, hidden] × 2'),
    t('n2, rstd2', bt * (h + 1), 'MLP RMSNorm output and 1/rms'),
    t('gate, up, swiglu', 3 * bt * inter, '[B·T, intermediate] × 3'),
    t('down out', bt * h, '[B·T, hidden]'),
  );
  if (!attentionKept) terms.push(t('LoRA U = x·Aᵀ', targets.length * bt * c.loraRank, `one [B·T, r] per adapted module (${targets.length})`));
  return terms;
}

/** One layer's gradient scratch (StepPlan's BackwardScratch). */
function layerBackwardTerms(spec: ModelSpec, c: TrainingMemoryConfig, targets: readonly LoraModule[]): MemoryTerm[] {
  const bt = c.seqLen * c.microBatch;
  const { hidden: h, intermediate: inter, headDim: d, nHeads, nKvHeads } = spec;
  const q = nHeads * d;
  const kv = nKvHeads * d;
  const t = (name: string, elems: number, note: string): MemoryTerm => ({ name, bytes: elems * F32, note });
  const terms = [
    t('dh, dh next, dh mid, dh tmp, dn', 5 * bt * h, 'residual-stream and norm gradients [B·T, hidden] × 5'),
    t('d swiglu, d gate, d up', 3 * bt * inter, '[B·T, intermediate] × 3'),
    t('d attention out, dq, dk, dv', bt * (2 * q + 2 * kv), '[B·T, q] × 2 + [B·T, kv] × 2'),
  ];
  if (spec.qkNorm) terms.push(t('dq, dk before norm', bt * (q + kv), '[B·T, q + kv]'));
  terms.push(
    t('attention delta', bt * nHeads, 'rowsum(dO∘O) [nHeads, B·T]'),
    t('LoRA G = dy·B', targets.length * bt * c.loraRank, `one [B·T, r] per adapted module (${targets.length})`),
  );
  return terms;
}

/** The loss: final norm, per-token losses and the chunked cross-entropy workspace (kernels/cross_entropy.ts). */
function ceTerms(spec: ModelSpec, c: TrainingMemoryConfig, train = true): MemoryTerm[] {
  const bt = c.seqLen * c.microBatch;
  const h = spec.hidden;
  const chunk = Math.min(c.ceChunkTokens, bt);
  const chunks = Math.ceil(bt / chunk);
  const splits = train ? ceDhiddenSplits(chunk, h, spec.vocabSize) : 1;
  return [
    { name: 'final normed, rstd', bytes: bt * (h + 1) * F32, note: '[B·T, hidden + 1]' },
    { name: 'losses, loss', bytes: (bt + 1) * F32, note: 'per-token loss [B·T] and the mean' },
    { name: 'logits chunk', bytes: chunk * spec.vocabSize * F32, note: `[${chunk} tokens, ${spec.vocabSize}]; overwritten in place with dlogits` },
    { name: 'hidden/dhidden chunk copies', bytes: chunks > 1 ? 2 * chunk * h * F32 : 0, note: chunks > 1 ? `[${chunk}, hidden] × 2 (${chunks} chunks)` : 'none: one chunk' },
    { name: 'ce stats, lse', bytes: (4 * chunk + bt) * F32, note: '[chunk, 4] + [B·T]' },
    { name: 'dhidden split-K partials', bytes: splitKPartialElems({ M: chunk, N: h, K: spec.vocabSize }, splits) * F32, note: splits > 1 ? `[${splits} k slices, ${chunk}, hidden] (dlogits · lm_head)` : 'none: enough output tiles' },
  ];
}

/**
 * quant4-mma.ts's allocInt8Scratch: two int8 levels per row (64-byte padded), a scale per
 * row, a bound per column, and the largest projection on its int8 grid (one byte a weight).
 */
function int8ScratchTerm(tokens: number, widest: number, largest: number): MemoryTerm {
  return {
    name: 'int8 scratch',
    bytes: 2 * tokens * Math.ceil(widest / 64) * 64 + tokens * F32 + widest * F32 + largest,
    note: `2 levels × [B·T, ${widest}] int8 + scales, and one projection's ${largest} weights as int8 (tensor-core matmuls)`,
  };
}

/**
 * The eval loss's StepPlan in 'loss' mode (Trainer.evalLoss): one row of evalSeqLen tokens — its inputs, two
 * hidden states used in turn, one layer's forward scratch, the loss workspace with chunks of at most
 * EVAL_CE_CHUNK_TOKENS, and the int8 scratch where the base runs on int8.
 */
function evaluationTerms(spec: ModelSpec, c: TrainingMemoryConfig, targets: readonly LoraModule[], widest: number, largest: number): MemoryTerm[] {
  const T = c.evalSeqLen ?? 0;
  if (T <= 0) return [];
  const one: TrainingMemoryConfig = { ...c, seqLen: T, microBatch: 1, ceChunkTokens: Math.min(c.ceChunkTokens, EVAL_CE_CHUNK_TOKENS) };
  const tag = (t: MemoryTerm): MemoryTerm => ({ ...t, name: `eval: ${t.name}` });
  return [
    { name: 'eval: input ids, positions, document ids and spans, labels', bytes: 6 * T * 4, note: `int32 [${T}] × 6 (one held-out row)` },
    { name: 'eval: hidden states', bytes: 2 * T * spec.hidden * F32, note: `[${T}, hidden] × 2, used in turn (no backward: no saved layer inputs)` },
    ...layerForwardTerms(spec, one, targets).map(tag),
    ...ceTerms(spec, one, false).map(tag),
    ...(c.int8Matmuls && c.quantBits === 4 ? [tag(int8ScratchTerm(T, widest, largest))] : []),
    {
      name: 'eval: kernel scratch',
      bytes: Math.max(0, ...targets.map((m) => loraModuleShape(spec, m)).map((sh) => loraScratchElems(T, sh.in, sh.out, c.loraRank))) * F32 + (spec.headDim / 2) * F32 + 48 * 16,
      note: 'the LoRA products\' split-K partials, rope inverse frequencies, reduction partials, and 16-byte rounding of ~48 buffers',
    },
  ];
}

/** Plans one configuration. Pure: same inputs, same plan. */
export function planMemory(
  spec: ModelSpec,
  config: TrainingMemoryConfig,
  options: { budgetBytes?: number; assumptions?: Partial<MemoryPlanAssumptions>; advise?: boolean } = {},
): MemoryPlan {
  const a: MemoryPlanAssumptions = { ...DEFAULT_ASSUMPTIONS, ...options.assumptions };
  const budgetBytes = options.budgetBytes ?? DEFAULT_BUDGET_BYTES;
  const targets = validate(spec, config);
  const c = config;
  const bt = c.seqLen * c.microBatch;
  const { hidden: h, vocabSize: vocab, layers: L } = spec;

  // ---- weights (persistent)
  const projs = layerProjections(spec);
  /** The widest projection side: the int8 activation scratch holds rows of it. */
  const widest = Math.max(...projs.flatMap((m) => [m.in, m.out]));
  /** The largest projection: the int8 path puts one at a time on its int8 grid. */
  const largest = Math.max(...projs.map((m) => m.in * m.out));
  const linearBytes = L * projs.reduce((s, m) => s + matrixBytes(m.out, m.in, c, a), 0);
  const q = spec.nHeads * spec.headDim;
  const kv = spec.nKvHeads * spec.headDim;
  let smallPerLayer = 2 * h; // attn_norm, mlp_norm
  if (spec.qkNorm) smallPerLayer += 2 * spec.headDim;
  if (spec.qkvBias) smallPerLayer += q + 2 * kv;
  if (spec.oBias) smallPerLayer += h;
  if (spec.mlpBias) smallPerLayer += 2 * spec.intermediate + h;
  const embedBytes = vocab * h * a.embedBytesPerElement;
  const lmHeadBytes = spec.tieWordEmbeddings ? 0 : vocab * h * a.lmHeadBytesPerElement;
  const weights = section([
    {
      name: c.quantBits === 4 ? 'projections (4-bit + scales)' : 'projections (f32)',
      bytes: linearBytes,
      note: c.quantBits === 4 ? `${L} layers × q/k/v/o/gate/up/down: out·in/2 bytes + out·in/${c.groupSize}·${a.scaleBytesPerGroup} (f32 where in is not a multiple of ${c.groupSize})` : `${L} layers × q/k/v/o/gate/up/down: out·in·4`,
    },
    { name: 'norms and biases', bytes: (L * smallPerLayer + h) * F32, note: 'RMSNorm weights (+q/k norms, +biases) per layer, final norm' },
    { name: 'embedding', bytes: embedBytes, note: `[${vocab}, ${h}] × ${a.embedBytesPerElement} bytes, in row blocks that fit a binding` },
    { name: 'lm_head', bytes: lmHeadBytes, note: spec.tieWordEmbeddings ? 'tied: shares the embedding' : `[${vocab}, ${h}] × ${a.lmHeadBytesPerElement} bytes` },
    ...(c.int8Matmuls && c.quantBits === 4
      ? [{ name: 'int8 weight bounds', bytes: L * projs.filter((m) => m.in % c.groupSize === 0).reduce((t, m) => t + (m.out + m.in / c.groupSize) * F32, 0), note: `${L} layers × 4-bit projections: one bound per row and per ${c.groupSize}-column group, computed once at load (quant4-mma.ts cacheInt8Bounds)` }]
      : []),
  ]);

  // ---- LoRA: flat params and grads, each matrix's slot padded (persistent)
  const align = (n: number) => Math.ceil(n / a.optimizerSlotAlign) * a.optimizerSlotAlign;
  const slotsPerLayer = targets.reduce((s, m) => {
    const sh = loraModuleShape(spec, m);
    return s + align(c.loraRank * sh.in) + align(sh.out * c.loraRank);
  }, 0);
  const flat = Math.max(L * slotsPerLayer, a.optimizerSlotAlign);
  const lora = section([
    { name: 'LoRA A, B', bytes: flat * F32, note: `${L} layers × ${targets.length} modules × (r·in + out·r), slots padded to ${a.optimizerSlotAlign} floats` },
    { name: 'LoRA gradients', bytes: flat * F32, note: 'same layout, accumulated over micro-batches' },
  ]);

  // ---- optimizer (persistent)
  const optimizer = section(
    c.optimizerOffload === 'gpu'
      ? [{ name: 'AdamW m, v', bytes: 2 * flat * F32, note: 'two moments per LoRA parameter' }]
      : [{ name: `AdamW m, v streaming chunk (${c.optimizerOffload})`, bytes: 2 * Math.min(L, a.offloadChunkLayers) * slotsPerLayer * F32, note: `moments of ${a.offloadChunkLayers} layer(s) staged for the update; the rest in ${c.optimizerOffload === 'cpu' ? 'CPU memory' : 'OPFS / a file'}` }],
  );

  // ---- workspace (persistent)
  const workspace = section([
    { name: 'input ids, positions, document ids and spans, labels', bytes: 6 * bt * 4, note: 'int32 [B·T] × 6' },
    { name: 'rope inverse frequencies', bytes: (spec.headDim / 2) * F32, note: '[headDim/2]' },
    { name: 'fixed', bytes: a.fixedWorkspaceBytes, note: 'uniforms, reduction partials, grad norm, kernel scratch' },
    ...(c.int8Matmuls && c.quantBits === 4 ? [int8ScratchTerm(bt, widest, largest)] : []),
  ]);

  // ---- activations and loss
  const attentionKept = keepsAttention(c);
  const forwardSet = layerForwardTerms(spec, c, targets, attentionKept);
  const forwardBytes = forwardSet.reduce((s, t) => s + t.bytes, 0);
  const saved: MemoryTerm[] = [
    { name: 'saved layer inputs + final hidden', bytes: (L + 1) * bt * h * F32, note: `${L + 1} × [B·T, hidden]: the checkpoints the backward recomputes from` },
  ];
  if (attentionKept) {
    saved.push({ name: 'kept attention outputs', bytes: L * bt * spec.nHeads * (spec.headDim + 1) * F32, note: `${L} × [B·T, nHeads·(headDim + 1)]: each layer's attention output and lse, so the recompute skips attention` });
    if (targets.length) saved.push({ name: 'kept LoRA inputs', bytes: L * targets.length * bt * c.loraRank * F32, note: `${L} × ${targets.length} × [B·T, r]: each layer's U = dropout(x)·Aᵀ per adapted module, so the recompute skips them` });
  }
  if (!c.activationCheckpointing) saved.push({ name: 'saved intermediates (no checkpointing)', bytes: (L - 1) * forwardBytes, note: `every other layer's forward scratch: ${L - 1} × ${forwardBytes}` });
  const layerScratch = [...forwardSet, ...layerBackwardTerms(spec, c, targets)];
  const layerPhase = layerScratch.reduce((s, t) => s + t.bytes, 0);
  const ceSet = ceTerms(spec, c);
  const lossPhase = ceSet.reduce((s, t) => s + t.bytes, 0);
  let activations: MemorySection;
  let ce: MemorySection;
  let trainingPhase: PeakPhase;
  if (a.stepBuffersPersistent) {
    activations = section([...saved, ...layerScratch]);
    ce = section(ceSet);
    trainingPhase = 'training';
  } else if (lossPhase >= layerPhase) {
    activations = section(saved);
    ce = section(ceSet);
    trainingPhase = 'loss';
  } else {
    activations = section([...saved, ...layerScratch]);
    ce = section([]);
    trainingPhase = 'layer-backward';
  }
  const evaluation = section(evaluationTerms(spec, c, targets, widest, largest));
  const trainingPeakBytes = weights.bytes + lora.bytes + optimizer.bytes + workspace.bytes + activations.bytes + ce.bytes + evaluation.bytes;

  // ---- loading: the weights fill up while one f32 staging chunk is quantized
  const largestF32 = Math.max(...projs.map((m) => m.out * m.in * F32));
  const loadingPeakBytes = weights.bytes + (c.quantBits === 4 ? Math.min(a.loadChunkBytes, largestF32) : 0);
  const totalBytes = Math.max(trainingPeakBytes, loadingPeakBytes);
  const peakPhase: PeakPhase = loadingPeakBytes > trainingPeakBytes ? 'loading' : trainingPhase;

  const buffers: Array<{ name: string; bytes: number }> = [
    { name: 'embedding', bytes: embedBytes },
    { name: 'lm_head', bytes: lmHeadBytes },
    { name: 'logits chunk', bytes: Math.min(c.ceChunkTokens, bt) * vocab * F32 },
    { name: 'optimizer flat buffer', bytes: flat * F32 },
    { name: 'gate/up activation', bytes: bt * spec.intermediate * F32 },
    ...projs.map((m) => ({ name: `${m.name} projection (one layer)`, bytes: matrixBytes(m.out, m.in, c, a) })),
  ];
  const largestBuffer = buffers.reduce((x, y) => (y.bytes > x.bytes ? y : x));

  const plan: MemoryPlan = {
    totalBytes,
    budgetBytes,
    fits: totalBytes <= budgetBytes,
    peakPhase,
    weights,
    lora,
    optimizer,
    activations,
    ce,
    evaluation,
    workspace,
    trainingPeakBytes,
    loadingPeakBytes,
    phaseBytes: { loss: lossPhase, layerBackward: layerPhase },
    largestBuffer,
    advice: [],
    suggestedConfig: null,
  };
  if (plan.fits || options.advise === false) return plan;
  return { ...plan, ...adviseFor(spec, c, { budgetBytes, assumptions: a }, plan) };
}

/** The longest multiple of 128 (at most `below`) that fits with the other settings of `c`, or null. */
function longestFitting(c: TrainingMemoryConfig, below: number, budget: number, total: (cfg: TrainingMemoryConfig) => number): number | null {
  let lo = 0;
  let hi = Math.floor(below / 128);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (total({ ...c, seqLen: mid * 128 }) <= budget) lo = mid;
    else hi = mid - 1;
  }
  return lo >= 1 ? lo * 128 : null;
}

/**
 * Advice when the plan is over budget: first each single change that helps (marked when it alone
 * fits), then, if none fits alone, the combination found by applying them in order of least harm to
 * the training result (recomputed attention, offload, 4-bit, loss chunking, micro-batch 1 with
 * accumulation, shorter rows, lower rank) until it fits.
 */
function adviseFor(
  spec: ModelSpec,
  c: TrainingMemoryConfig,
  opts: { budgetBytes: number; assumptions: MemoryPlanAssumptions },
  plan: MemoryPlan,
): { advice: string[]; suggestedConfig: TrainingMemoryConfig | null } {
  const budget = opts.budgetBytes;
  const total = (cfg: TrainingMemoryConfig) => planMemory(spec, cfg, { ...opts, advise: false }).totalBytes;
  const out: string[] = [`Predicted peak ${formatBytes(plan.totalBytes)} exceeds the ${formatBytes(budget)} budget.`];
  let firstFit: TrainingMemoryConfig | null = null;
  const suggest = (cfg: TrainingMemoryConfig, text: string) => {
    const t = total(cfg);
    if (t >= plan.totalBytes) return;
    out.push(`${text} → ${formatBytes(t)}${t <= budget ? ' (fits)' : ''}`);
    if (t <= budget) firstFit ??= cfg;
  };
  const offloaded: OptimizerOffload = c.optimizerOffload === 'gpu' ? 'cpu' : c.optimizerOffload;
  if (keepsAttention(c)) suggest({ ...c, keepAttention: false }, 'Recompute attention in the backward instead of keeping its output (Train › Attention outputs)');
  if (c.optimizerOffload === 'gpu') suggest({ ...c, optimizerOffload: 'cpu' }, 'Keep the optimizer state in CPU memory (optimizer offload)');
  if (c.quantBits === 32) suggest({ ...c, quantBits: 4 }, 'Load the base model in 4 bits (QLoRA)');
  if (Math.min(c.ceChunkTokens, c.seqLen * c.microBatch) > 256) suggest({ ...c, ceChunkTokens: 256 }, 'Compute the loss in chunks of 256 tokens (Train › loss chunk)');
  if (c.microBatch > 1) {
    let mb = c.microBatch - 1;
    while (mb > 1 && total({ ...c, microBatch: mb }) > budget) mb--;
    suggest({ ...c, microBatch: mb }, `Use a micro-batch of ${mb} (with ${Math.ceil(c.microBatch / mb)}× gradient accumulation for the same effective batch)`);
  }
  if (c.seqLen > 128) {
    const len = longestFitting(c, c.seqLen - 1, budget, total) ?? 128;
    suggest({ ...c, seqLen: len }, `Shorten the maximum length to ${len} tokens`);
  }
  if (c.loraRank > 8) suggest({ ...c, loraRank: Math.max(8, c.loraRank >> 1) }, `Lower the LoRA rank to ${Math.max(8, c.loraRank >> 1)}`);
  if (firstFit) return { advice: out, suggestedConfig: firstFit };

  const steps: Array<{ apply: (x: TrainingMemoryConfig) => TrainingMemoryConfig; text: (x: TrainingMemoryConfig) => string }> = [
    { apply: (x) => ({ ...x, keepAttention: false }), text: () => 'attention recomputed' },
    { apply: (x) => ({ ...x, optimizerOffload: offloaded }), text: () => `optimizer offload (${offloaded})` },
    { apply: (x) => ({ ...x, quantBits: 4 }), text: () => '4-bit base' },
    { apply: (x) => ({ ...x, ceChunkTokens: Math.min(x.ceChunkTokens, 256) }), text: () => 'loss chunks of 256 tokens' },
    { apply: (x) => ({ ...x, microBatch: 1 }), text: () => `micro-batch 1 (${c.microBatch}× accumulation)` },
    { apply: (x) => ({ ...x, seqLen: longestFitting(x, x.seqLen, budget, total) ?? Math.min(x.seqLen, 128) }), text: (x) => `maximum length ${x.seqLen}` },
    { apply: (x) => ({ ...x, loraRank: Math.min(x.loraRank, 8) }), text: (x) => `rank ${x.loraRank}` },
  ];
  let cfg = c;
  const applied: string[] = [];
  for (const step of steps) {
    const next = step.apply(cfg);
    if (total(next) >= total(cfg)) continue;
    cfg = next;
    applied.push(step.text(cfg));
    if (total(cfg) <= budget) break;
  }
  const t = total(cfg);
  out.push(
    t <= budget
      ? `Combined: ${applied.join(', ')} → ${formatBytes(t)} (fits)`
      : `Even with ${applied.join(', ') || 'every saving'} it needs ${formatBytes(t)}: choose a smaller model or a GPU with more memory.`,
  );
  return { advice: out, suggestedConfig: t <= budget ? cfg : null };
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
