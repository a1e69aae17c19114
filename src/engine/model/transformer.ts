/**
 * The decoder-only transformer (Llama / Qwen2 / Qwen3 / InternLM2) composed from the kernel families:
 * forward to logits or to the loss, and the backward to the LoRA gradients with activation
 * checkpointing (each layer's input is kept, and by default its attention output, lse and LoRA input
 * products; a layer's forward, less what was kept and less the down projection and residual add that
 * nothing in the backward reads, is recomputed right before its backward, except the last layer's, whose
 * intermediates the forward left in place). Everything for one batch shape is prepared once as a
 * `StepPlan` — tensors allocated,
 * bind groups made — and re-encoded every step: no allocation, no readback and no recompilation
 * inside a step.
 *
 * Per layer ℓ with input h (HF order):
 *   n1 = rmsnorm(h)·w_attn; q,k,v = n1·Wᵀ (+bias) (+LoRA); [qwen3: q,k = rmsnorm per head]; rope(q,k)
 *   o = attention(q,k,v); a = o·Woᵀ (+LoRA); h2 = h + a
 *   n2 = rmsnorm(h2)·w_mlp; g,u = n2·Wᵀ (+LoRA); m = silu(g)·u; d = m·Wdᵀ (+LoRA); h' = h2 + d
 * LoRA: y += s·(x·Aᵀ)·Bᵀ; backward G = dy·B, dx += s·G·A, dB += s·dyᵀ·U, dA += s·Gᵀ·x (U = x·Aᵀ kept).
 */
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { documentSpans, prepareAttentionBackward, prepareAttentionForward } from '../kernels/attention.ts';
import { countSupervised, prepareCrossEntropy, prepareLmHeadLogits, type PreparedCrossEntropy } from '../kernels/cross_entropy.ts';
import { prepareAdd, prepareBiasAdd } from '../kernels/elementwise.ts';
import { prepareEmbeddingForward } from '../kernels/embedding.ts';
import { prepareMatmul } from '../kernels/matmul.ts';
import { loraScratchElems, prepareLoraProduct, prepareLoraQ4Dx, type LoraPass } from '../kernels/lora.ts';
import { prepareQ4Matmul, prepareQ4MatmulDx, q4DxCanFuseLora, type Q4Weight } from '../kernels/quant4.ts';
import {
  allocInt8Scratch,
  largestQ4Block,
  int8MatmulSupport,
  prepareInt8Q4Matmul,
  prepareInt8Q4MatmulDx,
  prepareQuantizeRows,
  releaseInt8Scratch,
  type Int8Rows,
  type Int8Scratch,
  QUANT4_MMA_SHADER,
  type MatmulPrecision,
} from '../kernels/quant4-mma.ts';
import { KernelError } from '../gpu/errors.ts';
import { prepareRmsNormBackward, prepareRmsNormForward } from '../kernels/rmsnorm.ts';
import { prepareRope, prepareRopeBackward, uploadInvFreq } from '../kernels/rope.ts';
import { prepareSwigluBackward, prepareSwigluForward } from '../kernels/swiglu.ts';
import { PROJECTIONS, type BaseWeights, type LayerWeights, type Projection, type ProjectionKind } from './base-weights.ts';
import { ropeInvFreq, type ModelSpec } from './config.ts';
import type { LoraGroup, LoraLayout } from './lora-layout.ts';

/** The trainable LoRA weights: the optimizer's flat parameter and gradient buffers, viewed per matrix. */
export interface LoraRuntime {
  layout: LoraLayout;
  params: Tensor;
  grads: Tensor;
  /** lora_dropout p on the adapter input (training plans; 0 or absent: none). */
  dropout?: number;
}

export interface BatchShape {
  batch: number;
  seq: number;
}

/** One batch of token rows, flattened row after row (batch·seq entries each). */
export interface BatchInputs {
  inputIds: Int32Array;
  /** Position of each token in its document (packed rows restart at 0). */
  positionIds: Int32Array;
  /**
   * Attention groups: a token attends to earlier tokens of its own document id. −1: a padding token that
   * sees nothing. −(d+2): a padding token that, as a query, sees document d but that no query sees (how
   * transformers treats right padding with an attention_mask; it only matters for those tokens' logits).
   */
  documentIds: Int32Array;
  /** Targets (HF convention, unshifted); −100 = no loss. Needed for loss/train plans. */
  labels?: Int32Array;
}

export type PlanMode = 'logits' | 'loss' | 'train';

interface LayerScratch {
  n1: Tensor;
  rstd1: Tensor;
  qRaw: Tensor | null;
  rstdQ: Tensor | null;
  kRaw: Tensor | null;
  rstdK: Tensor | null;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** Null where the plan keeps one per layer (StepPlan.attentionOf). */
  attn: Tensor | null;
  lse: Tensor | null;
  a: Tensor;
  h2: Tensor;
  n2: Tensor;
  rstd2: Tensor;
  g: Tensor;
  u: Tensor;
  m: Tensor;
  d: Tensor;
  /** U = x·Aᵀ per LoRA group of the current layer, keyed by module. */
  U: Map<string, Tensor>;
}

interface BackwardScratch {
  dh: Tensor;
  dhNext: Tensor;
  dh2: Tensor;
  tmpH: Tensor;
  dn: Tensor;
  dm: Tensor;
  dg: Tensor;
  du: Tensor;
  dAttn: Tensor;
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  dqRaw: Tensor | null;
  dkRaw: Tensor | null;
  delta: Tensor;
  G: Map<string, Tensor>;
}

/** Keeps every tensor a plan allocates, to release them together. */
class Allocator {
  readonly owned: Tensor[] = [];
  constructor(private readonly ctx: GpuContext) {}
  f32(label: string, shape: number[]): Tensor {
    return this.take(label, shape, 'f32');
  }
  i32(label: string, shape: number[]): Tensor {
    return this.take(label, shape, 'i32');
  }
  u32(label: string, shape: number[]): Tensor {
    return this.take(label, shape, 'u32');
  }
  private take(label: string, shape: number[], dtype: 'f32' | 'i32' | 'u32'): Tensor {
    const t = this.ctx.tensor(label, shape, dtype);
    this.owned.push(t);
    return t;
  }
  releaseAll(): void {
    for (const t of this.owned) this.ctx.release(t);
    this.owned.length = 0;
  }
}

export interface TransformerOptions {
  /**
   * How the 4-bit base projections are multiplied: 'f32' (exact dequant matmuls, every device) or 'int8'
   * (tensor-core subgroup matrices, quant4_mma.wgsl). 'int8' falls back to 'f32' where the device lacks
   * them (see `matmulPrecision` for what is in effect).
   */
  matmulPrecision?: MatmulPrecision;
  /**
   * int8 forward with the activations' rounding residual as a second int8 level (two products per output,
   * ~254× less activation error): true for every projection, false for none (one level: faster, ~1% matmul
   * error), or the projection kinds that take it (the others one level). Default DEFAULT_INT8_RESIDUAL.
   */
  int8Residual?: boolean | readonly ProjectionKind[];
  /**
   * Whether the backward's recomputed layer forwards (activation checkpointing) also carry the residual level
   * where the forward does (default false). Their outputs only feed gradients, which the one-level dX already
   * puts on ~1% noise; the loss comes from the first forward, which keeps int8Residual. Measurement knob.
   */
  int8RecomputeResidual?: boolean;
  /**
   * Training plans keep every layer's attention output and log-sum-exp from the forward (default true), so
   * the backward's recomputed layer forwards skip attention, the costliest kernel of a long row: one
   * attention forward less per layer, at [B·T, nHeads·(headDim + 1)] f32 per layer (memory-plan.ts
   * 'kept attention outputs'). With them the adapters' rank-r input products U = dropout(x)·Aᵀ are kept
   * too ([B·T, r] per adapted module and layer, 'kept LoRA inputs'), which the recompute then skips.
   * Off: only the layer inputs are kept, as with plain checkpointing.
   */
  keepAttention?: boolean;
  /**
   * The adapters' rank-r products (U = dropout(x)·Aᵀ, G = dy·B, dB, dA) as lora.wgsl's panels, one dispatch
   * each, instead of split-K slices plus a reduce pass (default false until measured on a GPU).
   */
  loraPanels?: boolean;
}

/**
 * The int8 path's recomputed forwards take one activation level unless told otherwise: on the lent H100 the
 * step ran 6–7% faster at seq 512 b4 and seq 2048 (two calls each way, alternated) and the accuracy gate
 * still passed (docs/int8-matmul.md).
 */
const DEFAULT_INT8_RECOMPUTE_RESIDUAL = false;

/**
 * The projections whose int8 forward keeps the residual level: all but gate and up. Measured on the lent
 * H100 (2026-12-08, `bash bench/device-call.sh gate`): gate/up on one level moved the fixture logits from f32
 * by 6.91e-3 / 6.96e-3 / 9.73e-3 / 6.91e-3 (llama / qwen2 / qwen3 / internlm2; every projection on two levels:
 * 6.50e-3 / 6.84e-3 / 9.52e-3 / 6.50e-3; gate 1e-2) and the loss curves by at most 0.006% (llama fixture) and
 * 0.067% (InternLM2-1.8B shape, XTuner's lr; gate 1%), while the step ran 8.7% faster at seq 512 × 4 (5539
 * against 5095 tok/s) and 6.9% at seq 2048 (4274 against 3999). q/k/v, o or down on one level cost the logits
 * more (qwen3: 1.24e-2, 1.12e-2; down is f32 in the small fixtures) — docs/int8-matmul.md.
 */
export const DEFAULT_INT8_RESIDUAL: readonly ProjectionKind[] = ['q', 'k', 'v', 'o', 'down'];

export class Transformer {
  readonly spec: ModelSpec;
  private precision: MatmulPrecision;
  /** The projections whose int8 forward carries the activations' rounding residual (TransformerOptions.int8Residual). */
  readonly int8Residual: ReadonlySet<ProjectionKind>;
  /** The same for the backward's recomputed forwards (TransformerOptions.int8RecomputeResidual). */
  readonly int8RecomputeResidual: boolean;
  /** Whether training plans keep each layer's attention output for the backward (TransformerOptions.keepAttention). */
  readonly keepAttention: boolean;
  /** Whether the adapters' rank-r products run as single-dispatch panels (TransformerOptions.loraPanels). */
  readonly loraPanels: boolean;
  /** Why the int8 path was dropped after all (its kernels failed to build on this device), or null. */
  int8Fallback: string | null = null;
  constructor(
    readonly ctx: GpuContext,
    readonly weights: BaseWeights,
    readonly lora: LoraRuntime | null,
    opts: TransformerOptions = {},
  ) {
    this.spec = weights.spec;
    this.precision = opts.matmulPrecision === 'int8' && int8MatmulSupport(ctx.features).ok ? 'int8' : 'f32';
    const residual = opts.int8Residual ?? DEFAULT_INT8_RESIDUAL;
    this.int8Residual = new Set(residual === true ? PROJECTIONS : residual === false ? [] : residual);
    this.int8RecomputeResidual = opts.int8RecomputeResidual ?? DEFAULT_INT8_RECOMPUTE_RESIDUAL;
    this.keepAttention = opts.keepAttention ?? true;
    this.loraPanels = opts.loraPanels ?? false;
  }

  /** The precision in effect: the requested one where the device supports it (and its kernels build), else 'f32'. */
  get matmulPrecision(): MatmulPrecision {
    return this.precision;
  }

  /**
   * Prepares everything one step of this shape needs. The int8 kernels are experimental in browsers: if
   * they fail to build on a device that advertises them, the plan is rebuilt on the f32 kernels (same
   * results within the int8 tolerance, slower) and int8Fallback says why.
   */
  async plan(shape: BatchShape, mode: PlanMode, opts: { ceChunkTokens?: number } = {}): Promise<StepPlan> {
    const plan = new StepPlan(this, shape, mode);
    try {
      await plan.build(opts);
    } catch (e) {
      // (Other errors propagate as they were: an out-of-memory scope releases the half-built plan itself.)
      if (this.precision === 'int8' && e instanceof KernelError && e.kernel.startsWith(QUANT4_MMA_SHADER.name)) {
        plan.release();
        this.precision = 'f32';
        this.int8Fallback = e.message;
        return this.plan(shape, mode, opts);
      }
      throw e;
    }
    return plan;
  }
}

export class StepPlan {
  readonly tokens: number;
  readonly alloc: Allocator;
  readonly ids: Tensor;
  readonly positions: Tensor;
  readonly docIds: Tensor;
  /** documentSpans(docIds): where each token's visible keys start and its watching queries stop. */
  readonly docSpans: Tensor;
  readonly labels: Tensor | null;
  /** hs[ℓ]: input of layer ℓ; hs[L]: the final hidden state (before the final norm). Forward-only plans alternate two buffers. */
  readonly hs: Tensor[] = [];
  readonly finalNormed: Tensor;
  readonly finalRstd: Tensor;
  /** [tokens, vocab] in 'logits' mode. */
  logits: Tensor | null = null;
  /** The mean loss (1 element) in 'loss'/'train' mode. */
  loss: Tensor | null = null;
  /** Per-token loss terms. */
  losses: Tensor | null = null;
  readonly forward: KernelDispatch[] = [];
  readonly head: KernelDispatch[] = [];
  readonly backward: KernelDispatch[] = [];
  private ce: PreparedCrossEntropy | null = null;
  private releasers: (() => void)[] = [];
  private scratch!: LayerScratch;
  private bwd: BackwardScratch | null = null;
  /** Split-K scratch shared by every LoRA product of the plan (they run one after another). */
  private loraScratch: Tensor | null = null;
  /** Dropout seed setters of the LoRA products, by `layer.module`: forward and recompute share a key. */
  private readonly dropoutSeeds = new Map<string, ((seed: number) => void)[]>();
  private invFreq!: Tensor;
  /** The int8 path's activation scratch (null on the f32 path), and which input it holds quantized. */
  private int8: Int8Scratch | null = null;
  private int8Holds: { x: Tensor; layer: number; rows: Int8Rows } | null = null;
  /** Set while the backward's recomputed layer forwards are built. */
  private recomputing = false;
  /** Training with TransformerOptions.keepAttention: each layer's attention output and lse, else null (scratch.attn/lse serve every layer). */
  private keptAttention: { o: Tensor; lse: Tensor }[] | null = null;
  /** With keptAttention: each layer's U = dropout(x)·Aᵀ per adapted module, else null (scratch.U serves every layer). */
  private keptU: Map<string, Tensor>[] | null = null;

  constructor(
    readonly model: Transformer,
    readonly shape: BatchShape,
    readonly mode: PlanMode,
  ) {
    const ctx = model.ctx;
    const { hidden: H } = model.spec;
    this.tokens = shape.batch * shape.seq;
    this.alloc = new Allocator(ctx);
    const T = this.tokens;
    this.ids = this.alloc.i32('input_ids', [T]);
    this.positions = this.alloc.i32('position_ids', [T]);
    this.docIds = this.alloc.i32('document_ids', [T]);
    this.docSpans = this.alloc.u32('document spans', [T, 2]);
    this.labels = mode === 'logits' ? null : this.alloc.i32('labels', [T]);
    // Training keeps every layer's input (the backward recomputes from them); a forward-only plan needs
    // two buffers used in turn (layer ℓ reads hs[ℓ] and writes hs[ℓ + 1]).
    for (let l = 0; l <= model.spec.layers; l++) this.hs.push(mode === 'train' || l < 2 ? this.alloc.f32(`h${l}`, [T, H]) : this.hs[l % 2]!);
    this.finalNormed = this.alloc.f32('final normed', [T, H]);
    this.finalRstd = this.alloc.f32('final rstd', [T]);
  }

  get ctx(): GpuContext {
    return this.model.ctx;
  }
  /** Training plans of a model with TransformerOptions.keepAttention keep each layer's attention output. */
  private get keepsAttention(): boolean {
    return this.mode === 'train' && this.model.keepAttention;
  }
  get spec(): ModelSpec {
    return this.model.spec;
  }

  /**
   * Writes one batch's inputs (and the supervised-token count the loss divides by). With gradient
   * accumulation over k micro-batches pass k: each micro-batch's mean then carries weight 1/k (the loss
   * tensor holds mean/k).
   */
  setBatch(b: BatchInputs, accumulationSteps = 1): void {
    const T = this.tokens;
    for (const [name, a] of [['inputIds', b.inputIds], ['positionIds', b.positionIds], ['documentIds', b.documentIds]] as const) {
      if (a.length !== T) throw new Error(`batch ${name}: ${a.length} entries for ${this.shape.batch}×${this.shape.seq} tokens`);
    }
    const V = this.spec.vocabSize;
    for (let i = 0; i < T; i++) {
      const id = b.inputIds[i]!;
      if (id < 0 || id >= V) throw new Error(`batch inputIds[${i}] = ${id} is outside the vocabulary (0..${V - 1})`);
    }
    this.ctx.write(this.ids, b.inputIds);
    this.ctx.write(this.positions, b.positionIds);
    this.ctx.write(this.docIds, b.documentIds);
    this.ctx.write(this.docSpans, documentSpans(b.documentIds, this.shape.seq));
    if (this.labels) {
      if (!b.labels || b.labels.length !== T) throw new Error(`batch labels: need ${T} entries`);
      this.ctx.write(this.labels, b.labels);
      this.ce!.setNumSupervised(countSupervised(b.labels, this.shape.seq, this.spec.vocabSize) * accumulationSteps);
    }
  }

  /**
   * The dropout masks of one step: each (layer, module) gets its own seed derived from `seed`, the same in
   * the forward, the recomputation and the backward. Call once per micro-batch before encoding it.
   */
  setDropoutSeed(seed: number): void {
    let i = 0;
    for (const setters of this.dropoutSeeds.values()) {
      const derived = (Math.imul(seed >>> 0, 0x9e3779b1) + Math.imul(++i, 0x85ebca77)) >>> 0;
      for (const set of setters) set(derived);
    }
  }

  private dropoutP(): number {
    return this.mode === 'train' ? (this.model.lora?.dropout ?? 0) : 0;
  }

  private registerSeed(group: LoraGroup, pass: LoraPass): void {
    const key = `${group.layer}.${group.module}`;
    const list = this.dropoutSeeds.get(key) ?? [];
    list.push(pass.setSeed);
    this.dropoutSeeds.set(key, list);
  }

  /** All dispatches of one step, in order. */
  get dispatches(): KernelDispatch[] {
    return [...this.forward, ...this.head, ...this.backward];
  }

  encode(encoder: GPUCommandEncoder): void {
    this.ctx.encode(encoder, this.dispatches, { label: `${this.mode} step` });
  }

  release(): void {
    for (const r of this.releasers) r();
    if (this.int8) releaseInt8Scratch(this.ctx, this.int8);
    this.ce?.release();
    this.alloc.releaseAll();
    if (this.invFreq) this.ctx.release(this.invFreq);
  }

  // ---- building -------------------------------------------------------------------------------------

  async build(opts: { ceChunkTokens?: number }): Promise<void> {
    const { ctx, spec } = this;
    const T = this.tokens;
    const H = spec.hidden;
    this.invFreq = uploadInvFreq(ctx, ropeInvFreq(spec, this.shape.seq));
    this.scratch = this.makeLayerScratch();
    if (this.keepsAttention) {
      const qd = spec.nHeads * spec.headDim;
      this.keptAttention = Array.from({ length: spec.layers }, (_, l) => ({ o: this.alloc.f32(`attention out ${l}`, [T, qd]), lse: this.alloc.f32(`attention lse ${l}`, [spec.nHeads, T]) }));
      if (this.model.lora) this.keptU = Array.from({ length: spec.layers }, (_, l) => this.rankScratch('U', l));
    }
    if (this.model.matmulPrecision === 'int8') {
      const q4 = this.model.weights.layers.flatMap((layer) => Object.values(layer.proj).flatMap((p) => (p.kind === 'q4' ? [p.w] : [])));
      // Activations as wide as the widest projection side; one projection at a time on its int8 grid.
      if (q4.length) this.int8 = allocInt8Scratch(ctx, T, Math.max(...q4.flatMap((w) => [w.in, w.out])), largestQ4Block(q4));
    }
    const lora = this.model.lora;
    if (lora) {
      let elems = 0;
      for (const g of lora.layout.groups) elems = Math.max(elems, loraScratchElems(T, g.in, g.out, lora.layout.rank));
      if (elems > 0) this.loraScratch = this.alloc.f32('lora split-K scratch', [elems]);
    }
    // Embedding: one dispatch per table block (each writes the rows of its ids).
    const w = this.model.weights;
    for (const b of w.embed) {
      this.forward.push(...(await prepareEmbeddingForward(ctx, this.ids, b.tensor, this.hs[0]!, { tokens: T, hidden: H, vocab: spec.vocabSize }, { rowOffset: b.row0, rowCount: b.rows })));
    }
    for (let l = 0; l < spec.layers; l++) this.forward.push(...(await this.layerForward(l)));
    const eps = spec.rmsNormEps;
    this.forward.push(...(await prepareRmsNormForward(ctx, this.hs[spec.layers]!, w.finalNorm, this.finalNormed, this.finalRstd, { rows: T, dim: H, eps })));
    const lmHead = w.lmHead.map((b) => b.tensor);
    if (this.mode === 'logits') {
      this.logits = this.alloc.f32('logits', [T, spec.vocabSize]);
      const p = await prepareLmHeadLogits(ctx, { hidden: this.finalNormed, lmHead, out: this.logits }, { rows: T, hidden: H, firstRow: 0, rowStride: 1 });
      this.head.push(...p.dispatches);
      this.releasers.push(p.release);
      return;
    }
    this.loss = this.alloc.f32('loss', [1]);
    this.losses = this.alloc.f32('losses', [T]);
    const train = this.mode === 'train';
    if (train && !this.model.lora) throw new Error('a training plan needs LoRA weights');
    const bwd = train ? this.makeBackwardScratch() : null;
    this.bwd = bwd;
    this.ce = await prepareCrossEntropy(
      ctx,
      { hidden: this.finalNormed, lmHead, labels: this.labels!, losses: this.losses, loss: this.loss, ...(bwd ? { dhidden: bwd.dn } : {}) },
      { tokens: T, seqLen: this.shape.seq, hidden: H },
      { numSupervised: 1, ...(opts.ceChunkTokens ? { chunkTokens: opts.ceChunkTokens } : {}) },
    );
    this.head.push(...this.ce.dispatches);
    if (!bwd) return;
    // d(final norm): dh_L = rmsnorm_backward(dn)
    this.backward.push(...(await prepareRmsNormBackward(ctx, bwd.dn, this.hs[spec.layers]!, w.finalNorm, this.finalRstd, bwd.dh, { rows: T, dim: H, eps })));
    for (let l = spec.layers - 1; l >= 0; l--) {
      // Activation checkpointing: recompute layer ℓ's forward from its saved input, then its backward. Not
      // the last layer's: the forward left its intermediates in the layer scratch, which the head (final
      // norm, loss) does not touch. (On the int8 path that layer's backward then reads the forward's
      // two-level projections, where a recompute would have taken one level.)
      if (l < spec.layers - 1) {
        this.recomputing = true;
        this.backward.push(...(await this.layerForward(l)));
        this.recomputing = false;
      }
      this.backward.push(...(await this.layerBackward(l)));
    }
  }

  /**
   * One [tokens, rank] tensor per LoRA module (U = x·Aᵀ, or G = dy·B), reused by every layer (the layers
   * run one after another, and every transformed layer has the same modules), or layer ℓ's own.
   */
  private rankScratch(name: 'U' | 'G', layer?: number): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    const lora = this.model.lora;
    if (!lora) return out;
    const firstLayer = lora.layout.groups[0]?.layer;
    for (const g of lora.layout.groups) {
      if (g.layer === firstLayer) out.set(g.module, this.alloc.f32(`${name} ${g.module}${layer === undefined ? '' : ` ${layer}`}`, [this.tokens, lora.layout.rank]));
    }
    return out;
  }

  private makeLayerScratch(): LayerScratch {
    const { spec } = this;
    const T = this.tokens;
    const H = spec.hidden;
    const qd = spec.nHeads * spec.headDim;
    const kvd = spec.nKvHeads * spec.headDim;
    const I = spec.intermediate;
    const a = this.alloc;
    // (Kept per layer instead when the plan keeps attention: see uFor.)
    const U = this.keepsAttention ? new Map<string, Tensor>() : this.rankScratch('U');
    return {
      n1: a.f32('n1', [T, H]),
      rstd1: a.f32('rstd1', [T]),
      qRaw: spec.qkNorm ? a.f32('q before norm', [T, qd]) : null,
      rstdQ: spec.qkNorm ? a.f32('q norm rstd', [T * spec.nHeads]) : null,
      kRaw: spec.qkNorm ? a.f32('k before norm', [T, kvd]) : null,
      rstdK: spec.qkNorm ? a.f32('k norm rstd', [T * spec.nKvHeads]) : null,
      q: a.f32('q', [T, qd]),
      k: a.f32('k', [T, kvd]),
      v: a.f32('v', [T, kvd]),
      // (Kept per layer instead when the plan keeps attention for the backward: see attentionOf.)
      attn: this.keepsAttention ? null : a.f32('attention out', [T, qd]),
      lse: this.keepsAttention ? null : a.f32('attention lse', [spec.nHeads, T]),
      a: a.f32('o proj out', [T, H]),
      h2: a.f32('h mid', [T, H]),
      n2: a.f32('n2', [T, H]),
      rstd2: a.f32('rstd2', [T]),
      g: a.f32('gate', [T, I]),
      u: a.f32('up', [T, I]),
      m: a.f32('swiglu', [T, I]),
      d: a.f32('down out', [T, H]),
      U,
    };
  }

  private makeBackwardScratch(): BackwardScratch {
    const { spec } = this;
    const T = this.tokens;
    const H = spec.hidden;
    const qd = spec.nHeads * spec.headDim;
    const kvd = spec.nKvHeads * spec.headDim;
    const I = spec.intermediate;
    const a = this.alloc;
    const G = this.rankScratch('G');
    return {
      dh: a.f32('dh', [T, H]),
      dhNext: a.f32('dh next', [T, H]),
      dh2: a.f32('dh mid', [T, H]),
      tmpH: a.f32('dh tmp', [T, H]),
      dn: a.f32('dn', [T, H]),
      dm: a.f32('dm', [T, I]),
      dg: a.f32('dgate', [T, I]),
      du: a.f32('dup', [T, I]),
      dAttn: a.f32('d attention out', [T, qd]),
      dq: a.f32('dq', [T, qd]),
      dk: a.f32('dk', [T, kvd]),
      dv: a.f32('dv', [T, kvd]),
      dqRaw: spec.qkNorm ? a.f32('dq before norm', [T, qd]) : null,
      dkRaw: spec.qkNorm ? a.f32('dk before norm', [T, kvd]) : null,
      delta: a.f32('attention delta', [spec.nHeads, T]),
      G,
    };
  }

  /** The LoRA group feeding projection `kind` of layer `l`, with views of its matrices. */
  private loraFor(l: number, kind: ProjectionKind) {
    const lora = this.model.lora;
    if (!lora) return null;
    const found = lora.layout.groupFor(l, kind);
    if (!found) return null;
    const { group, member } = found;
    const opt = lora.layout.optimizer;
    const view = (flat: Tensor, name: string) => {
      const s = opt.slot(name);
      return this.ctx.view(flat, name, s.shape, s.offset);
    };
    const m = group.members[member]!;
    return {
      group,
      first: member === 0,
      last: member === group.members.length - 1,
      A: view(lora.params, group.aName),
      B: view(lora.params, m.bName),
      dA: view(lora.grads, group.aName),
      dB: view(lora.grads, m.bName),
      scale: lora.layout.scale,
      rank: lora.layout.rank,
    };
  }

  private loraDims(M: number, inF: number, lo: { rank: number; scale: number }) {
    return { M, inF, rank: lo.rank, scale: lo.scale, dropout: this.dropoutP(), ...(this.loraScratch ? { scratch: this.loraScratch } : {}), ...(this.model.loraPanels ? { panel: true } : {}) };
  }

  private uFor(group: LoraGroup): Tensor {
    return (this.keptU?.[group.layer] ?? this.scratch.U).get(group.module)!;
  }

  /** U = dropout(x)·Aᵀ of the projection's adapter, by the first projection of its group (the others share it). */
  private async loraInputProduct(l: number, kind: ProjectionKind, x: Tensor): Promise<KernelDispatch[]> {
    const lo = this.loraFor(l, kind);
    if (!lo?.first) return [];
    if (this.recomputing && this.keptU) return []; // the forward's U is kept
    const p = this.model.weights.layers[l]!.proj[kind];
    const pass = await prepareLoraProduct(this.ctx, 'XA', { a: x, b: lo.A, c: this.uFor(lo.group) }, this.loraDims(this.tokens, p.in, lo));
    this.registerSeed(lo.group, pass);
    return [...pass.dispatches];
  }

  /** y = x·Wᵀ (+bias) (+ s·(x·Aᵀ)·Bᵀ), rows M. */
  private async linearForward(l: number, kind: ProjectionKind, x: Tensor, y: Tensor): Promise<KernelDispatch[]> {
    const ctx = this.ctx;
    const M = this.tokens;
    const layer = this.model.weights.layers[l]!;
    const p = layer.proj[kind];
    const out = await this.loraInputProduct(l, kind, x);
    const lo = this.loraFor(l, kind);
    if (this.int8 && p.kind === 'q4') {
      out.push(...(await this.int8Forward(l, kind, p.w, x, y)));
      if (lo) out.push(await prepareMatmul(ctx, this.uFor(lo.group), lo.B, y, { M, N: p.out, K: lo.rank }, { transB: true, accumulate: true, alpha: lo.scale }));
    } else if (lo && p.kind === 'q4') {
      // s·U·Bᵀ as more reduction steps of the 4-bit matmul: y is written once.
      out.push(...(await prepareQ4Matmul(ctx, x, p.w, y, M, { lora: { U: this.uFor(lo.group), B: lo.B, rank: lo.rank, scale: lo.scale } })));
    } else {
      out.push(...(await projectionForward(ctx, p, x, y, M)));
      if (lo) out.push(await prepareMatmul(ctx, this.uFor(lo.group), lo.B, y, { M, N: p.out, K: lo.rank }, { transB: true, accumulate: true, alpha: lo.scale }));
    }
    const bias = layer.bias[kind];
    if (bias) out.push(...(await prepareBiasAdd(ctx, y, bias, { rows: M, dim: p.out })));
    return out;
  }

  /** y = x·Wᵀ on the tensor cores; x is quantized once for the projections that share it (q/k/v, gate/up). */
  private async int8Forward(l: number, kind: ProjectionKind, w: Q4Weight, x: Tensor, y: Tensor): Promise<KernelDispatch[]> {
    const scratch = this.int8!;
    const out: KernelDispatch[] = [];
    const M = this.tokens;
    // With kept attention the recomputed q/k/v must equal the forward's bit for bit (the kept output and
    // lse were computed from those): they take the forward's levels.
    const asForward = !this.recomputing || (this.keptAttention !== null && (kind === 'q' || kind === 'k' || kind === 'v'));
    const residual = this.model.int8Residual.has(kind) && (asForward || this.model.int8RecomputeResidual);
    if (this.int8Holds?.x !== x || this.int8Holds.layer !== l || this.int8Holds.rows.levels !== (residual ? 2 : 1)) {
      const q = await prepareQuantizeRows(this.ctx, x, scratch, { rows: M, cols: w.in, residual });
      out.push(q.dispatch);
      this.int8Holds = { x, layer: l, rows: q.rows };
    }
    out.push(...(await prepareInt8Q4Matmul(this.ctx, this.int8Holds.rows, w, y, scratch)));
    return out;
  }

  /** dx (=, or +=) = dy·W: on the tensor cores when the plan has the int8 path, else the f32 kernels. */
  private async projectionBackward(p: Projection, dy: Tensor, dx: Tensor, accumulate: boolean): Promise<KernelDispatch[]> {
    if (!this.int8 || p.kind !== 'q4') return projectionBackward(this.ctx, p, dy, dx, this.tokens, accumulate);
    this.int8Holds = null; // the scratch now holds dy
    return prepareInt8Q4MatmulDx(this.ctx, dy, p.w, dx, this.tokens, this.int8, accumulate);
  }

  /** dx (=, or += with accumulate) = dy·W (+ s·G·A); LoRA grads dB += s·dyᵀ·U, dA += s·Gᵀ·x. */
  private async linearBackward(l: number, kind: ProjectionKind, x: Tensor, dy: Tensor, dx: Tensor, accumulate: boolean): Promise<KernelDispatch[]> {
    const ctx = this.ctx;
    const M = this.tokens;
    const p = this.model.weights.layers[l]!.proj[kind];
    const out: KernelDispatch[] = [];
    const lo = this.loraFor(l, kind);
    if (!lo) return this.projectionBackward(p, dy, dx, accumulate);
    const U = this.uFor(lo.group);
    const G = this.bwd!.G.get(lo.group.module)!;
    const dims = this.loraDims(M, p.in, lo);
    // G (+)= dy·B first (split-K: a rank-wide output over a long reduction), so that the last output of
    // the group can fold the adapter's dX term into its base dX kernel.
    out.push(...(await prepareLoraProduct(ctx, 'GB', { a: dy, b: lo.B, c: G }, { ...dims, out: p.out, accumulate: !lo.first })).dispatches);
    // dB += s·dyᵀ·U: lora.wgsl's split-K product (2.3× the matmul kernel's speed on this skinny shape on the H100).
    out.push(...(await prepareLoraProduct(ctx, 'DB', { a: dy, b: U, c: lo.dB }, { ...dims, out: p.out })).dispatches);
    // The adapter's dX term s·mask⊙(G·A) inside the f32 q4 dX kernel (dX written once; lora_dropout's mask
    // applied there too) instead of a separate pass that reads and rewrites dX.
    const fusedW = lo.last && p.kind === 'q4' && !this.int8 && q4DxCanFuseLora(p.w) ? p.w : null;
    if (fusedW) {
      const pass = await prepareLoraQ4Dx(ctx, fusedW, { dY: dy, G, A: lo.A, dX: dx }, { ...dims, accumulate });
      this.registerSeed(lo.group, pass);
      out.push(...pass.dispatches);
    } else out.push(...(await this.projectionBackward(p, dy, dx, accumulate)));
    if (lo.last) {
      const modes = fusedW ? (['DA'] as const) : (['DX', 'DA'] as const);
      for (const mode of modes) {
        const t = mode === 'DX' ? { a: G, b: lo.A, c: dx } : { a: G, b: x, c: lo.dA };
        const pass = await prepareLoraProduct(ctx, mode, t, dims);
        this.registerSeed(lo.group, pass);
        out.push(...pass.dispatches);
      }
    }
    return out;
  }

  private attentionShape() {
    const { spec } = this;
    return { batch: this.shape.batch, seq: this.shape.seq, nQHeads: spec.nHeads, nKvHeads: spec.nKvHeads, headDim: spec.headDim };
  }

  /** Layer ℓ's attention output and log-sum-exp: its own when the plan keeps them, else the shared scratch. */
  private attentionOf(l: number): { o: Tensor; lse: Tensor } {
    return this.keptAttention?.[l] ?? { o: this.scratch.attn!, lse: this.scratch.lse! };
  }

  private async layerForward(l: number): Promise<KernelDispatch[]> {
    const { ctx, spec } = this;
    const s = this.scratch;
    const T = this.tokens;
    const H = spec.hidden;
    const eps = spec.rmsNormEps;
    const w: LayerWeights = this.model.weights.layers[l]!;
    const h = this.hs[l]!;
    const out: KernelDispatch[] = [];
    out.push(...(await prepareRmsNormForward(ctx, h, w.attnNorm, s.n1, s.rstd1, { rows: T, dim: H, eps })));
    out.push(...(await this.linearForward(l, 'q', s.n1, s.qRaw ?? s.q)));
    out.push(...(await this.linearForward(l, 'k', s.n1, s.kRaw ?? s.k)));
    out.push(...(await this.linearForward(l, 'v', s.n1, s.v)));
    if (spec.qkNorm) {
      out.push(...(await prepareRmsNormForward(ctx, s.qRaw!, w.qNorm!, s.q, s.rstdQ!, { rows: T * spec.nHeads, dim: spec.headDim, eps })));
      out.push(...(await prepareRmsNormForward(ctx, s.kRaw!, w.kNorm!, s.k, s.rstdK!, { rows: T * spec.nKvHeads, dim: spec.headDim, eps })));
    }
    out.push(...(await prepareRope(ctx, s.q, this.positions, this.invFreq, { tokens: T, heads: spec.nHeads, headDim: spec.headDim })));
    out.push(...(await prepareRope(ctx, s.k, this.positions, this.invFreq, { tokens: T, heads: spec.nKvHeads, headDim: spec.headDim })));
    const att = this.attentionOf(l);
    // The recompute needs q, k, v (the attention backward reads them) but not the attention output when it was kept.
    if (!(this.recomputing && this.keptAttention)) {
      out.push(await prepareAttentionForward(ctx, { q: s.q, k: s.k, v: s.v, o: att.o, lse: att.lse, docIds: this.docIds, docSpans: this.docSpans }, this.attentionShape()));
    }
    out.push(...(await this.linearForward(l, 'o', att.o, s.a)));
    // h2 = h + attention out and its norm in one pass (h is kept: the backward reads it).
    out.push(...(await prepareRmsNormForward(ctx, h, w.mlpNorm, s.n2, s.rstd2, { rows: T, dim: H, eps }, { residualDelta: s.a, residualOut: s.h2 })));
    out.push(...(await this.linearForward(l, 'gate', s.n2, s.g)));
    out.push(...(await this.linearForward(l, 'up', s.n2, s.u)));
    out.push(...(await prepareSwigluForward(ctx, { gate: s.g, up: s.u }, s.m, { tokens: T, inter: spec.intermediate })));
    if (this.recomputing) {
      // The backward reads neither the down projection's output nor the layer's output (h_{ℓ+1} is saved and
      // its backward is done): the recompute stops at the down projection's adapter input product, which dB
      // reads. One intermediate×hidden matmul per layer less (the largest reduction of the layer).
      out.push(...(await this.loraInputProduct(l, 'down', s.m)));
      return out;
    }
    out.push(...(await this.linearForward(l, 'down', s.m, s.d)));
    out.push(...(await prepareAdd(ctx, s.h2, s.d, this.hs[l + 1]!)));
    return out;
  }

  /** Given bwd.dh = dL/dh_{ℓ+1}, leaves dL/dh_ℓ in bwd.dh (swapping buffers) and accumulates LoRA grads. */
  private async layerBackward(l: number): Promise<KernelDispatch[]> {
    const { ctx, spec } = this;
    const s = this.scratch;
    const b = this.bwd!;
    const T = this.tokens;
    const H = spec.hidden;
    const eps = spec.rmsNormEps;
    const w = this.model.weights.layers[l]!;
    const h = this.hs[l]!;
    const out: KernelDispatch[] = [];
    // MLP
    out.push(...(await this.linearBackward(l, 'down', s.m, b.dh, b.dm, false)));
    out.push(...(await prepareSwigluBackward(ctx, b.dm, { gate: s.g, up: s.u }, { dgate: b.dg, dup: b.du }, { tokens: T, inter: spec.intermediate })));
    out.push(...(await this.linearBackward(l, 'gate', s.n2, b.dg, b.dn, false)));
    out.push(...(await this.linearBackward(l, 'up', s.n2, b.du, b.dn, true)));
    out.push(...(await prepareRmsNormBackward(ctx, b.dn, s.h2, w.mlpNorm, s.rstd2, b.tmpH, { rows: T, dim: H, eps })));
    out.push(...(await prepareAdd(ctx, b.dh, b.tmpH, b.dh2)));
    // Attention
    const att = this.attentionOf(l);
    out.push(...(await this.linearBackward(l, 'o', att.o, b.dh2, b.dAttn, false)));
    out.push(
      ...(await prepareAttentionBackward(
        ctx,
        { q: s.q, k: s.k, v: s.v, o: att.o, lse: att.lse, docIds: this.docIds, docSpans: this.docSpans, dout: b.dAttn, delta: b.delta, dq: b.dq, dk: b.dk, dv: b.dv },
        this.attentionShape(),
      )),
    );
    out.push(...(await prepareRopeBackward(ctx, b.dq, this.positions, this.invFreq, { tokens: T, heads: spec.nHeads, headDim: spec.headDim })));
    out.push(...(await prepareRopeBackward(ctx, b.dk, this.positions, this.invFreq, { tokens: T, heads: spec.nKvHeads, headDim: spec.headDim })));
    let dq = b.dq;
    let dk = b.dk;
    if (spec.qkNorm) {
      out.push(...(await prepareRmsNormBackward(ctx, b.dq, s.qRaw!, w.qNorm!, s.rstdQ!, b.dqRaw!, { rows: T * spec.nHeads, dim: spec.headDim, eps })));
      out.push(...(await prepareRmsNormBackward(ctx, b.dk, s.kRaw!, w.kNorm!, s.rstdK!, b.dkRaw!, { rows: T * spec.nKvHeads, dim: spec.headDim, eps })));
      dq = b.dqRaw!;
      dk = b.dkRaw!;
    }
    out.push(...(await this.linearBackward(l, 'q', s.n1, dq, b.dn, false)));
    out.push(...(await this.linearBackward(l, 'k', s.n1, dk, b.dn, true)));
    out.push(...(await this.linearBackward(l, 'v', s.n1, b.dv, b.dn, true)));
    out.push(...(await prepareRmsNormBackward(ctx, b.dn, h, w.attnNorm, s.rstd1, b.tmpH, { rows: T, dim: H, eps })));
    out.push(...(await prepareAdd(ctx, b.dh2, b.tmpH, b.dhNext)));
    // The result is in dhNext: swap so the next (lower) layer reads it from dh.
    [b.dh, b.dhNext] = [b.dhNext, b.dh];
    return out;
  }
}

export async function projectionForward(ctx: GpuContext, p: Projection, x: Tensor, y: Tensor, M: number): Promise<KernelDispatch[]> {
  if (p.kind === 'q4') return prepareQ4Matmul(ctx, x, p.w, y, M);
  return [await prepareMatmul(ctx, x, p.w, y, { M, N: p.out, K: p.in }, { transB: true })];
}

async function projectionBackward(ctx: GpuContext, p: Projection, dy: Tensor, dx: Tensor, M: number, accumulate: boolean): Promise<KernelDispatch[]> {
  if (p.kind === 'q4') return prepareQ4MatmulDx(ctx, dy, p.w, dx, M, accumulate);
  return [await prepareMatmul(ctx, dy, p.w, dx, { M, N: p.in, K: p.out }, { accumulate })];
}
