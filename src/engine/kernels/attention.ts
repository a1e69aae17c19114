import attentionWgsl from '../../../shaders/attention.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { grid1d } from './grid.ts';

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

/**
 * Block sizes (WGSL override constants, multiples of 4): BLOCK_Q query rows × BLOCK_K keys per step of the
 * register-blocked kernels (forward/dq: BLOCK_K/4 invocations per 4 query rows; dkv: BLOCK_Q/4 per 4 keys).
 */
export interface AttentionTiles {
  BLOCK_Q: number;
  BLOCK_K: number;
}

export interface AttentionOptions {
  /** Override the tiles chosen from the device limits (tests use small tiles to cross many tile edges). */
  tiles?: Partial<AttentionTiles>;
  /** Use subgroup ops where the device has them (default true). */
  subgroups?: boolean;
  /** One invocation per query (key) row, no workgroup memory or barriers (default: on CPU adapters). */
  software?: boolean;
  /**
   * dk/dv read the document spans to stop early (default: where the adapter allows the 10 storage buffers
   * per stage that takes; the spec's minimum is 8, and without them the kernels run to the end of the row).
   */
  keySpans?: boolean;
  /** dk/dv's staging depths (head_dim columns per chunk, queries per round), instead of the chosen ones: benches. */
  dkvStaging?: { DC: number; KC: number };
  /**
   * dq's staging depths (head_dim columns per chunk, keys per round), instead of the chosen ones: benches. (H100,
   * 2026-12-07, b1 seq 2048: the default 64 queries × DC 16 × KC 16 1.73 ms; 32 queries, which leave room for
   * DC 32: 2.48–2.50 ms at every depth.)
   */
  dqStaging?: { DC: number; KC: number };
}

/** Storage buffers of the dk/dv kernels with the document spans bound: q, k, v, lse, dout, delta, dk, dv, doc, spans. */
const DKV_SPAN_BUFFERS = 10;
/** attention.wgsl's bindings of the document ids and their spans. */
const DOC_IDS_BINDING = 4;
const DOC_SPANS_BINDING = 13;

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
  /**
   * With docIds: u32 [tokens, 2], documentSpans(docIds) — where each token's visible keys start and its
   * watching queries stop, so the kernels skip the blocks no token of a tile can see (packed rows of short
   * documents do a fraction of the causal work).
   */
  docSpans?: Tensor;
}

/**
 * Per token of rows of `seq` tokens (positions within the row): [x, y] = the first key position its query
 * sees (the first token of its query document; seq when it sees nothing) and one past the last query
 * position that sees it as a key (0 when none does). Document ids as in AttentionForwardTensors.docIds.
 */
export function documentSpans(docIds: Int32Array, seq: number): Uint32Array {
  if (seq < 1 || docIds.length % seq !== 0) throw new Error(`documentSpans: ${docIds.length} ids are not whole rows of ${seq}`);
  const out = new Uint32Array(docIds.length * 2);
  const queryDoc = (d: number) => (d < -1 ? -(d + 2) : d);
  for (let row = 0; row < docIds.length; row += seq) {
    const firstKey = new Map<number, number>();
    const lastQuery = new Map<number, number>();
    for (let p = 0; p < seq; p++) {
      const d = docIds[row + p]!;
      if (d >= 0 && !firstKey.has(d)) firstKey.set(d, p);
      const qd = queryDoc(d);
      if (qd >= 0) lastQuery.set(qd, p);
    }
    for (let p = 0; p < seq; p++) {
      const d = docIds[row + p]!;
      const qd = queryDoc(d);
      out[2 * (row + p)] = qd >= 0 ? (firstKey.get(qd) ?? seq) : seq;
      out[2 * (row + p) + 1] = d >= 0 ? (lastQuery.get(d) ?? -1) + 1 : 0;
    }
  }
  return out;
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
/** Most vec4 output columns per invocation (RB_MAXC in the shader). */
const MAX_V4 = 8;

function pow2Below(n: number): number {
  return 2 ** Math.floor(Math.log2(Math.max(1, n)));
}

/** Tiles of the forward: (BLOCK_Q/4)×(BLOCK_K/4) invocations, 4×4 scores each; DC, KC staging depths. */
export interface AttentionForwardTiles {
  BLOCK_Q: number;
  BLOCK_K: number;
  /** head_dim columns of Q and K staged per step (a multiple of 4 dividing headDim). */
  DC: number;
  /** Keys of V staged per step (divides BLOCK_K). */
  KC: number;
}

/**
 * Workgroup bytes of the register-blocked forward or dq (mirrors their var<workgroup> arrays; dq stages dO
 * and V beside Q and K and needs no row exchange; the forward's row exchange only without SG_TEAM).
 */
export function attentionForwardBytes(headDim: number, t: AttentionForwardTiles, docs: boolean, sgTeam: boolean, kind: 'forward' | 'dq' = 'forward'): number {
  const chunks = kind === 'dq' ? 2 : 1;
  if (kind === 'dq') sgTeam = true;
  const stage = chunks * (t.BLOCK_Q + t.BLOCK_K) * (t.DC / 4 + 1) * 16 + t.KC * headDim * 4;
  const p = t.BLOCK_K * (t.BLOCK_Q / 4 + 1) * 16;
  return stage + p + (sgTeam ? 0 : (t.BLOCK_Q / 4) * (t.BLOCK_K / 4) * 16) + (docs ? (t.BLOCK_Q + t.BLOCK_K + 1) * 4 : 0);
}

/**
 * Forward tiles: a row team of BLOCK_K/4 invocations (≤ 16; within one subgroup when the row max goes
 * through subgroup shuffles; dividing headDim/4 with at most 8 vec4 columns each), up to 16 teams (64
 * query rows); DC = 32, KC = 16 (measured best on the H100 at d128: 1.51 ms vs 1.64 for 16/16 at b1
 * seq 2048), shrunk (then the rows) until workgroup memory suffices. opts.tiles.BLOCK_Q/BLOCK_K (multiples
 * of 4) override the block sizes.
 */
export function chooseAttentionForwardTiles(ctx: GpuContext, headDim: number, docs: boolean, opts: AttentionOptions = {}, kind: 'forward' | 'dq' = 'forward'): { tiles: AttentionForwardTiles; sgTeam: boolean } {
  const r = headDim / 4;
  const sgOk = (opts.subgroups ?? true) && ctx.features.subgroups && ctx.features.subgroupMinSize >= 2;
  let wx = pow2Below(Math.min(16, sgOk ? ctx.features.subgroupMinSize : 16));
  while (wx > 1 && r % wx !== 0) wx /= 2;
  if (opts.tiles?.BLOCK_K !== undefined) wx = opts.tiles.BLOCK_K / 4;
  if (!Number.isInteger(wx) || wx < 1 || r % wx !== 0 || r / wx > MAX_V4) throw new Error(`attention forward: BLOCK_K/4 must divide headDim/4 = ${r} with at most ${MAX_V4} vec4 each (BLOCK_K ${wx * 4})`);
  const sgTeam = sgOk && wx <= ctx.features.subgroupMinSize;
  let wy = Math.min(16, pow2Below(Math.floor(ctx.limits.maxComputeInvocationsPerWorkgroup / wx)));
  if (opts.tiles?.BLOCK_Q !== undefined) wy = opts.tiles.BLOCK_Q / 4;
  if (!Number.isInteger(wy) || wy < 1 || wx * wy > ctx.limits.maxComputeInvocationsPerWorkgroup) throw new Error(`attention forward: BLOCK_Q must be a multiple of 4 within the invocation limit`);
  const dcFits = (dc: number) => dc >= 4 && r % (dc / 4) === 0;
  let dc = kind === 'dq' ? (opts.dqStaging?.DC ?? 16) : 32;
  while (!dcFits(dc)) dc -= 4;
  let kc = (kind === 'dq' ? opts.dqStaging?.KC : undefined) ?? 16;
  while (kc > 1 && (wx * 4) % kc !== 0) kc /= 2;
  const make = (): AttentionForwardTiles => ({ BLOCK_Q: wy * 4, BLOCK_K: wx * 4, DC: dc, KC: kc });
  const limit = ctx.limits.maxComputeWorkgroupStorageSize;
  while (attentionForwardBytes(headDim, make(), docs, sgTeam, kind) > limit) {
    if (kc > 8) kc /= 2;
    else if (dc > 8 && dcFits(dc / 2)) dc /= 2;
    else if (wy > 1 && opts.tiles?.BLOCK_Q === undefined) wy /= 2;
    else if (kc > 1) kc /= 2;
    else throw new Error(`attention: headDim ${headDim} does not fit the forward in ${limit} bytes of workgroup memory`);
  }
  return { tiles: make(), sgTeam };
}

/** vec4 of dkv's one staging region: Q, dO, K, V chunks of DC columns, or dO and Q rows of KC queries. */
function attentionDkvStageVec4(headDim: number, t: AttentionForwardTiles): number {
  return Math.max(2 * (t.BLOCK_Q + t.BLOCK_K) * (t.DC / 4 + 1), 2 * t.KC * (headDim / 4));
}

/** Workgroup bytes of dkv (mirrors its var<workgroup> arrays). */
export function attentionDkvBytes(headDim: number, t: AttentionForwardTiles, docs: boolean): number {
  return attentionDkvStageVec4(headDim, t) * 16 + 2 * t.BLOCK_Q * (t.BLOCK_K / 4 + 1) * 16 + t.BLOCK_Q * 8 + (docs ? (t.BLOCK_Q + t.BLOCK_K + 1) * 4 : 0);
}

/**
 * dkv tiles: (BLOCK_Q/4)×(BLOCK_K/4) invocations, a team of BLOCK_Q/4 (≤ 16, dividing headDim/4, ≤ 8 vec4
 * columns each) per 4 key rows, up to 32 keys; DC 16, KC 8 (what the H100 ran at d128 when the two phases had
 * separate staging arrays: 64 queries × 32 keys, b1 seq 2048 2.84 ms; 32 × 64: 3.54; 32 × 32: 5.66; 16 × 64:
 * 16.6), shrunk (the query block, then DC, then the key block) until workgroup memory suffices. The phases
 * share one region, which leaves room for DC 32 and KC 16 (46 KiB) on a 48 KiB device, but deeper staging
 * measured slower on the H100 (2026-12-07, `ATTN_DKV_STAGING=16x8,16x16,32x8,32x16 node dist-bench/bench.mjs
 * attention`, b1 seq 2048: 2.99 / 3.17 / 3.22 / 3.40 ms; b4 seq 2048: 10.4 / 11.0 / 11.2 / 11.8), so
 * opts.dkvStaging only asks for them.
 */
export function chooseAttentionDkvTiles(ctx: GpuContext, headDim: number, docs: boolean, opts: AttentionOptions = {}): AttentionForwardTiles {
  const r = headDim / 4;
  let wx = 16;
  while (wx > 1 && r % wx !== 0) wx /= 2;
  if (opts.tiles?.BLOCK_Q !== undefined) wx = opts.tiles.BLOCK_Q / 4;
  if (!Number.isInteger(wx) || wx < 1 || r % wx !== 0 || r / wx > MAX_V4) throw new Error(`attention dkv: BLOCK_Q/4 must divide headDim/4 = ${r} with at most ${MAX_V4} vec4 each (BLOCK_Q ${wx * 4})`);
  let wy = Math.min(8, pow2Below(Math.floor(ctx.limits.maxComputeInvocationsPerWorkgroup / wx)));
  if (opts.tiles?.BLOCK_K !== undefined) wy = opts.tiles.BLOCK_K / 4;
  if (!Number.isInteger(wy) || wy < 1 || wx * wy > ctx.limits.maxComputeInvocationsPerWorkgroup) throw new Error(`attention dkv: BLOCK_K must be a multiple of 4 within the invocation limit`);
  const dcFits = (dc: number) => dc >= 4 && r % (dc / 4) === 0;
  let dc = opts.dkvStaging?.DC ?? 16;
  while (!dcFits(dc)) dc -= 4;
  let kc = opts.dkvStaging?.KC ?? 8;
  const fixKc = () => {
    while (kc > 1 && (wx * 4) % kc !== 0) kc /= 2;
  };
  fixKc();
  const make = (): AttentionForwardTiles => ({ BLOCK_Q: wx * 4, BLOCK_K: wy * 4, DC: dc, KC: kc });
  const limit = ctx.limits.maxComputeWorkgroupStorageSize;
  while (attentionDkvBytes(headDim, make(), docs) > limit) {
    if (dc > 16 && dcFits(dc / 2)) dc /= 2;
    else if (kc > 8) kc /= 2;
    else if (wx > 2 && opts.tiles?.BLOCK_Q === undefined && r % (wx / 2) === 0 && r / (wx / 2) <= MAX_V4) {
      wx /= 2;
      fixKc();
    } else if (dc > 8 && dcFits(dc / 2)) dc /= 2;
    else if (wy > 1 && opts.tiles?.BLOCK_K === undefined) wy /= 2;
    else if (kc > 1) kc /= 2;
    else throw new Error(`attention: headDim ${headDim} does not fit dkv in ${limit} bytes of workgroup memory`);
  }
  return make();
}

function checkShape(s: AttentionShape): void {
  const ok = (n: number) => Number.isInteger(n) && n > 0;
  if (![s.batch, s.seq, s.nQHeads, s.nKvHeads, s.headDim].every(ok)) throw new Error(`attention: bad shape ${JSON.stringify(s)}`);
  if (s.nQHeads % s.nKvHeads !== 0) throw new Error(`attention: nQHeads ${s.nQHeads} is not a multiple of nKvHeads ${s.nKvHeads}`);
  if (s.headDim % 4 !== 0 || s.headDim > 256) throw new Error(`attention: headDim ${s.headDim} must be a multiple of 4 and at most 256`);
}

/** The document bindings (ids and spans, both or neither). */
function docEntries(t: AttentionForwardTensors, tokens: number): [number, GPUBuffer | Tensor][] {
  if (!t.docIds && !t.docSpans) return [];
  if (!t.docIds || !t.docSpans) throw new Error('attention: docIds and docSpans come together (documentSpans computes the spans)');
  checkTensor('docIds', t.docIds, tokens, 'i32');
  checkTensor('docSpans', t.docSpans, 2 * tokens, 'u32');
  return [
    [DOC_IDS_BINDING, t.docIds],
    [DOC_SPANS_BINDING, t.docSpans],
  ];
}

function checkTensor(what: string, t: Tensor, elems: number, dtype: 'f32' | 'i32' | 'u32' = 'f32'): void {
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

/** 64-wide workgroups covering `items` invocations, as the row kernels' sw_item linearises them. */
function rowsGrid(ctx: GpuContext, label: string, items: number): [number, number, number] {
  return grid1d(ctx, Math.ceil(items / 64), label);
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
  const doc = docEntries(t, tokens);
  const docs = doc.length > 0;
  const label = `attention forward ${shapeLabel(s)}${docs ? ' docs' : ''}`;
  if (opts.software ?? ctx.features.software) {
    const pipeline = await ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_forward_rows', defines: { DOCS: docs }, constants: { HEAD_DIM: s.headDim } });
    const entries: [number, GPUBuffer | Tensor][] = [[0, ctx.uniforms(`${label} params`, uniformFields(s))], [1, t.q], [2, t.k], [3, t.v], [5, t.o], [6, t.lse], ...doc];
    return { label: `${label} (rows)`, pipeline, bindGroup: bind(ctx, label, pipeline, entries), workgroups: rowsGrid(ctx, label, tokens * s.nQHeads) };
  }
  const { tiles, sgTeam } = chooseAttentionForwardTiles(ctx, s.headDim, docs, opts);
  const pipeline = await ctx.pipeline({
    shader: ATTENTION_SHADER,
    entryPoint: 'attention_forward',
    defines: { DOCS: docs, SG_TEAM: sgTeam },
    constants: { HEAD_DIM: s.headDim, ...tiles },
  });
  const uniforms = ctx.uniforms(`${label} params`, uniformFields(s));
  const entries: [number, GPUBuffer | Tensor][] = [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [5, t.o], [6, t.lse], ...doc];
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
  const doc = docEntries(t, tokens);
  const docs = doc.length > 0;
  const keySpans = docs && (opts.keySpans ?? ctx.limits.maxStorageBuffersPerShaderStage >= DKV_SPAN_BUFFERS);
  const dkvDoc = keySpans ? doc : doc.filter(([binding]) => binding !== DOC_SPANS_BINDING);
  const name = `${shapeLabel(s)}${docs ? ' docs' : ''}`;
  const uniforms = ctx.uniforms(`attention backward ${name} params`, uniformFields(s));

  const deltaPipeline = await ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_delta', constants: { HEAD_DIM: s.headDim } });
  const rowsWg = Math.ceil((tokens * s.nQHeads) / 64);
  const deltaLabel = `attention delta ${name}`;
  const deltaDispatch: KernelDispatch = {
    label: deltaLabel,
    pipeline: deltaPipeline,
    bindGroup: bind(ctx, deltaLabel, deltaPipeline, [[0, uniforms], [5, t.o], [7, t.dout], [8, t.delta]]),
    workgroups: [Math.min(rowsWg, 65535), Math.ceil(rowsWg / 65535), 1],
  };

  if (opts.software ?? ctx.features.software) {
    const rows = async (entryPoint: string, what: string, items: number, entries: [number, GPUBuffer | Tensor][], dkv = false): Promise<KernelDispatch> => {
      const pipeline = await ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint, defines: { DOCS: docs, KEY_SPANS: dkv && keySpans }, constants: { HEAD_DIM: s.headDim } });
      const label = `attention backward ${what} ${name} (rows)`;
      return { label, pipeline, bindGroup: bind(ctx, label, pipeline, [...entries, ...(dkv ? dkvDoc : doc)]), workgroups: rowsGrid(ctx, label, items) };
    };
    return [
      deltaDispatch,
      await rows('attention_backward_dq_rows', 'dq', tokens * s.nQHeads, [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [6, t.lse], [7, t.dout], [8, t.delta], [9, t.dq]]),
      await rows('attention_backward_dkv_rows', 'dkv', tokens * s.nKvHeads, [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [6, t.lse], [7, t.dout], [8, t.delta], [10, t.dk], [11, t.dv]], true),
    ];
  }

  const dqLabel = `attention backward dq ${name}`;
  const dqT = chooseAttentionForwardTiles(ctx, s.headDim, docs, opts, 'dq').tiles;
  const dqPipeline = await ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_backward_dq', defines: { DOCS: docs }, constants: { HEAD_DIM: s.headDim, ...dqT } });
  const dqDispatch: KernelDispatch = {
    label: dqLabel,
    pipeline: dqPipeline,
    bindGroup: bind(ctx, dqLabel, dqPipeline, [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [6, t.lse], [7, t.dout], [8, t.delta], [9, t.dq], ...doc]),
    workgroups: [workgroupCount(ctx, dqLabel, Math.ceil(s.seq / dqT.BLOCK_Q)), s.nQHeads, workgroupCount(ctx, dqLabel, s.batch)],
  };

  const dkvLabel = `attention backward dkv ${name}`;
  const dkvT = chooseAttentionDkvTiles(ctx, s.headDim, docs, opts);
  const dkvPipeline = await ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_backward_dkv', defines: { DOCS: docs, KEY_SPANS: keySpans }, constants: { HEAD_DIM: s.headDim, ...dkvT, DKV_STAGE: attentionDkvStageVec4(s.headDim, dkvT) } });
  const dkvDispatch: KernelDispatch = {
    label: dkvLabel,
    pipeline: dkvPipeline,
    bindGroup: bind(ctx, dkvLabel, dkvPipeline, [[0, uniforms], [1, t.q], [2, t.k], [3, t.v], [6, t.lse], [7, t.dout], [8, t.delta], [10, t.dk], [11, t.dv], ...dkvDoc]),
    workgroups: [workgroupCount(ctx, dkvLabel, Math.ceil(s.seq / dkvT.BLOCK_K)), s.nKvHeads, workgroupCount(ctx, dkvLabel, s.batch)],
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
  /**
   * Most partial results per (query, head) (split-K over the valid keys). Default: enough workgroups to
   * fill a large GPU for one token (about 512 with the heads), at least one per 256 cache rows, at most 64.
   */
  nSplit?: number;
  /** Fewest keys per split (DECODE_MIN_CHUNK): a short context uses fewer splits. Tests lower it. */
  minChunk?: number;
}

/** Fewest keys a decode split reduces (see DECODE_MIN_CHUNK in attention.wgsl). */
const DECODE_MIN_CHUNK = 32;
/** Workgroups one decode token's attention aims for (the H100 has 132 SMs; a few per SM hide latency). */
const DECODE_TARGET_WORKGROUPS = 512;

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
  /** Frees the partial-results scratch tensor (a decode prepared with `shareWith` frees nothing). */
  release(): void;
  /** The uniforms and partial-results scratch, for another layer's decode (prepareAttentionDecode's shareWith). */
  readonly shared: { readonly uniforms: GPUBuffer; readonly partial: Tensor; readonly key: string };
}

/**
 * Decode attention: nNew query tokens at positions kvLen-nNew .. kvLen-1 against the KV cache, causal among
 * themselves. Prepared once per cache; each step only calls setLength (no recompile, no new bind groups).
 */
export async function prepareAttentionDecode(ctx: GpuContext, t: AttentionDecodeTensors, s: AttentionDecodeShape, shareWith?: AttentionDecode): Promise<AttentionDecode> {
  checkShape({ batch: 1, seq: s.maxTokens, nQHeads: s.nQHeads, nKvHeads: s.nKvHeads, headDim: s.headDim });
  if (!Number.isInteger(s.maxNew) || s.maxNew < 1 || s.maxNew > s.maxTokens) throw new Error(`attention decode: bad maxNew ${s.maxNew}`);
  checkTensor('q', t.q, s.maxNew * s.nQHeads * s.headDim);
  checkTensor('kCache', t.kCache, s.maxTokens * s.nKvHeads * s.headDim);
  checkTensor('vCache', t.vCache, s.maxTokens * s.nKvHeads * s.headDim);
  checkTensor('o', t.o, s.maxNew * s.nQHeads * s.headDim);
  const minChunk = s.minChunk ?? DECODE_MIN_CHUNK;
  const fill = Math.max(Math.ceil(s.maxTokens / 256), Math.ceil(DECODE_TARGET_WORKGROUPS / (s.nQHeads * s.maxNew)));
  const nSplit = s.nSplit ?? Math.max(1, Math.min(64, Math.ceil(s.maxTokens / minChunk), fill));
  if (!Number.isInteger(nSplit) || nSplit < 1) throw new Error(`attention decode: bad nSplit ${nSplit}`);
  if (!Number.isInteger(minChunk) || minChunk < 1) throw new Error(`attention decode: bad minChunk ${minChunk}`);
  const r = s.headDim / 4;
  const threads = r * Math.max(1, Math.floor(64 / r));
  const label = `attention decode q${s.nQHeads}/kv${s.nKvHeads} d${s.headDim} cache ${s.maxTokens} split ${nSplit}`;
  const shape: AttentionShape = { batch: 1, seq: s.maxTokens, nQHeads: s.nQHeads, nKvHeads: s.nKvHeads, headDim: s.headDim, ...(s.scale !== undefined ? { scale: s.scale } : {}) };
  // Layers of one model decode with the same shape and length: they can share one uniform buffer (one write
  // per token instead of one per layer) and one partial-results scratch (the layers run one after another).
  const key = JSON.stringify([shape, s.maxNew, nSplit, minChunk]);
  if (shareWith && shareWith.shared.key !== key) throw new Error(`${label}: cannot share the decode state of another shape`);
  const partial = shareWith?.shared.partial ?? ctx.tensor(`${label} partials`, [s.maxNew, s.nQHeads, nSplit, r + 1, 4]);
  const uniforms = shareWith?.shared.uniforms ?? ctx.uniforms(`${label} params`, uniformFields(shape, { kvLen: 0, nNew: 0, nSplit }));
  const constants = { HEAD_DIM: s.headDim, DECODE_THREADS: threads, DECODE_MIN_CHUNK: minChunk };
  const [pPartial, pCombine] = await Promise.all([
    ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_decode', constants }),
    ctx.pipeline({ shader: ATTENTION_SHADER, entryPoint: 'attention_decode_combine', constants: { HEAD_DIM: s.headDim, DECODE_MIN_CHUNK: minChunk } }),
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
      if (!shareWith) ctx.release(partial);
    },
    shared: { uniforms, partial, key },
  };
}
