/**
 * LoRA / QLoRA training over prepared token rows: micro-batches padded to one shape (one prepared plan),
 * gradient accumulation, AdamW with warmup + cosine/constant schedule and global grad-norm clipping.
 * A step is recorded as one submit per micro-batch plus one for the optimizer; the only readback is the
 * step's losses, after the step.
 */
import type { MatmulPrecision } from '../kernels/quant4-mma.ts';
import type { GpuContext } from '../gpu/context.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { AdamW, createOptimizerState, releaseOptimizerState, prepareZeroGrad, type OptimizerState } from '../kernels/adamw.ts';
import type { ModelSpec } from '../model/config.ts';
import { LoraLayout } from '../model/lora-layout.ts';
import { loraModules, writePeftAdapter, type LoraModule, type PeftLoraConfig } from '../model/peft.ts';
import { Transformer, type BatchInputs, type StepPlan } from '../model/transformer.ts';
import { countSupervised } from '../kernels/cross_entropy.ts';
import { longestRow } from '../../data/rows.ts';
import { EVAL_CE_CHUNK_TOKENS } from '../model/memory-plan.ts';
import type { BaseWeights } from '../model/base-weights.ts';
import { learningRate, type ScheduleKind } from './schedule.ts';
import { seededRandom } from '../random.ts';
import { memoryMomentStore, type MomentStore, type OptimizerOffload } from './moments.ts';
import type { KernelDispatch } from '../gpu/context.ts';

/** A prepared row (src/data/rows.ts TokenRow). */
export interface TrainRow {
  inputIds: Int32Array;
  labels: Int32Array;
  positionIds: Int32Array;
  documentIds: Int32Array;
  /** Where each packed document came from ("data.jsonl line 3"), for reports of a bad row; optional. */
  sources?: readonly string[];
}

export interface TrainConfig {
  loraRank: number;
  loraAlpha: number;
  loraDropout: number;
  /** LoRA targets (the family's module names); default all linear projections. */
  targets?: LoraModule[];
  lr: number;
  schedule: ScheduleKind;
  warmupRatio: number;
  epochs: number;
  /** Stop after this many optimizer steps (overrides epochs when smaller). */
  maxSteps?: number;
  microBatch: number;
  gradAccum: number;
  weightDecay: number;
  maxGradNorm: number;
  beta1: number;
  beta2: number;
  eps: number;
  seed: number;
  /** Where AdamW's moments live: on the GPU, in CPU memory, or on disk (streamed per chunk each step). */
  optimizerOffload?: OptimizerOffload;
  /**
   * The frozen 4-bit base's matmuls: int8 tensor cores where the GPU has them (the default: quant4_mma.wgsl,
   * its accuracy gate in docs/int8-matmul.md), else exact f32; 'f32' forces the exact kernels.
   */
  matmulPrecision?: MatmulPrecision;
  /**
   * Tokens per cross-entropy chunk (the logits of one chunk, tokens × vocab × 4 bytes, are the loss's
   * workspace). Default: as many as fit DEFAULT_CE_WORKSPACE_BYTES (~1000 of a 92k vocabulary); fewer save
   * GPU memory and cost speed (the lm_head products get few rows).
   */
  lossChunkTokens?: number;
  /**
   * Keep each layer's attention output for the backward: the recomputed forwards then skip attention, at
   * [tokens, heads·(headDim + 1)] f32 per layer (TransformerOptions.keepAttention). false: attention is
   * recomputed too, for the least memory. Unset: kept; a session run under a memory budget decides it
   * first (kept where the plan then fits: memory-plan.ts withAttentionChoice) and stores the choice.
   */
  keepAttention?: boolean;
}

export interface TrainerOptions {
  /** The moments' store for 'disk' offload (a file; an OPFS sync access handle in the browser). */
  momentStore?: (length: number) => MomentStore;
  /** Elements of params per streamed optimizer chunk (default 8M: 32 MiB of m plus 32 MiB of v). */
  offloadChunk?: number;
  /** Steps in a row with a non-finite loss or gradient (each skipped) before the run pauses (default 5). */
  nonFiniteLimit?: number;
  /** Held-out rows (the data split's eval rows): evalLoss() measures the adapter on them. */
  evalRows?: readonly TrainRow[];
}

/** The mean loss over the held-out rows and the supervised tokens it averages. */
export interface EvalLoss {
  loss: number;
  tokens: number;
}

/** Why a run paused by itself (the user's stop is not a pause reason). */
export interface TrainPause {
  reason: 'non-finite';
  /** What happened and what to change, for the user. */
  message: string;
  /** Optimizer step (1-based) of the last skipped step. */
  step: number;
  /** Rows' sources of the skipped steps in a row, when the rows carry them. */
  sources: string[];
}

/** One streamed range of the optimizer state and its prepared update. */
interface OffloadChunk {
  offset: number;
  length: number;
  update: KernelDispatch;
  /** Which of the two GPU slots carries it (chunks alternate, so neighbours do not wait on each other). */
  slot: OffloadSlot;
  /** Its own readback buffers (mappable host memory, not GPU memory): every chunk is mapped at once. */
  readM: GPUBuffer;
  readV: GPUBuffer;
  /** Its own upload buffers (mappable host memory too), filled from the store while micro-batches run. */
  upM: GPUBuffer;
  upV: GPUBuffer;
}

/**
 * Maps every buffer (all at once, each for reading or writing), runs `use`, and unmaps whatever got mapped,
 * also when a map or `use` fails (the first failure is thrown).
 */
async function withMapped(buffers: readonly GPUBuffer[], mode: GPUMapModeFlags | ((b: GPUBuffer) => GPUMapModeFlags), use: () => void): Promise<void> {
  const maps = await Promise.allSettled(buffers.map((b) => b.mapAsync(typeof mode === 'function' ? mode(b) : mode)));
  try {
    const failed = maps.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    use();
  } finally {
    for (const b of buffers) if (b.mapState === 'mapped') b.unmap();
  }
}

/** A chunk's GPU home while it is updated. */
interface OffloadSlot {
  m: Tensor;
  v: Tensor;
}

/** TrainConfig.matmulPrecision when unset: the tensor cores where the GPU has them (the Transformer falls back to f32 elsewhere). */
export const DEFAULT_MATMUL_PRECISION: MatmulPrecision = 'int8';

/** XTuner's QLoRA recipe for 1.8B models (internlm2_chat_1_8b_qlora_*_e3). */
export const DEFAULT_TRAIN_CONFIG: TrainConfig = {
  loraRank: 64,
  loraAlpha: 16,
  loraDropout: 0.1,
  lr: 2e-4,
  schedule: 'cosine',
  warmupRatio: 0.03,
  epochs: 3,
  microBatch: 1,
  gradAccum: 16,
  weightDecay: 0,
  maxGradNorm: 1,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  seed: 42,
};

export interface TrainProgress {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  etaSeconds: number;
  liveBytes: number;
  peakBytes: number;
  /** This step's loss or gradient was NaN/±∞: its update was skipped (loss is then NaN or ±∞). */
  skipped: boolean;
  /** Skipped steps so far in the run. */
  skippedSteps: number;
  /** Sources of this step's rows when it was skipped (empty when the rows carry none). */
  skippedSources?: string[];
}


/** PEFT's default init: A ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in), B = 0 (the adapter starts as a no-op). */
export function initLoraParams(layout: LoraLayout, seed: number): Float32Array {
  const flat = new Float32Array(layout.optimizer.total);
  const random = seededRandom(seed);
  for (const g of layout.groups) {
    const slot = layout.optimizer.slot(g.aName);
    const bound = 1 / Math.sqrt(g.in);
    for (let i = 0; i < slot.length; i++) flat[slot.offset + i] = (2 * random() - 1) * bound;
  }
  return flat;
}

/** Pads rows to [microBatch, seq]: padding tokens get id `padId`, label −100, document −1. */
export function makeBatch(rows: readonly TrainRow[], microBatch: number, seq: number, padId: number): BatchInputs & { labels: Int32Array; realTokens: number } {
  const T = microBatch * seq;
  const b = { inputIds: new Int32Array(T).fill(padId), positionIds: new Int32Array(T), documentIds: new Int32Array(T).fill(-1), labels: new Int32Array(T).fill(-100), realTokens: 0 };
  rows.forEach((r, i) => {
    const n = Math.min(seq, r.inputIds.length);
    b.inputIds.set(r.inputIds.subarray(0, n), i * seq);
    b.labels.set(r.labels.subarray(0, n), i * seq);
    b.positionIds.set(r.positionIds.subarray(0, n), i * seq);
    b.documentIds.set(r.documentIds.subarray(0, n), i * seq);
    b.realTokens += r.documentIds.subarray(0, n).reduce((a, d) => a + (d >= 0 ? 1 : 0), 0);
  });
  for (let i = 0; i < T; i++) if (b.documentIds[i]! < 0) b.positionIds[i] = 0;
  return b;
}

/** A resumable snapshot of a run (see Trainer.saveState; src/engine/share/checkpoint.ts stores it). */
export interface TrainerState {
  version: 1;
  /** Optimizer steps done. */
  step: number;
  /** Schedule position: the run's length and warmup. */
  totalSteps: number;
  warmupSteps: number;
  /** Data cursor: the epoch and the row position in its seeded order where the next step starts. */
  epoch: number;
  position: number;
  /** RNG: shuffles are seededRandom(seed·1000003 + epoch), so the seed and the epoch are the whole RNG state. */
  seed: number;
  config: TrainConfig;
  /** Steps whose update was skipped (non-finite): AdamW's own step count is step − skippedSteps. Absent = 0. */
  skippedSteps?: number;
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

export class Trainer {
  readonly layout: LoraLayout;
  readonly state: OptimizerState;
  readonly config: TrainConfig;
  private plan: StepPlan | null = null;
  /** The forward-only plan over the eval rows (built at the first evalLoss). */
  private evalPlan: StepPlan | null = null;
  private optimizer: AdamW | null = null;
  private stepLosses: Tensor | null = null;
  private moments: MomentStore | null = null;
  private offload: {
    chunks: OffloadChunk[];
    slots: OffloadSlot[];
    /** Whether the upload buffers hold the latest moments (false until filled, and after each step uses them). */
    filled: boolean;
    /**
     * Whether the store (memory or disk) lags the upload buffers: the drain copies the readbacks straight
     * into the upload buffers (the next step needs them there), and reading the moments (checkpoints) reads
     * those buffers; the store is written only by writeMoments. The disk store's file is scratch space
     * (zeroed when the run starts; resuming reads checkpoints), so writing it at every step bought nothing:
     * on the lent H100 that write (0.5 GB, 113 ms) put disk offload at +77% of a seq-512 step at
     * accumulation 1, against +9.6% for memory.
     */
    storeBehind: boolean;
  } | null = null;
  /**
   * The last offloaded optimizer step's readbacks into the upload buffers: prepared by the
   * step, started once the next step's micro-batches are submitted (so its host copies overlap that GPU
   * work), awaited before the next optimizer step or any read of the moments.
   */
  private drain: Promise<void> | null = null;
  private drainLater: (() => Promise<void>) | null = null;
  /**
   * Where the last offloaded optimizer step's host time went (ms): mapping the readbacks and the upload
   * buffers, copying one into the other (the drain, which runs while the next micro-batches do), and how
   * long that next optimizer step waited for it (including the GPU work it overlapped). For benchmarks.
   */
  readonly offloadTimes = { drainMap: 0, drainCopy: 0, waited: 0 };
  readonly seq: number;
  step = 0;
  /** Optimizer steps whose update was skipped because the loss or a gradient was not finite. */
  skippedSteps = 0;
  /** Set when the run paused by itself (K non-finite steps in a row); cleared when train() starts. */
  pause: TrainPause | null = null;

  constructor(
    readonly ctx: GpuContext,
    readonly weights: BaseWeights,
    readonly rows: readonly TrainRow[],
    config: Partial<TrainConfig> = {},
    readonly baseModelName: string | null = null,
    private readonly options: TrainerOptions = {},
  ) {
    this.config = { ...DEFAULT_TRAIN_CONFIG, ...config };
    const c = this.config;
    if (!(c.loraDropout >= 0 && c.loraDropout < 1)) throw new Error(`lora_dropout must be in [0, 1), got ${c.loraDropout}`);
    if (c.lossChunkTokens !== undefined && !(Number.isInteger(c.lossChunkTokens) && c.lossChunkTokens >= 1)) throw new Error(`loss chunk must be a whole number of tokens ≥ 1, got ${c.lossChunkTokens}`);
    if (rows.length === 0) throw new Error('no training rows');
    const spec = weights.spec;
    this.layout = new LoraLayout(spec, { r: c.loraRank, loraAlpha: c.loraAlpha, targetModules: c.targets ?? loraModules(spec.family), useRslora: false, layersToTransform: null });
    const offload = c.optimizerOffload ?? 'gpu';
    if (offload === 'disk' && !options.momentStore) throw new Error("optimizer offload 'disk' needs a file for the moments");
    this.state = createOptimizerState(ctx, this.layout.optimizer, { residentMoments: offload === 'gpu' });
    if (offload !== 'gpu') {
      const total = this.layout.optimizer.total;
      this.moments = offload === 'disk' ? options.momentStore!(total) : memoryMomentStore(total);
    }
    ctx.write(this.state.params, initLoraParams(this.layout, c.seed));
    this.seq = longestRow(rows);
  }

  get spec(): ModelSpec {
    return this.weights.spec;
  }

  /** The id that pads short rows (the model's pad token, else its first end-of-sequence token). */
  private get padId(): number {
    return this.spec.padTokenId ?? this.spec.eosTokenIds[0] ?? 0;
  }

  get stepsPerEpoch(): number {
    return Math.ceil(this.rows.length / (this.config.microBatch * this.config.gradAccum));
  }

  get totalSteps(): number {
    const all = this.stepsPerEpoch * this.config.epochs;
    return this.config.maxSteps ? Math.min(all, this.config.maxSteps) : all;
  }

  private async prepare(): Promise<void> {
    if (this.plan) return;
    const c = this.config;
    // Out of memory anywhere in here is a GpuOutOfMemoryError, and the half-built plan's buffers go back.
    try {
      await this.ctx.allocating(`the training step buffers (micro-batch ${c.microBatch} × ${this.seq} tokens)`, async () => {
        this.plan = await this.model(c.loraDropout).plan({ batch: c.microBatch, seq: this.seq }, 'train', c.lossChunkTokens ? { ceChunkTokens: c.lossChunkTokens } : {});
        this.stepLosses = this.ctx.tensor('step losses', [c.gradAccum]);
        // The AdamW kernel skips the update on the GPU when a loss or the grad norm is not finite.
        this.optimizer = await AdamW.create(this.ctx, this.state, { lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: c.weightDecay, maxGradNorm: c.maxGradNorm }, { guard: this.stepLosses });
        if (this.moments) await this.prepareOffload();
      });
    } catch (err) {
      // Their pool buffers were released by the scope: forget them so release() does not free them twice.
      this.plan = null;
      this.stepLosses = null;
      this.optimizer = null;
      this.offload = null;
      throw err;
    }
  }

  /** Splits the flat state into chunks at parameter boundaries and prepares each chunk's update. */
  private async prepareOffload(): Promise<void> {
    const { ctx } = this;
    // Two slots of half the chunk: the same GPU memory as one, and the transfers of neighbouring chunks overlap.
    const limit = Math.max(1, Math.floor((this.options.offloadChunk ?? 8 << 20) / 2));
    const spans: { offset: number; length: number }[] = [];
    const slots = this.layout.optimizer.slots;
    let start = 0;
    slots.forEach((slot, i) => {
      const end = i + 1 < slots.length ? slots[i + 1]!.offset : this.layout.optimizer.total;
      if (end - start > limit && slot.offset > start) {
        spans.push({ offset: start, length: slot.offset - start });
        start = slot.offset;
      }
    });
    spans.push({ offset: start, length: this.layout.optimizer.total - start });
    const most = Math.max(...spans.map((s) => s.length));
    const read = (label: string, elems: number) => ctx.device.createBuffer({ label, size: elems * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const upload = (label: string, elems: number) => ctx.device.createBuffer({ label, size: elems * 4, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC });
    const staging: OffloadSlot[] = [0, 1].map((i) => ({ m: ctx.tensor(`adamw m chunk ${i}`, [most]), v: ctx.tensor(`adamw v chunk ${i}`, [most]) }));
    const chunks: OffloadChunk[] = [];
    for (const [i, span] of spans.entries()) {
      const slot = staging[i % 2]!;
      const update = await this.optimizer!.prepareUpdate({ ...span, moments: { m: slot.m, v: slot.v, stateOffset: 0 }, zeroGrad: true });
      chunks.push({
        ...span,
        slot,
        update,
        readM: read(`adamw m readback ${span.offset}`, span.length),
        readV: read(`adamw v readback ${span.offset}`, span.length),
        upM: upload(`adamw m upload ${span.offset}`, span.length),
        upV: upload(`adamw v upload ${span.offset}`, span.length),
      });
    }
    this.offload = { chunks, slots: staging, filled: false, storeBehind: false };
  }

  /**
   * The store's moments into every chunk's upload buffers (mapped for writing, filled, unmapped). Why not
   * queue.writeBuffer at the optimizer step: its host copy (0.5 GB for 62.9M parameters) then ran while the
   * GPU waited, and the round trip cost as much at accumulation 16 as at 1 (+461 ms on a 2.4 s step).
   */
  private async fillUploads(): Promise<void> {
    const offload = this.offload!;
    await withMapped(offload.chunks.flatMap((c) => [c.upM, c.upV]), GPUMapMode.WRITE, () => {
      for (const c of offload.chunks) this.moments!.read(c.offset, c.length, new Float32Array(c.upM.getMappedRange()), new Float32Array(c.upV.getMappedRange()));
      offload.filled = true;
    });
  }

  /**
   * The optimizer step: the global grad norm, then the update (and zero-grad) of every parameter. With
   * offloaded moments each chunk's m and v go up, are updated, and come back: the same arithmetic, so the
   * three placements give bit-identical weights.
   */
  private async optimizerStep(resident: readonly KernelDispatch[]): Promise<void> {
    const { ctx } = this;
    if (!this.offload) {
      await ctx.run(resident, `optimizer step ${this.step}`);
      return;
    }
    const offload = this.offload;
    const { chunks } = offload;
    const waitFrom = performance.now();
    await this.settleMoments(); // the previous step's moments are in the upload buffers
    this.offloadTimes.waited = performance.now() - waitFrom;
    if (!offload.filled) await this.fillUploads(); // the first step, or moments restored from a checkpoint
    // The grad norm, then every chunk up, updated and copied to its own readback, in one submit (queue order
    // keeps a slot's next upload behind its previous update; no wait between the norm and the updates, so
    // the GPU goes from the last micro-batch straight into the transfers). The readbacks then drain into the
    // store, and the store into the upload buffers, while the next step's micro-batches run: that step needs
    // the moments only at its own optimizer step.
    const enc = ctx.device.createCommandEncoder({ label: `optimizer step ${this.step}, ${chunks.length} chunks` });
    ctx.encode(enc, this.optimizer!.normDispatches);
    for (const c of chunks) {
      const { slot } = c;
      enc.copyBufferToBuffer(c.upM, 0, slot.m.buffer, 0, c.length * 4);
      enc.copyBufferToBuffer(c.upV, 0, slot.v.buffer, 0, c.length * 4);
      ctx.encode(enc, [c.update]);
      enc.copyBufferToBuffer(slot.m.buffer, 0, c.readM, 0, c.length * 4);
      enc.copyBufferToBuffer(slot.v.buffer, 0, c.readV, 0, c.length * 4);
    }
    ctx.device.queue.submit([enc.finish()]);
    offload.filled = false;
    this.drainLater = async () => {
      // One host copy per moment: readback → upload buffer. Going through the store instead (readback →
      // store → upload) cost twice the copies, which at accumulation 1 outlasted the next micro-batch's GPU
      // work (lent H100, seq 512: +89–112 ms a step, +16.6 ms now).
      const t0 = performance.now();
      let t1 = t0;
      const reads = new Set(chunks.flatMap((c) => [c.readM, c.readV]));
      await withMapped(
        chunks.flatMap((c) => [c.readM, c.readV, c.upM, c.upV]),
        (b) => (reads.has(b) ? GPUMapMode.READ : GPUMapMode.WRITE),
        () => {
          t1 = performance.now();
          for (const c of chunks) {
            new Float32Array(c.upM.getMappedRange()).set(new Float32Array(c.readM.getMappedRange()));
            new Float32Array(c.upV.getMappedRange()).set(new Float32Array(c.readV.getMappedRange()));
          }
          offload.filled = true;
          offload.storeBehind = true;
        },
      );
      this.offloadTimes.drainMap = t1 - t0;
      this.offloadTimes.drainCopy = performance.now() - t1;
    };
  }

  /**
   * The moments as the upload buffers hold them (while the store lags, see storeBehind), into m and v. A
   * buffer mapped for writing shows its current contents, and only the host ever writes these (their one GPU
   * use is as a copy source).
   */
  private async readUploads(m: Float32Array, v: Float32Array): Promise<void> {
    const { chunks } = this.offload!;
    await withMapped(chunks.flatMap((c) => [c.upM, c.upV]), GPUMapMode.WRITE, () => {
      for (const c of chunks) {
        m.set(new Float32Array(c.upM.getMappedRange()), c.offset);
        v.set(new Float32Array(c.upV.getMappedRange()), c.offset);
      }
    });
  }

  /** Starts the prepared drain (see `drain`). */
  private startDrain(): void {
    if (this.drainLater) this.drain = this.drainLater();
    this.drainLater = null;
  }

  /** Waits for the last offloaded step's moments to reach the store (a no-op without offload). */
  private async settleMoments(): Promise<void> {
    this.startDrain();
    const d = this.drain;
    this.drain = null;
    await d;
  }

  /** Row order of an epoch: a seeded shuffle, different each epoch, the same for the same seed. */
  epochOrder(epoch: number): number[] {
    const order = this.rows.map((_, i) => i);
    const random = seededRandom(this.config.seed * 1000003 + epoch);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    return order;
  }

  /**
   * Runs optimizer steps until done (or `until` returns true), reporting each step through onStep;
   * `afterStep` is awaited between steps (evaluation prompts, checkpoints) and is not timed.
   */
  async train(onStep?: (p: TrainProgress) => void, until?: () => boolean, afterStep?: (p: TrainProgress) => Promise<void>): Promise<void> {
    await this.prepare();
    const { ctx, config: c } = this;
    const plan = this.plan!;
    const opt = this.optimizer!;
    const total = this.totalSteps;
    const warmupSteps = Math.round(c.warmupRatio * total);
    const zero = await prepareZeroGrad(ctx, this.state.grads, 0, this.layout.optimizer.total);
    const update = this.offload ? [] : await opt.stepDispatches({ zeroGrad: true });
    const perStep = c.microBatch * c.gradAccum;
    const t0 = performance.now();
    const firstStep = this.step; // a resumed run's ETA counts only the steps timed here
    let excluded = 0; // ms spent in afterStep (evaluation), left out of tokens/s and ETA
    let tokens = 0;
    if (this.step === 0) await ctx.run([zero], 'zero grads');
    const nonFiniteLimit = Math.max(1, this.options.nonFiniteLimit ?? 5);
    let inARow: { step: number; sources: string[] }[] = [];
    this.pause = null;
    while (this.step < total && !until?.()) {
      const epoch = Math.floor(this.step / this.stepsPerEpoch);
      const order = this.epochOrder(epoch);
      const first = (this.step % this.stepsPerEpoch) * perStep;
      const microBatches = Math.min(c.gradAccum, Math.ceil((order.length - first) / c.microBatch));
      for (let a = 0; a < microBatches; a++) {
        const idx = order.slice(first + a * c.microBatch, first + (a + 1) * c.microBatch);
        const batch = makeBatch(idx.map((i) => this.rows[i]!), c.microBatch, this.seq, this.padId);
        tokens += batch.realTokens;
        // Each micro-batch's mean loss carries weight 1/microBatches in the accumulated gradient.
        plan.setBatch(batch, microBatches);
        plan.setDropoutSeed(this.config.seed ^ Math.imul(this.step * 64 + a + 1, 0x2c1b3c6d));
        const enc = ctx.device.createCommandEncoder({ label: `step ${this.step + 1} micro-batch ${a}` });
        // Slots past this step's micro-batches must not keep an earlier step's (maybe non-finite) loss.
        if (a === 0) enc.clearBuffer(this.stepLosses!.buffer);
        plan.encode(enc);
        enc.copyBufferToBuffer(plan.loss!.buffer, 0, this.stepLosses!.buffer, a * 4, 4);
        ctx.device.queue.submit([enc.finish()]);
      }
      this.startDrain(); // the previous optimizer step's moments go into the store while these run
      this.step++;
      const lr = learningRate({ kind: c.schedule, lr: c.lr, totalSteps: total, warmupSteps }, this.step);
      // AdamW counts only the updates it applied (as torch's GradScaler skipping optimizer.step()).
      opt.setStep(this.step - this.skippedSteps, lr);
      await this.optimizerStep(update);
      const losses = await ctx.read(this.stepLosses!);
      const gradNorm = (await ctx.read(opt.gradNorm))[0]!;
      let loss = 0; // the losses hold mean/microBatches each: their sum is the step's mean loss
      for (let i = 0; i < microBatches; i++) loss += losses[i]!;
      const skipped = !AdamW.isFiniteStep(gradNorm, losses);
      let skippedSources: string[] | undefined;
      if (skipped) {
        this.skippedSteps++;
        skippedSources = [];
        for (let i = first; i < first + microBatches * c.microBatch && i < order.length; i++) skippedSources.push(...(this.rows[order[i]!]!.sources ?? []));
        inARow.push({ step: this.step, sources: skippedSources });
      } else {
        inARow = [];
      }
      const elapsed = (performance.now() - t0 - excluded) / 1000;
      const progress: TrainProgress = {
        step: this.step,
        totalSteps: total,
        epoch,
        loss,
        lr,
        gradNorm,
        tokensPerSecond: tokens / elapsed,
        etaSeconds: (elapsed / (this.step - firstStep)) * (total - this.step),
        liveBytes: ctx.pool.liveBytes,
        peakBytes: ctx.pool.peakBytes,
        skipped,
        skippedSteps: this.skippedSteps,
        ...(skippedSources ? { skippedSources } : {}),
      };
      onStep?.(progress);
      if (inARow.length >= nonFiniteLimit) {
        this.pause = nonFinitePause(inARow, lr, c.lr);
        break;
      }
      if (afterStep) {
        const pause = performance.now();
        await afterStep(progress);
        excluded += performance.now() - pause;
      }
    }
    await this.settleMoments(); // a finished, paused or stopped run leaves its moments complete in the store
  }

  /** The adapter as PEFT saves it (adapter_config.json text + adapter_model.safetensors bytes). */
  async exportPeft(): Promise<{ adapterConfigJson: string; adapterSafetensors: Uint8Array }> {
    const params = await this.ctx.read(this.state.params);
    const c = this.config;
    const peft: PeftLoraConfig = { r: c.loraRank, loraAlpha: c.loraAlpha, loraDropout: c.loraDropout, targetModules: this.layout.config.targetModules, baseModelNameOrPath: this.baseModelName };
    return writePeftAdapter(this.spec, peft, this.layout.unpackPeft(params));
  }

  /**
   * Everything a resumed run needs to continue bit for bit: LoRA params, AdamW moments, the step (which
   * fixes the schedule position, the epoch and the cursor in that epoch's seeded shuffle) and the config.
   */
  async saveState(): Promise<TrainerState> {
    const c = this.config;
    const perEpoch = this.stepsPerEpoch;
    return {
      version: 1,
      step: this.step,
      totalSteps: this.totalSteps,
      warmupSteps: Math.round(c.warmupRatio * this.totalSteps),
      epoch: Math.floor(this.step / perEpoch),
      position: (this.step % perEpoch) * c.microBatch * c.gradAccum,
      seed: c.seed,
      config: { ...c },
      skippedSteps: this.skippedSteps,
      params: await this.ctx.read(this.state.params),
      ...(await this.readMoments()),
    };
  }

  /** The model over this trainer's adapter (the step plan with the run's dropout, the eval plan without). */
  private model(dropout: number): Transformer {
    const c = this.config;
    return new Transformer(this.ctx, this.weights, { layout: this.layout, params: this.state.params, grads: this.state.grads, dropout }, { matmulPrecision: c.matmulPrecision ?? DEFAULT_MATMUL_PRECISION, keepAttention: c.keepAttention });
  }

  /** Whether there are held-out rows to measure (TrainerOptions.evalRows). */
  get hasEvalRows(): boolean {
    return (this.options.evalRows?.length ?? 0) > 0;
  }

  /** The longest held-out row (0 without): the eval plan's length, for the memory plan. */
  get evalSeq(): number {
    return longestRow(this.options.evalRows ?? []);
  }

  /**
   * The adapter's mean loss on the held-out rows: every supervised token weighs the same (each row's mean
   * is weighted by its token count), no dropout, no gradient — HF's eval_loss up to that weighting.
   * Null without eval rows. Reads back one number per row; the caller leaves it out of tokens/s.
   */
  async evalLoss(): Promise<EvalLoss | null> {
    const rows = this.options.evalRows;
    if (!rows?.length) return null;
    const { ctx, config: c } = this;
    // One row at a time with short loss chunks: the plan sits beside the step's buffers for the whole run
    // (memory-plan.ts counts it), and evaluation is rare enough that its speed hardly matters.
    const seq = this.evalSeq;
    if (!this.evalPlan) {
      await ctx.allocating(`the evaluation-loss buffers (one row of ${seq} tokens)`, async () => {
        this.evalPlan = await this.model(0).plan({ batch: 1, seq }, 'loss', { ceChunkTokens: Math.min(EVAL_CE_CHUNK_TOKENS, c.lossChunkTokens ?? Infinity) });
      });
    }
    const plan = this.evalPlan!;
    let sum = 0;
    let tokens = 0;
    for (const [i, row] of rows.entries()) {
      const batch = makeBatch([row], 1, seq, this.padId);
      const n = countSupervised(batch.labels, seq, this.spec.vocabSize);
      if (n === 0) continue; // nothing to score (a row whose answer was cut off): no 0/0
      plan.setBatch(batch);
      const enc = ctx.device.createCommandEncoder({ label: `eval loss row ${i}` });
      plan.encode(enc);
      ctx.device.queue.submit([enc.finish()]);
      const loss = (await ctx.read(plan.loss!))[0]!;
      sum += loss * n;
      tokens += n;
    }
    return { loss: tokens > 0 ? sum / tokens : Number.NaN, tokens };
  }

  /** Restores saveState()'s output into this trainer (same model, rows and config). */
  loadState(s: TrainerState): void {
    if (this.drain || this.drainLater) throw new Error('loadState: an optimizer step is still writing its moments (await train() first)');
    const n = this.layout.optimizer.total;
    if (s.params.length !== n || s.m.length !== n || s.v.length !== n) throw new Error(`loadState: the checkpoint holds ${s.params.length} LoRA values; this run's layout has ${n} (different rank, targets or model)`);
    for (const k of Object.keys(this.config) as (keyof TrainConfig)[]) {
      if (JSON.stringify(this.config[k]) !== JSON.stringify(s.config[k])) throw new Error(`loadState: the checkpoint was trained with ${k} = ${JSON.stringify(s.config[k])}, this run has ${JSON.stringify(this.config[k])}`);
    }
    if (s.totalSteps !== this.totalSteps) throw new Error(`loadState: the checkpoint's run has ${s.totalSteps} steps, this one ${this.totalSteps} (different data?)`);
    this.ctx.write(this.state.params, s.params);
    this.writeMoments(s.m, s.v);
    this.ctx.write(this.state.grads, new Float32Array(n));
    this.step = s.step;
    this.skippedSteps = s.skippedSteps ?? 0;
  }

  /** AdamW's moments wherever they live (GPU, or the offload store between steps). */
  private async readMoments(): Promise<{ m: Float32Array; v: Float32Array }> {
    if (this.state.m && this.state.v) return { m: await this.ctx.read(this.state.m), v: await this.ctx.read(this.state.v) };
    await this.settleMoments();
    const n = this.layout.optimizer.total;
    const moments = { m: new Float32Array(n), v: new Float32Array(n) };
    if (this.offload?.storeBehind) await this.readUploads(moments.m, moments.v);
    else this.moments!.read(0, n, moments.m, moments.v);
    return moments;
  }

  private writeMoments(m: Float32Array, v: Float32Array): void {
    if (this.state.m && this.state.v) {
      this.ctx.write(this.state.m, m);
      this.ctx.write(this.state.v, v);
    } else {
      this.moments!.write(0, m, v);
      if (this.offload) {
        this.offload.filled = false; // the upload buffers hold the moments replaced here
        this.offload.storeBehind = false;
      }
    }
  }

  release(): void {
    // A step still draining (train() was not awaited) loses its readbacks with the buffers: nothing to report.
    this.drain?.catch(() => {});
    this.drain = null;
    this.drainLater = null;
    this.plan?.release();
    this.evalPlan?.release();
    this.evalPlan = null;
    this.optimizer?.release();
    if (this.stepLosses) this.ctx.release(this.stepLosses);
    if (this.offload) {
      for (const slot of this.offload.slots) {
        this.ctx.release(slot.m);
        this.ctx.release(slot.v);
      }
      for (const c of this.offload.chunks) for (const b of [c.readM, c.readV, c.upM, c.upV]) b.destroy();
    }
    this.moments?.close();
    releaseOptimizerState(this.ctx, this.state);
  }
}

/**
 * The explanation of K non-finite steps in a row. A row present in every one of them is named as the
 * likely culprit; otherwise (different rows each step) the weights have diverged: the learning rate.
 */
export function nonFinitePause(steps: readonly { step: number; sources: readonly string[] }[], lr: number, peakLr: number): TrainPause {
  const last = steps[steps.length - 1]!;
  const common = steps.slice(1).reduce((acc, s) => acc.filter((x) => s.sources.includes(x)), [...new Set(steps[0]!.sources)]);
  const all = [...new Set(steps.flatMap((s) => s.sources))];
  const head = `training paused: ${steps.length} steps in a row (${steps[0]!.step}–${last.step}) had a loss or gradient that is not a finite number (NaN or ∞); their updates were skipped, so the adapter is as it was before step ${steps[0]!.step}.`;
  let message: string;
  if (common.length > 0 && common.length < all.length) {
    message = `${head} The same data row was in every one of them: ${common.join('; ')}. Check or remove that row and resume.`;
  } else {
    const rows = all.length ? ` Rows of those steps: ${all.slice(0, 8).join('; ')}${all.length > 8 ? ` and ${all.length - 8} more` : ''}.` : '';
    message = `${head} The learning rate is probably too high (${lr.toPrecision(3)} at this step, peak ${peakLr.toPrecision(3)}): lower it (10× is a good first try) or clip gradients harder, and resume.${rows}`;
  }
  return { reason: 'non-finite', message, step: last.step, sources: all };
}
