/**
 * Text generation with a KV cache on the GPU, over a model's base weights (f32 or 4-bit) and an optional
 * unmerged LoRA adapter that can be swapped (or removed) without touching the base.
 *
 * Passes (each prepared once, lazily, and re-encoded for every use; shapes are fixed per pass, per-token
 * values go through uniform/storage writes):
 *   - prefill: the prompt from an empty cache, in power-of-two buckets of rows (the tail of a bucket is
 *     padding that only ever sits after the real tokens, so causality keeps it out of their results):
 *     flash-attention forward, K/V rows copied into the cache.
 *   - append: CHUNK new tokens attending to the cache (a follow-up turn reuses the cached conversation):
 *     the decode attention with nNew ≤ CHUNK.
 *   - decode: one token; its id is read from the GPU buffer the sampler wrote. All of one token's work —
 *     embedding → layers (decode attention over the cache) → final norm → last-position logits →
 *     sampling — is one command buffer, and only the chosen id (4 bytes) comes back. The next token's
 *     command buffer is submitted before that id is read (one step of lookahead), so the CPU records
 *     while the GPU runs; a token produced after a stop is discarded.
 * Per layer a pass is two compute passes: [norm, q/k/v (+LoRA, bias, qk-norm), rope] then, after the
 * K/V rows are copied into the cache at their positions (copyBufferToBuffer, offsets set when the
 * command buffer is recorded), [attention, o, residual, norm, gate/up (+LoRA), swiglu, down, residual].
 */
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { prepareAttentionDecode, prepareAttentionForward, type AttentionDecode } from '../kernels/attention.ts';
import { prepareAdd, prepareBiasAdd } from '../kernels/elementwise.ts';
import { prepareEmbeddingForward } from '../kernels/embedding.ts';
import { prepareMatmul } from '../kernels/matmul.ts';
import { prepareQ4GemvSwiglu, prepareQ4Matmul, q4GemvSwigluFits } from '../kernels/quant4.ts';
import { prepareRmsNormForward } from '../kernels/rmsnorm.ts';
import { prepareRope, uploadInvFreq } from '../kernels/rope.ts';
import { prepareHeadLogits, prepareSampler, type PreparedSampler } from '../kernels/sampling.ts';
import { prepareSwigluForward } from '../kernels/swiglu.ts';
import { prepareLmHeadLogits } from '../kernels/cross_entropy.ts';
import type { BaseWeights, ProjectionKind } from '../model/base-weights.ts';
import { ropeInvFreq, type ModelSpec } from '../model/config.ts';
import { projectionForward, type LoraRuntime, type Transformer } from '../model/transformer.ts';
import { DEFAULT_SETTINGS, validateSettings, type FinishReason, type GenerationResult, type GenerationSettings } from './settings.ts';

export interface GeneratorOptions {
  /** KV-cache rows: prompt + reply tokens the conversation can hold. */
  maxTokens: number;
  lora?: LoraRuntime | null;
  /** Largest prefill bucket (rows of one flash-attention prefill pass); default min(maxTokens, 2048). */
  maxPrefill?: number;
  /** New tokens per append pass (a follow-up turn); default 16. */
  appendChunk?: number;
}

/** Called with each new token as it is produced; return true to stop (stop strings, a UI limit). */
export type TokenCallback = (id: number, index: number) => boolean | void;

type Segment = { dispatches: KernelDispatch[] } | { copy: (enc: GPUCommandEncoder, pos0: number, n: number) => void };

interface Pass {
  rows: number;
  kind: 'prefill' | 'cache';
  ids: Tensor;
  positions: Tensor;
  /** The residual stream [rows, H]; after the layers, the final hidden state (before the final norm). */
  h: Tensor;
  segments: Segment[];
  /** Decode attention per layer (cache passes): setLength before each use. */
  attn: AttentionDecode[];
  owned: Tensor[];
}

/** Allocates tensors for one pass and remembers them for release. */
function allocator(ctx: GpuContext, owned: Tensor[]) {
  return {
    f32: (label: string, shape: number[]) => {
      const t = ctx.tensor(label, shape);
      owned.push(t);
      return t;
    },
    i32: (label: string, shape: number[]) => {
      const t = ctx.tensor(label, shape, 'i32');
      owned.push(t);
      return t;
    },
  };
}

export class Generator {
  readonly spec: ModelSpec;
  readonly maxTokens: number;
  readonly maxPrefill: number;
  readonly appendChunk: number;
  private loraRt: LoraRuntime | null;
  private readonly kCache: Tensor[] = [];
  private readonly vCache: Tensor[] = [];
  private invFreq!: Tensor;
  /** Token ids whose K/V rows are in the cache, in order. */
  private cached: number[] = [];
  /** The adapter weights' version the cache was computed with (useAdapter); null: not tracked (setLora). */
  private cacheVersion: number | null = null;
  private prefillPasses = new Map<number, Pass>();
  private appendPass: Pass | null = null;
  private decodePass: Pass | null = null;
  // The head: final norm of one hidden row, logits, sampling.
  private headIn!: Tensor;
  private headNormed!: Tensor;
  private headRstd!: Tensor;
  private logitsT!: Tensor;
  private headDispatches: KernelDispatch[] = [];
  private headRelease: (() => void) | null = null;
  private sampler!: PreparedSampler;
  private staging: GPUBuffer[] = [];
  private busy = false;

  private constructor(
    readonly ctx: GpuContext,
    readonly weights: BaseWeights,
    opts: GeneratorOptions,
  ) {
    this.spec = weights.spec;
    this.maxTokens = opts.maxTokens;
    this.maxPrefill = Math.min(opts.maxPrefill ?? 2048, opts.maxTokens);
    this.appendChunk = Math.min(opts.appendChunk ?? 16, opts.maxTokens);
    this.loraRt = opts.lora ?? null;
  }

  static async create(ctx: GpuContext, weights: BaseWeights, opts: GeneratorOptions): Promise<Generator> {
    if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 2) throw new Error(`generator: maxTokens must be an integer ≥ 2, got ${opts.maxTokens}`);
    const g = new Generator(ctx, weights, opts);
    await g.init();
    return g;
  }

  /** A generator over a Transformer's weights and LoRA. */
  static forModel(model: Transformer, opts: Omit<GeneratorOptions, 'lora'>): Promise<Generator> {
    return Generator.create(model.ctx, model.weights, { ...opts, lora: model.lora });
  }

  /**
   * Rows of each layer's K/V cache. A cache pass writes all its rows at their positions (row = position), the
   * padding rows of a short append too: the rows past maxTokens take them, never a valid row.
   */
  private get cacheRows(): number {
    return this.maxTokens + this.appendChunk;
  }

  private async init(): Promise<void> {
    const { ctx, spec } = this;
    for (let l = 0; l < spec.layers; l++) {
      this.kCache.push(ctx.tensor(`k cache ${l}`, [this.cacheRows, spec.nKvHeads, spec.headDim]));
      this.vCache.push(ctx.tensor(`v cache ${l}`, [this.cacheRows, spec.nKvHeads, spec.headDim]));
    }
    // Dynamic NTK scaling is evaluated at the model's own maximum length (exact for contexts up to it).
    this.invFreq = uploadInvFreq(ctx, ropeInvFreq(spec, 0), 'generate rope inv_freq');
    const H = spec.hidden;
    const V = spec.vocabSize;
    this.headIn = ctx.tensor('head input', [1, H]);
    this.headNormed = ctx.tensor('head normed', [1, H]);
    this.headRstd = ctx.tensor('head rstd', [1]);
    this.logitsT = ctx.tensor('next-token logits', [1, V]);
    this.headDispatches = [...(await prepareRmsNormForward(ctx, this.headIn, this.weights.finalNorm, this.headNormed, this.headRstd, { rows: 1, dim: H, eps: spec.rmsNormEps }))];
    if (H % 4 === 0) {
      this.headDispatches.push(...(await prepareHeadLogits(ctx, this.headNormed, this.weights.lmHead, this.logitsT, H)));
    } else {
      const p = await prepareLmHeadLogits(ctx, { hidden: this.headNormed, lmHead: this.weights.lmHead.map((b) => b.tensor), out: this.logitsT }, { rows: 1, hidden: H, firstRow: 0, rowStride: 1 });
      this.headDispatches.push(...p.dispatches);
      this.headRelease = p.release;
    }
    this.sampler = await prepareSampler(ctx, this.logitsT, V);
    for (let i = 0; i < 2; i++) this.staging.push(ctx.device.createBuffer({ label: `sampled id readback ${i}`, size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }));
  }

  get lora(): LoraRuntime | null {
    return this.loraRt;
  }

  /**
   * Switches the adapter (or to the base model with null). The base weights stay; the passes are
   * rebuilt on next use (pipelines are cached) and the KV cache is emptied (its keys depend on the adapter).
   */
  setLora(lora: LoraRuntime | null): void {
    this.assertIdle();
    this.releasePasses();
    this.loraRt = lora;
    this.cached = [];
    this.cacheVersion = null;
  }

  /**
   * Makes `lora` at weights version `version` the adapter in effect, keeping the KV cache when it was
   * computed with exactly these (the same parameter buffer and layout, the same version): a follow-up turn
   * then prefills only its new tokens. Another adapter rebuilds the passes and empties the cache; the same
   * adapter with new weights (a training step, a loaded checkpoint) keeps the passes — they read the
   * parameter buffer on every use — and empties the cache. The caller bumps `version` whenever the
   * adapter's weights change. Returns whether the cache was kept.
   */
  useAdapter(lora: LoraRuntime | null, version: number): boolean {
    this.assertIdle();
    const cur = this.loraRt;
    const same = cur === lora || (cur !== null && lora !== null && cur.params === lora.params && cur.layout === lora.layout);
    if (!same) this.setLora(lora);
    else this.loraRt = lora;
    const kept = same && this.cacheVersion === version;
    if (!kept) this.cached = [];
    this.cacheVersion = version;
    return kept;
  }

  /** Tokens whose keys and values are in the cache. */
  get cachedTokens(): readonly number[] {
    return this.cached;
  }

  /** Forgets the cached conversation. */
  reset(): void {
    this.cached = [];
  }

  /** The last computed next-token logits [vocab] (after feed, decodeOne or a generation step). */
  async readLogits(): Promise<Float32Array> {
    return this.ctx.read(this.logitsT);
  }

  /** Tokens sampled since the last reset, and how many of them took the exact general path (benchmarks). */
  async samplingPathCounts(): Promise<{ tokens: number; general: number }> {
    const st = await this.ctx.read(this.sampler.state, 'u32');
    return { tokens: st[0]!, general: st[2]! };
  }

  /** The sampler's id buffer: the id the next decode step embeds (tests and tools write it). */
  get nextIdTensor(): Tensor {
    return this.sampler.outId;
  }

  // ---- building passes ------------------------------------------------------------------------------

  private loraFor(l: number, kind: ProjectionKind) {
    const lora = this.loraRt;
    if (!lora) return null;
    const found = lora.layout.groupFor(l, kind);
    if (!found) return null;
    const { group, member } = found;
    const opt = lora.layout.optimizer;
    const view = (name: string) => {
      const s = opt.slot(name);
      return this.ctx.view(lora.params, name, s.shape, s.offset);
    };
    return { group, first: member === 0, A: view(group.aName), B: view(group.members[member]!.bName), scale: lora.layout.scale, rank: lora.layout.rank };
  }

  private async buildPass(rows: number, kind: 'prefill' | 'cache'): Promise<Pass> {
    const { ctx, spec } = this;
    const M = rows;
    const H = spec.hidden;
    const qd = spec.nHeads * spec.headDim;
    const kvd = spec.nKvHeads * spec.headDim;
    const I = spec.intermediate;
    const eps = spec.rmsNormEps;
    const owned: Tensor[] = [];
    const a = allocator(ctx, owned);
    const decodeOne = kind === 'cache' && M === 1;
    const ids = decodeOne ? this.sampler.outId : a.i32(`${kind} ids`, [M]);
    const positions = a.i32(`${kind} positions`, [M]);
    const h = decodeOne ? this.headIn : a.f32(`${kind} h`, [M, H]);
    const n1 = a.f32('n1', [M, H]);
    const rstd = a.f32('rstd', [M * Math.max(1, spec.nHeads)]);
    const qRaw = spec.qkNorm ? a.f32('q before norm', [M, qd]) : null;
    const kRaw = spec.qkNorm ? a.f32('k before norm', [M, kvd]) : null;
    const q = a.f32('q', [M, qd]);
    const k = a.f32('k', [M, kvd]);
    const v = a.f32('v', [M, kvd]);
    const attnOut = a.f32('attention out', [M, qd]);
    const lse = kind === 'prefill' ? a.f32('lse', [spec.nHeads, M]) : null;
    const ao = a.f32('o proj out', [M, H]);
    const h2 = a.f32('h mid', [M, H]);
    const n2 = a.f32('n2', [M, H]);
    const g = a.f32('gate', [M, I]);
    const u = a.f32('up', [M, I]);
    const m = a.f32('swiglu', [M, I]);
    const d = a.f32('down out', [M, H]);
    const U = new Map<string, Tensor>();
    const lora = this.loraRt;
    if (lora) for (const grp of lora.layout.groups) if (!U.has(grp.module)) U.set(grp.module, a.f32(`U ${grp.module}`, [M, lora.layout.rank]));

    const linear = async (l: number, pk: ProjectionKind, x: Tensor, y: Tensor): Promise<KernelDispatch[]> => {
      const layer = this.weights.layers[l]!;
      const p = layer.proj[pk];
      const out: KernelDispatch[] = [];
      const lo = this.loraFor(l, pk);
      const Ut = lo ? U.get(lo.group.module)! : null;
      if (lo?.first) {
        // U = x·Aᵀ: for one row a GEMV (rank outputs, each a long dot product shared by a workgroup's lanes).
        if (M === 1 && p.in % 4 === 0) out.push(...(await prepareHeadLogits(ctx, x, [{ tensor: lo.A, row0: 0, rows: lo.rank }], Ut!, p.in)));
        else out.push(await prepareMatmul(ctx, x, lo.A, Ut!, { M, N: lo.rank, K: p.in }, { transB: true }));
      }
      if (lo && p.kind === 'q4') {
        // y = x·Wᵀ + s·U·Bᵀ in one dispatch per row block (the 4-bit kernels' LoRA epilogue).
        out.push(...(await prepareQ4Matmul(ctx, x, p.w, y, M, { lora: { U: Ut!, B: lo.B, rank: lo.rank, scale: lo.scale } })));
      } else {
        out.push(...(await projectionForward(ctx, p, x, y, M)));
        if (lo) out.push(await prepareMatmul(ctx, Ut!, lo.B, y, { M, N: p.out, K: lo.rank }, { transB: true, accumulate: true, alpha: lo.scale }));
      }
      const bias = layer.bias[pk];
      if (bias) out.push(...(await prepareBiasAdd(ctx, y, bias, { rows: M, dim: p.out })));
      return out;
    };

    const segments: Segment[] = [];
    const emb: KernelDispatch[] = [];
    for (const b of this.weights.embed) emb.push(...(await prepareEmbeddingForward(ctx, ids, b.tensor, h, { tokens: M, hidden: H, vocab: spec.vocabSize }, { rowOffset: b.row0, rowCount: b.rows })));
    segments.push({ dispatches: emb });
    const attn: AttentionDecode[] = [];
    for (let l = 0; l < spec.layers; l++) {
      const w = this.weights.layers[l]!;
      const pre: KernelDispatch[] = [];
      // The previous layer's closing residual add (h = h2 + d) fused into this layer's first norm: decode is
      // dispatch-bound, and each fused pair is one dispatch fewer per token.
      const closing = l > 0 ? { residualDelta: d, residualOut: h } : {};
      pre.push(...(await prepareRmsNormForward(ctx, l > 0 ? h2 : h, w.attnNorm, n1, rstd, { rows: M, dim: H, eps }, closing)));
      pre.push(...(await linear(l, 'q', n1, qRaw ?? q)));
      pre.push(...(await linear(l, 'k', n1, kRaw ?? k)));
      pre.push(...(await linear(l, 'v', n1, v)));
      if (spec.qkNorm) {
        pre.push(...(await prepareRmsNormForward(ctx, qRaw!, w.qNorm!, q, rstd, { rows: M * spec.nHeads, dim: spec.headDim, eps })));
        pre.push(...(await prepareRmsNormForward(ctx, kRaw!, w.kNorm!, k, rstd, { rows: M * spec.nKvHeads, dim: spec.headDim, eps })));
      }
      pre.push(...(await prepareRope(ctx, q, positions, this.invFreq, { tokens: M, heads: spec.nHeads, headDim: spec.headDim })));
      const kc = this.kCache[l]!;
      const vc = this.vCache[l]!;
      if (kind === 'cache') {
        // The new keys rotated straight into their cache rows (row = position) and the values beside them, in
        // one dispatch: two buffer copies per layer would each end the token's compute pass.
        pre.push(...(await prepareRope(ctx, k, positions, this.invFreq, { tokens: M, heads: spec.nKvHeads, headDim: spec.headDim }, { out: kc, outRowsByPosition: { outRows: this.cacheRows, storeV: { src: v, out: vc } } })));
        segments.push({ dispatches: pre });
      } else {
        // Prefill's attention reads k and v themselves; the cache gets a copy of them.
        pre.push(...(await prepareRope(ctx, k, positions, this.invFreq, { tokens: M, heads: spec.nKvHeads, headDim: spec.headDim })));
        segments.push({ dispatches: pre });
        segments.push({
          copy: (enc, pos0, n) => {
            enc.copyBufferToBuffer(k.buffer, 0, kc.buffer, pos0 * kvd * 4, n * kvd * 4);
            enc.copyBufferToBuffer(v.buffer, 0, vc.buffer, pos0 * kvd * 4, n * kvd * 4);
          },
        });
      }
      const post: KernelDispatch[] = [];
      if (kind === 'prefill') {
        post.push(await prepareAttentionForward(ctx, { q, k, v, o: attnOut, lse: lse! }, { batch: 1, seq: M, nQHeads: spec.nHeads, nKvHeads: spec.nKvHeads, headDim: spec.headDim }));
      } else {
        const dec = await prepareAttentionDecode(ctx, { q, kCache: kc, vCache: vc, o: attnOut }, { nQHeads: spec.nHeads, nKvHeads: spec.nKvHeads, headDim: spec.headDim, maxTokens: this.maxTokens, maxNew: M }, attn[0]);
        attn.push(dec);
        post.push(...dec.dispatches);
      }
      post.push(...(await linear(l, 'o', attnOut, ao)));
      post.push(...(await prepareRmsNormForward(ctx, h, w.mlpNorm, n2, rstd, { rows: M, dim: H, eps }, { residualDelta: ao, residualOut: h2 })));
      const gp = w.proj.gate;
      const upj = w.proj.up;
      if (M === 1 && gp.kind === 'q4' && upj.kind === 'q4' && !this.loraFor(l, 'gate') && !this.loraFor(l, 'up') && !w.bias.gate && !w.bias.up && q4GemvSwigluFits(gp.w, upj.w)) {
        // One token without an adapter on the MLP input: gate, up and SwiGLU in one dispatch.
        post.push(await prepareQ4GemvSwiglu(ctx, n2, gp.w, upj.w, m));
      } else {
        post.push(...(await linear(l, 'gate', n2, g)));
        post.push(...(await linear(l, 'up', n2, u)));
        post.push(...(await prepareSwigluForward(ctx, { gate: g, up: u }, m, { tokens: M, inter: I })));
      }
      post.push(...(await linear(l, 'down', m, d)));
      if (l === spec.layers - 1) post.push(...(await prepareAdd(ctx, h2, d, h))); // (earlier layers: in the next layer's first norm)
      segments.push({ dispatches: post });
    }
    return { rows: M, kind, ids, positions, h, segments, attn, owned };
  }

  private async prefillPass(n: number): Promise<Pass> {
    let rows = 16;
    while (rows < n) rows *= 2;
    rows = Math.min(rows, this.maxPrefill);
    let p = this.prefillPasses.get(rows);
    if (!p) {
      p = await this.buildPass(rows, 'prefill');
      this.prefillPasses.set(rows, p);
    }
    return p;
  }

  private async getAppendPass(): Promise<Pass> {
    return (this.appendPass ??= await this.buildPass(this.appendChunk, 'cache'));
  }

  private async getDecodePass(): Promise<Pass> {
    return (this.decodePass ??= await this.buildPass(1, 'cache'));
  }

  // ---- encoding -------------------------------------------------------------------------------------

  /** Records a pass over n tokens at positions pos0.. (ids and positions already written). */
  private encodePass(enc: GPUCommandEncoder, p: Pass, pos0: number, n: number): void {
    let pending: KernelDispatch[] = [];
    const flush = () => {
      if (pending.length) this.ctx.encode(enc, pending);
      pending = [];
    };
    for (const s of p.segments) {
      if ('dispatches' in s) pending.push(...s.dispatches);
      else {
        flush();
        s.copy(enc, pos0, n);
      }
    }
    flush();
  }

  /** Writes a pass's per-use inputs: positions, the decode attention lengths and (unless from the GPU) ids. */
  private setInputs(p: Pass, ids: ArrayLike<number> | null, pos0: number, n: number): void {
    const V = this.spec.vocabSize;
    if (ids) {
      const buf = new Int32Array(p.rows);
      for (let i = 0; i < n; i++) {
        const id = ids[i]!;
        if (!Number.isInteger(id) || id < 0 || id >= V) throw new RangeError(`token id ${id} is outside the vocabulary [0, ${V})`);
        buf[i] = id;
      }
      this.ctx.write(p.ids, buf);
    }
    this.ctx.write(p.positions, Int32Array.from({ length: p.rows }, (_, i) => pos0 + i));
    p.attn[0]?.setLength(pos0 + n, n); // every layer's decode shares the first one's uniforms
  }

  /** After a pass over n rows: copies the last row's hidden state into the head input (decode writes it there). */
  private encodeHead(enc: GPUCommandEncoder, p: Pass, n: number, sample: boolean): void {
    const H = this.spec.hidden;
    if (p.h !== this.headIn) enc.copyBufferToBuffer(p.h.buffer, (n - 1) * H * 4, this.headIn.buffer, 0, H * 4);
    this.ctx.encode(enc, sample ? [...this.headDispatches, ...this.sampler.dispatches] : this.headDispatches);
  }

  /**
   * Appends tokens to the cache and leaves the logits of the last one in readLogits(). With `sample` the
   * same submission also samples (the id lands in the sampler's buffer). Returns when submitted.
   */
  private async feedInternal(ids: readonly number[], sample: boolean, staging: GPUBuffer | null): Promise<void> {
    if (ids.length === 0) throw new Error('generator: nothing to feed');
    if (this.cached.length + ids.length > this.maxTokens) throw new Error(`generator: ${this.cached.length} cached + ${ids.length} new tokens exceed the cache (${this.maxTokens})`);
    let off = 0;
    while (off < ids.length) {
      const pos0 = this.cached.length;
      const p = pos0 === 0 ? await this.prefillPass(ids.length) : await this.getAppendPass();
      const n = Math.min(p.rows, ids.length - off);
      const chunk = ids.slice(off, off + n);
      this.setInputs(p, chunk, pos0, n);
      const last = off + n === ids.length;
      const enc = this.ctx.device.createCommandEncoder({ label: `${p.kind} ${n} tokens at ${pos0}` });
      this.encodePass(enc, p, pos0, n);
      if (last) {
        this.encodeHead(enc, p, n, sample);
        if (staging) enc.copyBufferToBuffer(this.sampler.outId.buffer, 0, staging, 0, 4);
      }
      this.ctx.device.queue.submit([enc.finish()]);
      this.cached.push(...chunk);
      off += n;
    }
  }

  /** Submits one decode step feeding the id in the sampler's buffer (`id` known to the CPU, for bookkeeping). */
  private async submitDecode(id: number, sample: boolean, staging: GPUBuffer | null): Promise<void> {
    const p = await this.getDecodePass();
    const pos = this.cached.length;
    if (pos + 1 > this.maxTokens) throw new Error('generator: the KV cache is full');
    this.setInputs(p, null, pos, 1);
    const enc = this.ctx.device.createCommandEncoder({ label: `decode at ${pos}` });
    this.encodePass(enc, p, pos, 1);
    this.encodeHead(enc, p, 1, sample);
    if (staging) enc.copyBufferToBuffer(this.sampler.outId.buffer, 0, staging, 0, 4);
    this.ctx.device.queue.submit([enc.finish()]);
    this.cached.push(id);
  }

  private async readStaging(b: GPUBuffer): Promise<number> {
    await b.mapAsync(GPUMapMode.READ);
    const id = new Int32Array(b.getMappedRange(0, 4))[0]!;
    b.unmap();
    return id;
  }

  private assertIdle(): void {
    if (this.busy) throw new Error('generator: a generation is running');
  }

  /**
   * Appends tokens to the cache (prefill from empty, or after the cached ones) and computes the
   * next-token logits of the last one (readLogits). No sampling. Tests and tools.
   */
  async feed(ids: readonly number[]): Promise<void> {
    this.assertIdle();
    await this.feedInternal(ids, false, null);
    await this.ctx.device.queue.onSubmittedWorkDone();
  }

  /** Runs the one-token decode pass on `id` (written to the GPU id buffer first) and computes the logits. */
  async decodeOne(id: number): Promise<void> {
    this.assertIdle();
    if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocabSize) throw new RangeError(`token id ${id} is outside the vocabulary`);
    this.ctx.write(this.sampler.outId, Int32Array.of(id));
    await this.submitDecode(id, false, null);
    await this.ctx.device.queue.onSubmittedWorkDone();
  }

  /**
   * Generates a reply to `promptIds` (the whole conversation so far, rendered and tokenized). The cached
   * prefix shared with the previous call is reused. Stops on max new tokens, a stop id, a full cache,
   * onToken returning true, or the abort signal. The RNG step restarts at 0, so the same prompt, seed and
   * settings give the same tokens.
   */
  async generate(promptIds: readonly number[], settings: Partial<GenerationSettings> = {}, onToken?: TokenCallback, signal?: AbortSignal): Promise<GenerationResult> {
    this.assertIdle();
    const s = validateSettings({ ...DEFAULT_SETTINGS, ...settings });
    if (promptIds.length === 0) throw new Error('generate: empty prompt');
    if (promptIds.length >= this.maxTokens) throw new Error(`generate: the prompt (${promptIds.length} tokens) does not fit the cache (${this.maxTokens} tokens) with room for a reply`);
    this.busy = true;
    const t0 = performance.now();
    try {
      // Reuse the cached prefix (at least one token is fed, for its logits).
      let keep = 0;
      const limit = Math.min(this.cached.length, promptIds.length - 1);
      while (keep < limit && this.cached[keep] === promptIds[keep]) keep++;
      this.cached.length = keep;
      this.sampler.setParams(s);
      this.sampler.reset(s.repetitionPenalty !== 1 ? promptIds : [], 0);
      const stops = new Set(s.stopTokenIds);
      const tokens: number[] = [];
      let finish: FinishReason = 'length';
      // Step 0 is the prompt (prefill) producing token 0; step j ≥ 1 feeds token j−1 (read by the GPU from
      // the sampler's buffer) and produces token j. Step j+1 is submitted before token j is read back.
      const stagingFor = (j: number) => this.staging[j % 2]!;
      await this.feedInternal(promptIds.slice(keep), true, stagingFor(0));
      let prefillMs = 0;
      for (let j = 0; ; j++) {
        const canContinue = j + 1 < s.maxNewTokens && this.cached.length + 1 <= this.maxTokens && !signal?.aborted;
        let fedAt = -1;
        if (canContinue) {
          fedAt = this.cached.length;
          await this.submitDecode(-1, true, stagingFor(j + 1)); // the id is filled in below once known
        }
        const id = await this.readStaging(stagingFor(j));
        if (j === 0) prefillMs = performance.now() - t0;
        if (fedAt >= 0) this.cached[fedAt] = id;
        tokens.push(id);
        let stop = true;
        if (stops.has(id)) finish = 'eos';
        else if (onToken?.(id, j) === true) finish = 'stop';
        else if (signal?.aborted) finish = 'abort';
        else if (tokens.length >= s.maxNewTokens) finish = 'length';
        else if (!canContinue) finish = 'cache';
        else stop = false;
        if (stop) {
          if (fedAt >= 0) await this.readStaging(stagingFor(j + 1)); // drain the lookahead; its token is discarded
          break;
        }
      }
      // The cache holds every fed token; the last generated one is not fed yet (a follow-up prompt re-feeds it).
      const decodeMs = performance.now() - t0 - prefillMs;
      return { tokens, finishReason: finish, promptTokens: promptIds.length, reusedTokens: keep, prefillMs, decodeMs };
    } finally {
      this.busy = false;
    }
  }

  /** The same as generate, as an async iterator of token ids; its return value is the result. */
  async *stream(promptIds: readonly number[], settings: Partial<GenerationSettings> = {}, signal?: AbortSignal): AsyncGenerator<number, GenerationResult> {
    const queue: number[] = [];
    let wake: (() => void) | null = null;
    let done = false;
    let stopRequested = false;
    const p = this.generate(promptIds, settings, (id) => {
      queue.push(id);
      wake?.();
      return stopRequested;
    }, signal).finally(() => {
      done = true;
      wake?.();
    });
    try {
      while (true) {
        while (queue.length) yield queue.shift()!;
        if (done) break;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
      return await p;
    } finally {
      stopRequested = true; // the consumer broke out: stop at the next token
      await p.catch(() => undefined);
    }
  }

  private releasePasses(): void {
    const passes = [...this.prefillPasses.values(), this.appendPass, this.decodePass].filter((p): p is Pass => !!p);
    for (const p of passes) {
      for (const a of p.attn) a.release();
      for (const t of p.owned) this.ctx.release(t);
    }
    this.prefillPasses.clear();
    this.appendPass = null;
    this.decodePass = null;
  }

  release(): void {
    this.releasePasses();
    for (const t of [...this.kCache, ...this.vCache, this.invFreq, this.headIn, this.headNormed, this.headRstd, this.logitsT]) this.ctx.release(t);
    this.headRelease?.();
    this.sampler.release();
    for (const b of this.staging) b.destroy();
  }
}
