/**
 * Predicts the peak GPU memory of a LoRA/QLoRA training run before anything is allocated, so the app can
 * say "shorten the maximum length to 1024" instead of crashing with an out-of-memory error.
 *
 * The prediction is a sum of named terms, each a buffer (or a family of buffers) the engine allocates, in
 * float32 unless stated. The GPU engine compares it with the buffer pool's measured peak (`peakBytes`,
 * live bytes only) and must land within 10%; when a kernel changes what it keeps, change the matching
 * term here (each is one line in `layerForwardTerms` / `layerBackwardTerms` / the sections of planMemory),
 * or the knobs in MemoryPlanAssumptions.
 *
 * Phases. Memory that lives for the whole run (weights, LoRA parameters and gradients, optimizer state,
 * fixed workspace) is counted always. On top of it, with activation checkpointing the forward keeps each
 * layer's input; then either
 *   - the loss phase: final norm + one cross-entropy chunk of logits (dlogits are written in place), or
 *   - the backward of one layer: its recomputed forward intermediates + its gradient buffers,
 * whichever is larger, is live. The peak is the persistent memory + saved activations + the larger phase.
 * Loading (quantizing on the GPU while streaming) peaks at the weights + one staging chunk; the plan's
 * total is the larger of loading and training.
 */
import type { ModelSpec } from './config.ts';
import { loraModules, loraModuleShape, type LoraModule } from './peft.ts';

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
  /** Tokens per cross-entropy chunk: the logits buffer is ceChunkTokens × vocab. */
  readonly ceChunkTokens: number;
}

/** The engine-dependent constants; calibrate them against the pool's measured peak. */
export interface MemoryPlanAssumptions {
  /** Bytes per quantization group besides the packed nibbles: 4 = one f32 scale (symmetric absmax). */
  readonly scaleBytesPerGroup: number;
  /** Bytes per element of the embedding table (4 = f32; the base's embeddings are not quantized). */
  readonly embedBytesPerElement: number;
  /** Bytes per element of an untied lm_head (4 = f32; 0.5 + scales if quantized like the projections). */
  readonly lmHeadBytesPerElement: number;
  /** Layers of AdamW moments staged on the GPU at once when offloaded. */
  readonly offloadChunkLayers: number;
  /** Fixed small buffers: uniforms, reduction partials, grad-norm scratch, loss scalars. */
  readonly fixedWorkspaceBytes: number;
  /** f32 bytes staged per upload while quantizing weights during loading. */
  readonly loadChunkBytes: number;
}

export const DEFAULT_ASSUMPTIONS: MemoryPlanAssumptions = {
  scaleBytesPerGroup: 4,
  embedBytesPerElement: 4,
  lmHeadBytesPerElement: 4,
  offloadChunkLayers: 1,
  fixedWorkspaceBytes: 16 * 2 ** 20,
  loadChunkBytes: 64 * 2 ** 20,
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

export type PeakPhase = 'loss' | 'layer-backward' | 'loading';

export interface MemoryPlan {
  /** Predicted peak GPU bytes: the larger of training and loading. */
  readonly totalBytes: number;
  readonly budgetBytes: number;
  readonly fits: boolean;
  /** Where the peak happens. */
  readonly peakPhase: PeakPhase;
  /** The breakdown at the training peak; sections sum to trainingPeakBytes. */
  readonly weights: MemorySection;
  readonly lora: MemorySection;
  readonly optimizer: MemorySection;
  /** Saved layer inputs + (at a layer-backward peak) one layer's recompute and gradient buffers. */
  readonly activations: MemorySection;
  /** Cross-entropy: the logits chunk and final-norm buffers (zero when the layer backward is the peak). */
  readonly ce: MemorySection;
  readonly workspace: MemorySection;
  readonly trainingPeakBytes: number;
  /** Weights + one staging chunk while quantizing during loading. */
  readonly loadingPeakBytes: number;
  /** Both phases, for the report. */
  readonly phaseBytes: { readonly loss: number; readonly layerBackward: number };
  /** The largest single buffer (compare with maxStorageBufferBindingSize: tables beyond it are split in row chunks). */
  readonly largestBuffer: { readonly name: string; readonly bytes: number };
  /** What to change when it does not fit (empty when it does). */
  readonly advice: readonly string[];
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

/** The base weight matrices of one layer as [rows (out), cols (in)], by module (InternLM2's wqkv is one). */
function layerMatrices(spec: ModelSpec): Array<{ name: string; out: number; in: number }> {
  return loraModules(spec.family).map((m) => ({ name: m, ...loraModuleShape(spec, m) }));
}

/** Bytes of one [out, in] base matrix at the configured precision. */
function matrixBytes(out: number, inF: number, c: TrainingMemoryConfig, a: MemoryPlanAssumptions): number {
  if (c.quantBits === 32) return out * inF * F32;
  return Math.ceil((out * inF) / 2) + out * Math.ceil(inF / c.groupSize) * a.scaleBytesPerGroup;
}

/** The forward intermediates of one layer that its backward reads (recomputed under checkpointing). */
function layerForwardTerms(spec: ModelSpec, c: TrainingMemoryConfig, targets: readonly LoraModule[]): MemoryTerm[] {
  const bt = c.seqLen * c.microBatch;
  const { hidden: h, intermediate: inter, headDim: d, nHeads, nKvHeads } = spec;
  const q = nHeads * d;
  const kv = nKvHeads * d;
  const t = (name: string, elems: number, note: string): MemoryTerm => ({ name, bytes: elems * F32, note });
  const terms = [
    t('attn_norm out', bt * h, 'RMSNorm(x) [B·T, hidden]'),
    t('attn_norm rstd', bt, '1/rms per token [B·T]'),
    t('q, k, v', bt * (q + 2 * kv), 'projected (+bias, +rope) [B·T, (nHeads + 2·nKv)·headDim]'),
  ];
  if (spec.qkNorm) {
    terms.push(t('q, k before q_norm/k_norm', bt * (q + kv), 'per-head RMSNorm inputs [B·T, (nHeads + nKv)·headDim]'));
    terms.push(t('q_norm/k_norm rstd', bt * (nHeads + nKvHeads), 'per token and head'));
  }
  terms.push(
    t('attention out', bt * q, 'softmax(QKᵀ)V [B·T, nHeads·headDim]'),
    t('attention lse', bt * nHeads, 'log-sum-exp per query row, for the flash-style backward [B, nHeads, T]'),
    t('residual after attention', bt * h, 'x + o(attn) [B·T, hidden]'),
    t('mlp_norm out', bt * h, 'RMSNorm [B·T, hidden]'),
    t('mlp_norm rstd', bt, '[B·T]'),
    t('gate, up', 2 * bt * inter, 'pre-activation projections [B·T, intermediate] × 2'),
    t('silu(gate)·up', bt * inter, 'input of down [B·T, intermediate]'),
  );
  terms.push(t('LoRA U = A·x', targets.length * bt * c.loraRank, `one [B·T, r] per adapted module (${targets.length} per layer)`));
  return terms;
}

/** The gradient buffers live during one layer's backward: the residual stream's two plus the larger of the MLP and attention phases. */
function layerBackwardTerms(spec: ModelSpec, c: TrainingMemoryConfig): MemoryTerm[] {
  const bt = c.seqLen * c.microBatch;
  const { hidden: h, intermediate: inter, headDim: d, nHeads, nKvHeads } = spec;
  const q = nHeads * d;
  const kv = nKvHeads * d;
  const mlp = bt * (3 * inter + h + c.loraRank);
  const attn = bt * (2 * q + 2 * kv + nHeads + h + c.loraRank);
  return [
    { name: 'd residual (in, out)', bytes: 2 * bt * h * F32, note: 'gradient w.r.t. the layer output and input [B·T, hidden] × 2' },
    mlp >= attn
      ? { name: 'MLP backward', bytes: mlp * F32, note: 'd(silu·up), d gate, d up [B·T, intermediate] × 3 + d mlp_norm out [B·T, hidden] + d U [B·T, r]' }
      : { name: 'attention backward', bytes: attn * F32, note: 'd attn out, dq [B·T, q] × 2 + dk, dv + D [B·T, nHeads] + d attn_norm out + d U' },
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

  // ---- weights: persistent
  const mats = layerMatrices(spec);
  const linearBytes = L * mats.reduce((s, m) => s + matrixBytes(m.out, m.in, c, a), 0);
  const q = spec.nHeads * spec.headDim;
  const kv = spec.nKvHeads * spec.headDim;
  let smallPerLayer = 2 * h; // attn_norm, mlp_norm
  if (spec.qkNorm) smallPerLayer += 2 * spec.headDim;
  if (spec.qkvBias) smallPerLayer += q + 2 * kv;
  if (spec.oBias) smallPerLayer += h;
  if (spec.mlpBias) smallPerLayer += 2 * spec.intermediate + h;
  const embedBytes = vocab * h * a.embedBytesPerElement;
  const lmHeadBytes = spec.tieWordEmbeddings ? 0 : vocab * h * a.lmHeadBytesPerElement;
  const weightTerms: MemoryTerm[] = [
    {
      name: c.quantBits === 4 ? 'projections (4-bit + scales)' : 'projections (f32)',
      bytes: linearBytes,
      note: c.quantBits === 4 ? `${L} layers × ${mats.map((m) => m.name).join('/')}: out·in/2 bytes + out·⌈in/${c.groupSize}⌉·${a.scaleBytesPerGroup}` : `${L} layers × ${mats.map((m) => m.name).join('/')}: out·in·4`,
    },
    { name: 'norms and biases', bytes: (L * smallPerLayer + h) * F32, note: 'RMSNorm weights (+q/k norms, +biases) per layer, final norm; f32' },
    { name: 'embedding', bytes: embedBytes, note: `[${vocab}, ${h}] × ${a.embedBytesPerElement} bytes` },
    { name: 'lm_head', bytes: lmHeadBytes, note: spec.tieWordEmbeddings ? 'tied: shares the embedding' : `[${vocab}, ${h}] × ${a.lmHeadBytesPerElement} bytes` },
  ];

  // ---- LoRA: parameters and gradients, persistent
  const loraParamsPerLayer = targets.reduce((s, m) => {
    const sh = loraModuleShape(spec, m);
    return s + c.loraRank * (sh.in + sh.out);
  }, 0);
  const loraParams = L * loraParamsPerLayer;
  const loraTerms: MemoryTerm[] = [
    { name: 'LoRA A, B', bytes: loraParams * F32, note: `${L} layers × ${targets.length} modules × r·(in + out), f32 (${loraParams} parameters)` },
    { name: 'LoRA gradients', bytes: loraParams * F32, note: 'same shapes, accumulated over micro-batches' },
  ];

  // ---- optimizer: AdamW m and v
  const optimizerTerms: MemoryTerm[] =
    c.optimizerOffload === 'gpu'
      ? [{ name: 'AdamW m, v', bytes: 2 * loraParams * F32, note: 'two moments per LoRA parameter, f32, on the GPU' }]
      : [{ name: `AdamW m, v streaming chunk (${c.optimizerOffload})`, bytes: 2 * Math.min(L, a.offloadChunkLayers) * loraParamsPerLayer * F32, note: `moments of ${a.offloadChunkLayers} layer(s) staged for the update; the rest in ${c.optimizerOffload === 'cpu' ? 'CPU memory' : 'OPFS / a file'}` }];

  // ---- workspace: persistent small buffers
  const workspaceTerms: MemoryTerm[] = [
    { name: 'token ids, labels, positions, segments', bytes: 4 * bt * 4, note: 'int32 [B·T] × 4' },
    { name: 'rope cos/sin', bytes: 2 * c.seqLen * (spec.headDim / 2) * F32, note: '[T, headDim/2] × 2' },
    { name: 'fixed', bytes: a.fixedWorkspaceBytes, note: 'uniforms, reduction partials, grad-norm scratch, loss scalars' },
  ];

  // ---- activations
  const forwardSet = layerForwardTerms(spec, c, targets);
  const forwardBytes = forwardSet.reduce((s, t) => s + t.bytes, 0);
  const backwardSet = layerBackwardTerms(spec, c);
  const savedTerms: MemoryTerm[] = c.activationCheckpointing
    ? [
        { name: 'saved layer inputs', bytes: L * bt * h * F32, note: `${L} × [B·T, hidden]: what the backward recomputes each layer from` },
        { name: 'final hidden', bytes: bt * h * F32, note: 'output of the last layer, input of the final norm' },
      ]
    : [
        { name: 'saved layer inputs', bytes: L * bt * h * F32, note: `${L} × [B·T, hidden]` },
        { name: 'saved intermediates (no checkpointing)', bytes: (L - 1) * forwardBytes, note: `every layer's forward intermediates but the one being differentiated: ${L - 1} × ${forwardBytes}` },
        { name: 'final hidden', bytes: bt * h * F32, note: 'output of the last layer' },
      ];
  const layerPhaseTerms = [...forwardSet.map((t) => ({ ...t, name: `recompute: ${t.name}` })), ...backwardSet];
  const layerPhase = layerPhaseTerms.reduce((s, t) => s + t.bytes, 0);
  const chunk = Math.min(c.ceChunkTokens, bt);
  const ceTerms: MemoryTerm[] = [
    { name: 'logits chunk', bytes: chunk * vocab * F32, note: `[${chunk} tokens, ${vocab}] f32; the loss kernel overwrites it with dlogits` },
    { name: 'final_norm out + rstd', bytes: bt * (h + 1) * F32, note: '[B·T, hidden + 1]' },
    { name: 'd final hidden', bytes: bt * h * F32, note: 'gradient into the last layer [B·T, hidden]' },
    { name: 'per-token loss, lse', bytes: 2 * bt * F32, note: '[B·T] × 2' },
  ];
  const lossPhase = ceTerms.reduce((s, t) => s + t.bytes, 0);

  const weights = section(weightTerms);
  const lora = section(loraTerms);
  const optimizer = section(optimizerTerms);
  const workspace = section(workspaceTerms);
  const lossPeak = lossPhase >= layerPhase;
  const activations = section(lossPeak ? savedTerms : [...savedTerms, ...layerPhaseTerms]);
  const ce = section(lossPeak ? ceTerms : []);
  const trainingPeakBytes = weights.bytes + lora.bytes + optimizer.bytes + workspace.bytes + activations.bytes + ce.bytes;

  // ---- loading: the weights fill up while one staging chunk of f32 rows is quantized
  const largestF32 = Math.max(...mats.map((m) => m.out * m.in * F32), vocab * h * F32);
  const loadingPeakBytes = weights.bytes + Math.min(a.loadChunkBytes, largestF32);

  const totalBytes = Math.max(trainingPeakBytes, loadingPeakBytes);
  const peakPhase: PeakPhase = loadingPeakBytes > trainingPeakBytes ? 'loading' : lossPeak ? 'loss' : 'layer-backward';

  const buffers: Array<{ name: string; bytes: number }> = [
    { name: 'embedding', bytes: embedBytes },
    { name: 'lm_head', bytes: lmHeadBytes },
    { name: 'logits chunk', bytes: chunk * vocab * F32 },
    ...mats.map((m) => ({ name: `${m.name} (one layer)`, bytes: matrixBytes(m.out, m.in, c, a) })),
    { name: 'gate/up activation', bytes: bt * spec.intermediate * F32 },
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
    workspace,
    trainingPeakBytes,
    loadingPeakBytes,
    phaseBytes: { loss: lossPhase, layerBackward: layerPhase },
    largestBuffer,
    advice: [],
  };
  if (plan.fits || options.advise === false) return plan;
  return { ...plan, advice: adviseFor(spec, c, { budgetBytes, assumptions: a }, plan) };
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
 * the training result (offload, 4-bit, loss chunking, micro-batch 1 with accumulation, shorter rows,
 * lower rank) until it fits.
 */
function adviseFor(spec: ModelSpec, c: TrainingMemoryConfig, opts: { budgetBytes: number; assumptions: MemoryPlanAssumptions }, plan: MemoryPlan): string[] {
  const budget = opts.budgetBytes;
  const total = (cfg: TrainingMemoryConfig) => planMemory(spec, cfg, { ...opts, advise: false }).totalBytes;
  const out: string[] = [`Predicted peak ${formatBytes(plan.totalBytes)} exceeds the ${formatBytes(budget)} budget.`];
  let anyFits = false;
  const suggest = (cfg: TrainingMemoryConfig, text: string) => {
    const t = total(cfg);
    if (t >= plan.totalBytes) return;
    out.push(`${text} → ${formatBytes(t)}${t <= budget ? ' (fits)' : ''}`);
    if (t <= budget) anyFits = true;
  };
  const offloaded: OptimizerOffload = c.optimizerOffload === 'gpu' ? 'cpu' : c.optimizerOffload;
  if (c.optimizerOffload === 'gpu') suggest({ ...c, optimizerOffload: 'cpu' }, 'Keep the optimizer state in CPU memory (optimizer offload)');
  if (c.quantBits === 32) suggest({ ...c, quantBits: 4 }, 'Load the base model in 4 bits (QLoRA)');
  if (Math.min(c.ceChunkTokens, c.seqLen * c.microBatch) > 256) suggest({ ...c, ceChunkTokens: 256 }, 'Compute the loss in chunks of 256 tokens');
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
  if (anyFits) return out;

  const steps: Array<{ apply: (x: TrainingMemoryConfig) => TrainingMemoryConfig; text: (x: TrainingMemoryConfig) => string }> = [
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
  return out;
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
