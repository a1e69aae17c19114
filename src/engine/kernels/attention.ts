import attentionWgsl from '../../../shaders/attention.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';

export const ATTENTION_SHADER = { name: 'attention.wgsl', code: attentionWgsl };

/** lse of a query that sees no key (a padding token): a finite stand-in for +inf, so exp(s - lse) = 0. */
export const LSE_MASKED = 1e30;

/**
 * Shapes of one attention call. Tensors are [tokens, heads, headDim] with tokens = batch·seq (batch rows one
 * after another); lse and delta are [nQHeads, tokens].
 */
export interface AttentionShape {
  batch: number;
  seq: number;
  nQHeads: number;
  nKvHeads: number;
  /** A multiple of 4, at most 256 (64 and 128 are the tuned cases). */
  headDim: number;
  /** Default 1/sqrt(headDim). */
  scale?: number;
}

/** Tile sizes (WGSL override constants). Rows = BLOCK_Q in forward/dq, BLOCK_K in dkv; LANES invocations per row. */
export interface AttentionTiles {
  BLOCK_Q: number;
  BLOCK_K: number;
  LANES: number;
}

export interface AttentionOptions {
  /** Override the tiles chosen from the device limits (tests use small tiles to cross many tile edges). */
  tiles?: Partial<AttentionTiles>;
  /** Use subgroup ops where the device has them (default true). */
  subgroups?: boolean;
}

export interface AttentionForwardTensors {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** Output [tokens, nQHeads, headDim] (written). */
  o: Tensor;
  /** Output [nQHeads, tokens] (written): the per-row log-sum-exp the backward needs. */
  lse: Tensor;
  /**
   * i32 [tokens]: document id of each token (packed rows attend within their document); -1 = padding (the
   * token sees nothing and gets o = 0). Same convention as TokenRow.documentIds. Omit for plain causal.
   */
  docIds?: Tensor;
}

export interface AttentionBackwardTensors extends AttentionForwardTensors {
  /** Gradient of the loss with respect to o. */
  dout: Tensor;
  /** Scratch [nQHeads, tokens]: rowsum(dout ∘ o). */
  delta: Tensor;
  /** Outputs (written, not accumulated: q/k/v are activations). */
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

/** The tiled entry points (tiles are chosen per entry point). */
export type AttentionKernel = 'forward' | 'dq' | 'dkv';
const MAX_V4 = 8;

function pow2Below(n: number): number {
  return 2 ** Math.floor(Math.log2(Math.max(1, n)));
}

/** Workgroup bytes an entry point declares with these tiles (mirrors the var<workgroup> arrays). */
export function attentionWorkgroupBytes(kind: AttentionKernel, headDim: number, t: AttentionTiles, docs: boolean): number {
  const p = headDim / 4 + 1;
  const scores = (t.BLOCK_Q + 1) * (t.BLOCK_K + 1) * 4;
  const docBytes = docs ? (t.BLOCK_Q + t.BLOCK_K) * 4 : 0;
  if (kind === 'forward') return (t.BLOCK_Q + 2 * t.BLOCK_K) * p * 16 + 2 * scores + docBytes;
  if (kind === 'dq') return 2 * (t.BLOCK_Q + t.BLOCK_K) * p * 16 + scores + docBytes;
  return 2 * (t.BLOCK_Q + t.BLOCK_K) * p * 16 + 2 * scores + t.BLOCK_Q * 8 + docBytes;
}

/**
 * Tiles for one entry point: LANES divides headDim/4 (each lane owns ≤ 16 vec4 columns), as many rows as
 * the invocation limit allows (≤ 64), the other block as large as workgroup memory allows (≤ 64, halved
 * down to 16 before the row block shrinks).
 */
export function chooseAttentionTiles(ctx: GpuContext, kind: AttentionKernel, headDim: number, docs: boolean, opts: AttentionOptions = {}): { tiles: AttentionTiles; sgTeam: boolean } {
  const r = headDim / 4;
  const lanesFor = (most: number) => {
    let n = pow2Below(most);
    while (n > 1 && r % n !== 0) n /= 2;
    return n;
  };
  let sgTeam = kind === 'forward' && (opts.subgroups ?? true) && ctx.features.subgroups && ctx.features.subgroupMinSize >= 2;
  let lanes = lanesFor(Math.min(16, sgTeam ? ctx.features.subgroupMinSize : 16));
  if (sgTeam && r / lanes > MAX_V4) {
    sgTeam = false; // subgroups too small for this head_dim: the plain path with more lanes per row
    lanes = lanesFor(16);
  }
  lanes = opts.tiles?.LANES ?? lanes;
  if (r % lanes !== 0 || r / lanes > MAX_V4) throw new Error(`attention: headDim ${headDim} with ${lanes} lanes per row: each lane must own a whole number of vec4 columns, at most ${MAX_V4}`);
  const maxInv = ctx.limits.maxComputeInvocationsPerWorkgroup;
  let rows = Math.min(64, pow2Below(Math.floor(maxInv / lanes)));
  let other = 64;
  const make = (): AttentionTiles =>
    kind === 'dkv' ? { BLOCK_K: rows, BLOCK_Q: other, LANES: lanes } : { BLOCK_Q: rows, BLOCK_K: other, LANES: lanes };
  const limit = ctx.limits.maxComputeWorkgroupStorageSize;
  while (attentionWorkgroupBytes(kind, headDim, make(), docs) > limit) {
    if (other > 16 || (rows <= 4 && other > 1)) other /= 2;
    else if (rows > 1) rows /= 2;
    else throw new Error(`attention: headDim ${headDim} does not fit in ${limit} bytes of workgroup memory`);
  }
  const tiles = { ...make(), ...opts.tiles };
  return { tiles, sgTeam: sgTeam && tiles.LANES <= ctx.features.subgroupMinSize };
}

function checkShape(s: AttentionShape): void {
  const ok = (n: number) => Number.isInteger(n) && n > 0;
  if (![s.batch, s.seq, s.nQHeads, s.nKvHeads, s.headDim].every(ok)) throw new Error(`attention: bad shape ${JSON.stringify(s)}`);
  if (s.nQHeads % s.nKvHeads !== 0) throw new Error(`attention: nQHeads ${s.nQHeads} is not a multiple of nKvHeads ${s.nKvHeads}`);
  if (s.headDim % 4 !== 0 || s.headDim > 256) throw new Error(`attention: headDim ${s.headDim} must be a multiple of 4 and at most 256`);
}

function checkTensor(what: string, t: Tensor, elems: number, dtype: 'f32' | 'i32' = 'f32'): void {
  if (t.dtype !== dtype) throw new Error(`attention: ${what} '${t.label}' must be ${dtype}, is ${t.dtype}`);
  const have = t.byteSize / 4;
  if (have < elems) throw new Error(`attention: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${elems}`);
}

function uniformFields(s: AttentionShape, decode: { kvLen: number; nNew: number; nSplit: number } = { kvLen: 0, nNew: 0, nSplit: 1 }): UniformField[] {
  return [
    ['u32', s.seq],
    ['u32', s.batch],
    ['u32', s.nQHeads],
    ['u32', s.nKvHeads],
    ['f32', s.scale ?? 1 / Math.sqrt(s.headDim)],
    ['u32', s.batch * s.seq],
    ['u32', decode.kvLen],
    ['u32', decode.nNew],
    ['u32', decode.nSplit],
    ['u32', 0],
    ['u32', 0],
    ['u32', 0],
  ];
}

/** A tensor's binding: its whole buffer, or a view's byte range (as GpuContext.bindGroup binds it). */
function tensorBinding(t: Tensor): GPUBufferBinding {
  if (t.byteOffset === undefined) return { buffer: t.buffer };
  return { buffer: t.buffer, offset: t.byteOffset, size: Math.min(Math.ceil(t.byteSize / 16) * 16, t.buffer.size - t.byteOffset) };
}

/** A bind group with explicit binding numbers (the entry points of attention.wgsl share one numbering). */
function bind(ctx: GpuContext, label: string, pipeline: GPUComputePipeline, entries: readonly (readonly [number, GPUBuffer | Tensor])[]): GPUBindGroup {
  return ctx.device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: entries.map(([binding, r]) => ({ binding, resource: 'shape' in r ? tensorBinding(r) : { buffer: r } })),
  });
}

function workgroupCount(ctx: GpuContext, label: string, n: number): number {
  if (n > ctx.limits.maxComputeWorkgroupsPerDimension) throw new Error(`${label}: ${n} workgroups exceed this adapter's ${ctx.limits.maxComputeWorkgroupsPerDimension} per dimension`);
  return n;
}

async function entry(ctx: GpuContext, kind: AttentionKernel, entryPoint: string, s: AttentionShape, docs: boolean, opts: AttentionOptions) {
  const { tiles, sgTeam } = chooseAttentionTiles(ctx, kind, s.headDim, docs, opts);
  const pipeline = await ctx.pipeline({
    shader: ATTENTION_SHADER,
    entryPoint,
    defines: { DOCS: docs, SG_TEAM: sgTeam },
    constants: { HEAD_DIM: s.headDim, ...tiles },
  });
  return { pipeline, tiles };
}

function shapeLabel(s: AttentionShape): string {
  return `${s.batch}×${s.seq} q${s.nQHeads}/kv${s.nKvHeads} d${s.headDim}`;
}

/**
 * Causal (and document-masked) attention forward: o = softmax(scale·q·kᵀ + mask)·v, saving lse. One dispatch,
 * grid [ceil(seq/BLOCK_Q), nQHeads, batch]; shapes in a uniform buffer owned by the dispatch.
 */
export async function prepareAttentionForward(ctx: GpuContext, t: AttentionForwardTensors, s: AttentionShape, opts: AttentionOptions = {}): Promise<KernelDispatch> {
  checkShape(s);
  const tokens = s.batch * s.seq;
  checkTensor('q', t.q, tokens * s.nQHeads * s.headDim);
  checkTensor('k', t.k, tokens * s.nKvHeads * s.headDim);
  checkTensor('v', t.v, tokens * s.nKvHeads * s.headDim);
  checkTensor('o', t.o, tokens * s.nQHeads * s.headDim);
  checkTensor('lse', t.lse, tokens * s.nQHeads);
  if (t.docIds) checkTensor('docIds', t.docIds, tokens, 'i32');
  const docs = !!t.docIds;
  const label = `attention forward ${shapeLabel(s)}${docs ? ' docs' : ''}`;
  const { pipeline, tiles } = await entry(ctx, 'forward', 'attention_forward', s, docs, opts);
  const uniforms = ctx.uniforms(`${label} params`, uniformFields(s));
  const entries: [number, GPUBuffer | Tensor][] = [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [5, t.o], [6, t.lse]];
  if (t.docIds) entries.push([4, t.docIds]);
  return {
    label,
    pipeline,
    bindGroup: bind(ctx, label, pipeline, entries),
    workgroups: [workgroupCount(ctx, label, Math.ceil(s.seq / tiles.BLOCK_Q)), workgroupCount(ctx, label, s.nQHeads), workgroupCount(ctx, label, s.batch)],
  };
}

/**
 * FlashAttention-2 backward from the saved lse: [delta = rowsum(dout∘o), dq, dk+dv] as three dispatches to
 * encode in this order. dq, dk, dv are written (=); dk/dv are summed over each group's query heads.
 */
export async function prepareAttentionBackward(ctx: GpuContext, t: AttentionBackwardTensors, s: AttentionShape, opts: AttentionOptions = {}): Promise<KernelDispatch[]> {
  checkShape(s);
  const tokens = s.batch * s.seq;
  const qElems = tokens * s.nQHeads * s.headDim;
  const kvElems = tokens * s.nKvHeads * s.headDim;
  checkTensor('q', t.q, qElems);
  checkTensor('k', t.k, kvElems);
  checkTensor('v', t.v, kvElems);
  checkTensor('o', t.o, qElems);
  checkTensor('lse', t.lse, tokens * s.nQHeads);
  checkTensor('dout', t.dout, qElems);
  checkTensor('delta', t.delta, tokens * s.nQHeads);
  checkTensor('dq', t.dq, qElems);
  checkTensor('dk', t.dk, kvElems);
  checkTensor('dv', t.dv, kvElems);
  if (t.docIds) checkTensor('docIds', t.docIds, tokens, 'i32');
  const docs = !!t.docIds;
  const name = `${shapeLabel(s)}${docs ? ' docs' : ''}`;
  const uniforms = ctx.uniforms(`attention backward ${name} params`, uniformFields(s));
  const doc: [number, GPUBuffer | Tensor][] = t.docIds ? [[4, t.docIds]] : [];

  const deltaPipeline = await ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_delta', constants: { HEAD_DIM: s.headDim } });
  const rowsWg = Math.ceil((tokens * s.nQHeads) / 64);
  const deltaLabel = `attention delta ${name}`;
  const deltaDispatch: KernelDispatch = {
    label: deltaLabel,
    pipeline: deltaPipeline,
    bindGroup: bind(ctx, deltaLabel, deltaPipeline, [[0, uniforms], [5, t.o], [7, t.dout], [8, t.delta]]),
    workgroups: [Math.min(rowsWg, 65535), Math.ceil(rowsWg / 65535), 1],
  };

  const dqLabel = `attention backward dq ${name}`;
  const dqE = await entry(ctx, 'dq', 'attention_backward_dq', s, docs, opts);
  const dqDispatch: KernelDispatch = {
    label: dqLabel,
    pipeline: dqE.pipeline,
    bindGroup: bind(ctx, dqLabel, dqE.pipeline, [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [6, t.lse], [7, t.dout], [8, t.delta], [9, t.dq], ...doc]),
    workgroups: [workgroupCount(ctx, dqLabel, Math.ceil(s.seq / dqE.tiles.BLOCK_Q)), s.nQHeads, workgroupCount(ctx, dqLabel, s.batch)],
  };

  const dkvLabel = `attention backward dkv ${name}`;
  const dkvE = await entry(ctx, 'dkv', 'attention_backward_dkv', s, docs, opts);
  const dkvDispatch: KernelDispatch = {
    label: dkvLabel,
    pipeline: dkvE.pipeline,
    bindGroup: bind(ctx, dkvLabel, dkvE.pipeline, [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [6, t.lse], [7, t.dout], [8, t.delta], [10, t.dk], [11, t.dv], ...doc]),
    workgroups: [workgroupCount(ctx, dkvLabel, Math.ceil(s.seq / dkvE.tiles.BLOCK_K)), s.nKvHeads, workgroupCount(ctx, dkvLabel, s.batch)],
  };
  return [deltaDispatch, dqDispatch, dkvDispatch];
}

/** Convenience for tools and tests: prepare, run once, wait. */
export async function attentionForward(ctx: GpuContext, t: AttentionForwardTensors, s: AttentionShape, opts: AttentionOptions = {}): Promise<void> {
  await ctx.run([await prepareAttentionForward(ctx, t, s, opts)]);
}

export async function attentionBackward(ctx: GpuContext, t: AttentionBackwardTensors, s: AttentionShape, opts: AttentionOptions = {}): Promise<void> {
  await ctx.run(await prepareAttentionBackward(ctx, t, s, opts));
}

/** Document ids from an HF attention_mask (1 = token, 0 = padding): 0 or -1 per token. */
export function documentIdsFromAttentionMask(mask: ArrayLike<number>): Int32Array {
  const out = new Int32Array(mask.length);
  for (let i = 0; i < mask.length; i++) out[i] = mask[i] ? 0 : -1;
  return out;
}

/** Document ids for right-padded rows of `seq` tokens with `lengths[b]` valid tokens each: 0 or -1 per token. */
export function documentIdsFromLengths(seq: number, lengths: readonly number[]): Int32Array {
  const out = new Int32Array(seq * lengths.length).fill(-1);
  lengths.forEach((n, b) => {
    if (!Number.isInteger(n) || n < 0 || n > seq) throw new Error(`documentIdsFromLengths: row ${b} length ${n} outside 0..${seq}`);
    out.fill(0, b * seq, b * seq + n);
  });
  return out;
}

// ---- decode ------------------------------------------------------------------------------------------

export interface AttentionDecodeShape {
  nQHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Rows of the KV cache. */
  maxTokens: number;
  /** Most query tokens per call (1 for token-by-token chat; more for a prompt tail or speculative tokens). */
  maxNew: number;
  scale?: number;
  /** Partial results per (query, head) (split-K over the cache). Default: one per 256 cache rows, 1..32. */
  nSplit?: number;
}

export interface AttentionDecodeTensors {
  /** [maxNew, nQHeads, headDim]: the new tokens' queries. */
  q: Tensor;
  /** [maxTokens, nKvHeads, headDim] each; rows 0..kvLen-1 valid, the new tokens' rows already written. */
  kCache: Tensor;
  vCache: Tensor;
  /** Output [maxNew, nQHeads, headDim] (written). */
  o: Tensor;
}

export interface AttentionDecode {
  /** [partial, combine]: encode in this order after setLength. */
  readonly dispatches: readonly KernelDispatch[];
  readonly nSplit: number;
  /** Sets the cache length (including the new tokens) and the number of new tokens: a uniform write only. */
  setLength(kvLen: number, nNew?: number): void;
  /** Frees the partial-results scratch tensor. */
  release(): void;
}

/**
 * Decode attention: nNew query tokens at positions kvLen-nNew .. kvLen-1 against the KV cache, causal among
 * themselves. Prepared once per cache; each step only calls setLength (no recompile, no new bind groups).
 */
export async function prepareAttentionDecode(ctx: GpuContext, t: AttentionDecodeTensors, s: AttentionDecodeShape): Promise<AttentionDecode> {
  checkShape({ batch: 1, seq: s.maxTokens, nQHeads: s.nQHeads, nKvHeads: s.nKvHeads, headDim: s.headDim });
  if (!Number.isInteger(s.maxNew) || s.maxNew < 1 || s.maxNew > s.maxTokens) throw new Error(`attention decode: bad maxNew ${s.maxNew}`);
  checkTensor('q', t.q, s.maxNew * s.nQHeads * s.headDim);
  checkTensor('kCache', t.kCache, s.maxTokens * s.nKvHeads * s.headDim);
  checkTensor('vCache', t.vCache, s.maxTokens * s.nKvHeads * s.headDim);
  checkTensor('o', t.o, s.maxNew * s.nQHeads * s.headDim);
  const nSplit = s.nSplit ?? Math.min(32, Math.max(1, Math.ceil(s.maxTokens / 256)));
  const r = s.headDim / 4;
  const threads = r * Math.max(1, Math.floor(64 / r));
  const label = `attention decode q${s.nQHeads}/kv${s.nKvHeads} d${s.headDim} cache ${s.maxTokens} split ${nSplit}`;
  const partial = ctx.tensor(`${label} partials`, [s.maxNew, s.nQHeads, nSplit, r + 1, 4]);
  const shape: AttentionShape = { batch: 1, seq: s.maxTokens, nQHeads: s.nQHeads, nKvHeads: s.nKvHeads, headDim: s.headDim, ...(s.scale !== undefined ? { scale: s.scale } : {}) };
  const uniforms = ctx.uniforms(`${label} params`, uniformFields(shape, { kvLen: 0, nNew: 0, nSplit }));
  const constants = { HEAD_DIM: s.headDim, DECODE_THREADS: threads };
  const [pPartial, pCombine] = await Promise.all([
    ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_decode', constants }),
    ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_decode_combine', constants: { HEAD_DIM: s.headDim } }),
  ]);
  const dispatches: KernelDispatch[] = [
    {
      label: `${label} partial`,
      pipeline: pPartial,
      bindGroup: bind(ctx, `${label} partial`, pPartial, [[0, uniforms], [1, t.q], [2, t.kCache], [3, t.vCache], [12, partial]]),
      workgroups: [workgroupCount(ctx, label, nSplit), s.nQHeads, s.maxNew],
    },
    {
      label: `${label} combine`,
      pipeline: pCombine,
      bindGroup: bind(ctx, `${label} combine`, pCombine, [[0, uniforms], [5, t.o], [12, partial]]),
      workgroups: [s.nQHeads, s.maxNew, 1],
    },
  ];
  return {
    dispatches,
    nSplit,
    setLength(kvLen: number, nNew = 1) {
      if (!Number.isInteger(kvLen) || kvLen < 1 || kvLen > s.maxTokens) throw new Error(`${label}: kvLen ${kvLen} outside 1..${s.maxTokens}`);
      if (!Number.isInteger(nNew) || nNew < 1 || nNew > s.maxNew || nNew > kvLen) throw new Error(`${label}: nNew ${nNew} outside 1..min(${s.maxNew}, kvLen)`);
      ctx.writeUniforms(uniforms, uniformFields(shape, { kvLen, nNew, nSplit }));
    },
    release() {
      ctx.release(partial);
    },
  };
}
