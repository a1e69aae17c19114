import crossEntropyWgsl from '../../../shaders/cross_entropy.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { matmulSplits, prepareMatmul, prepareMatmulSplitK, splitKPartialElems } from './matmul.ts';
import { grid2d, prepareReduceAll, REDUCE_WG, registerReduceInclude, type PreparedReduction } from './reduce.ts';

export const CROSS_ENTROPY_SHADER = { name: 'cross_entropy.wgsl', code: crossEntropyWgsl };

/** Hugging Face / PyTorch ignore_index: positions whose label is −100 are not supervised. */
export const IGNORE_INDEX = -100;
/** Rows per workgroup of the CPU-adapter stats kernel (one invocation per row). */
const STATS_ROWS_WG = 64;

/**
 * Default budget for one chunk's logits (C × vocab × 4 bytes): ~1000 tokens of a 92k-151k vocabulary. The
 * chunk's lm_head products have only C rows against a reduction over the whole vocabulary, so few
 * workgroups: at 64 MiB (181 tokens of InternLM2's vocabulary) dhidden = dlogits·lm_head took 133 ms of a
 * 708 ms QLoRA step on the H100 (2048 tokens), at 384 MiB about 28 ms, for 320 MiB more at the peak.
 */
export const DEFAULT_CE_WORKSPACE_BYTES = 384 << 20;

/**
 * Tokens per loss chunk: `chunkTokens` when given, else the fewest chunks the workspace budget (default
 * DEFAULT_CE_WORKSPACE_BYTES) allows, within the device's binding and buffer limits when they are known (a
 * plan made before the device is opened has none), split evenly and rounded up to whole 128-row matmul tiles
 * where the budget allows; at least 1, at most `tokens`. The kernel, the session's memory plan, the CLI's
 * plan and the benchmarks all size the chunk with this.
 * Why even: 2048 tokens in the largest chunks the budget holds (1087 + 961 for InternLM2) gave the first chunk
 * 9 row tiles of dhidden = dlogits·lm_head, 144 workgroups on the H100's 132 SMs: 23.1 ms against 14.9 for
 * the second chunk's 128 (two chunks of 1024 take ~30 ms where those took 38).
 */
export function ceChunkTokens(vocab: number, tokens: number, o: { chunkTokens?: number | undefined; workspaceBytes?: number | undefined; limits?: { maxStorageBufferBindingSize: number; maxBufferSize: number } } = {}): number {
  if (o.chunkTokens !== undefined) return Math.max(1, Math.min(tokens, o.chunkTokens));
  const budget = Math.min(o.workspaceBytes ?? DEFAULT_CE_WORKSPACE_BYTES, o.limits?.maxStorageBufferBindingSize ?? Infinity, o.limits?.maxBufferSize ?? Infinity);
  const most = Math.max(1, Math.min(tokens, Math.floor(budget / (vocab * 4))));
  const even = Math.ceil(tokens / Math.ceil(tokens / most));
  const tiled = Math.ceil(even / CE_CHUNK_ALIGN) * CE_CHUNK_ALIGN;
  return tiled <= most ? tiled : even;
}

/** Rows of the matmul's wide tile: chunks of whole tiles leave no nearly empty row of workgroups. */
const CE_CHUNK_ALIGN = 128;

const GRID_WG = 256;
const LOSS_WG = 64;
const COPY_WG = 256;
const MAX_COPY_WORKGROUPS = 4096;

/**
 * The number of supervised targets of a batch in the HF convention (position t of a row predicts
 * labels[t+1]; the last position of each row predicts nothing), i.e. the labels at positions 1..T−1 of
 * each row that are not −100. The trainer counts them on the CPU when it prepares a batch and passes the
 * count to setNumSupervised, because the fused gradient is scaled by 1/count before the loss is known.
 * Throws on labels outside [0, vocab) other than −100 (torch raises there too).
 */
export function countSupervised(labels: Int32Array, seqLen: number, vocab: number): number {
  if (seqLen < 1 || labels.length % seqLen !== 0) throw new Error(`countSupervised: ${labels.length} labels are not whole rows of ${seqLen}`);
  let n = 0;
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i]!;
    if (l === IGNORE_INDEX) continue;
    if (l < 0 || l >= vocab) throw new Error(`countSupervised: label ${l} at position ${i} is outside [0, ${vocab}) and is not ${IGNORE_INDEX}`);
    if (i % seqLen !== 0) n++;
  }
  return n;
}

/** One contiguous range of vocab columns held in one buffer: [rows, cols] row-major. */
interface VocabBlock {
  tensor: Tensor;
  cols: number;
  colOffset: number;
}

function checkF32(what: string, t: Tensor, needElems: number, dtype: 'f32' | 'i32' = 'f32'): void {
  if (t.dtype !== dtype) throw new Error(`cross_entropy: ${what} '${t.label}' must be ${dtype}, is ${t.dtype}`);
  if (t.byteSize / 4 < needElems) throw new Error(`cross_entropy: ${what} '${t.label}' ${shapeString(t.shape)} holds ${t.byteSize / 4} elements, needs ${needElems}`);
}

function ceFields(rows: number, block: VocabBlock, b: number, numBlocks: number, token0: number, seqLen: number, vocab: number): UniformField[] {
  return [
    ['u32', rows],
    ['u32', block.cols],
    ['u32', block.colOffset],
    ['u32', token0],
    ['u32', seqLen],
    ['u32', b],
    ['u32', numBlocks],
    ['u32', vocab],
  ];
}

const batchFields = (numSupervised: number): UniformField[] => [
  ['f32', numSupervised > 0 ? 1 / numSupervised : 0],
  ['f32', 0],
  ['f32', 0],
  ['f32', 0],
];

/** Prepares dst[dstOffset + r·dstStride + j] = src[srcOffset + r·srcStride + j] (r < rows, j < cols). */
export async function prepareCopyRows(
  ctx: GpuContext,
  src: Tensor,
  dst: Tensor,
  c: { rows: number; cols: number; srcOffset: number; srcStride: number; dstOffset: number; dstStride: number },
): Promise<KernelDispatch> {
  checkF32('copy source', src, c.srcOffset + (c.rows - 1) * c.srcStride + c.cols);
  checkF32('copy destination', dst, c.dstOffset + (c.rows - 1) * c.dstStride + c.cols);
  const pipeline = await ctx.pipeline({ shader: CROSS_ENTROPY_SHADER, entryPoint: 'copy_rows', defines: { KERNEL: 'copy' }, constants: { WG: COPY_WG } });
  const label = `copy_rows ${c.rows}×${c.cols} ${src.label} → ${dst.label}`;
  const u = ctx.uniforms(label, [
    ['u32', c.rows],
    ['u32', c.cols],
    ['u32', c.srcOffset],
    ['u32', c.srcStride],
    ['u32', c.dstOffset],
    ['u32', c.dstStride],
    ['u32', 0],
    ['u32', 0],
  ]);
  const wg = Math.max(1, Math.min(MAX_COPY_WORKGROUPS, Math.ceil((c.rows * c.cols) / COPY_WG)));
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [u, src, dst]), workgroups: [wg, 1, 1] };
}

/**
 * The loss (and, with `grad`, the in-place dlogits) of `rows` tokens starting at token0 whose logits are
 * held in `blocks`: stats per block, the row loss, then the gradient per block.
 */
async function prepareLossCore(
  ctx: GpuContext,
  a: {
    blocks: readonly VocabBlock[];
    rows: number;
    token0: number;
    seqLen: number;
    vocab: number;
    labels: Tensor;
    stats: Tensor;
    lse: Tensor;
    losses: Tensor;
    batch: GPUBuffer;
    grad: boolean;
    label: string;
    /** One invocation per row for the stats (no workgroup reduction); default on CPU adapters. */
    software?: boolean;
  },
): Promise<KernelDispatch[]> {
  registerReduceInclude(ctx);
  const software = a.software ?? ctx.features.software;
  const [pStats, pLoss, pGrad] = await Promise.all([
    ctx.pipeline({ shader: CROSS_ENTROPY_SHADER, entryPoint: 'ce_block_stats', defines: { KERNEL: 'stats', SOFTWARE: software }, constants: software ? { ROWS_WG: STATS_ROWS_WG } : { REDUCE_WG } }),
    ctx.pipeline({ shader: CROSS_ENTROPY_SHADER, entryPoint: 'ce_row_loss', defines: { KERNEL: 'loss' }, constants: { WG: LOSS_WG } }),
    ctx.pipeline({ shader: CROSS_ENTROPY_SHADER, entryPoint: 'ce_block_grad', defines: { KERNEL: 'grad' }, constants: { WG: GRID_WG } }),
  ]);
  const nb = a.blocks.length;
  const uniforms = a.blocks.map((blk, b) => ctx.uniforms(`${a.label} block ${b}`, ceFields(a.rows, blk, b, nb, a.token0, a.seqLen, a.vocab)));
  const rowGrid = grid2d(ctx, a.rows, a.label);
  const statsGrid = software ? grid2d(ctx, Math.ceil(a.rows / STATS_ROWS_WG), a.label) : rowGrid;
  const out: KernelDispatch[] = a.blocks.map((blk, b) => ({
    label: `${a.label} ce_block_stats ${b}`,
    pipeline: pStats,
    bindGroup: ctx.bindGroup(`${a.label} stats ${b}`, pStats, [uniforms[b]!, a.labels, blk.tensor, a.stats]),
    workgroups: statsGrid,
  }));
  out.push({
    label: `${a.label} ce_row_loss`,
    pipeline: pLoss,
    bindGroup: ctx.bindGroup(`${a.label} loss`, pLoss, [uniforms[0]!, a.labels, a.stats, a.losses, a.lse]),
    workgroups: [Math.ceil(a.rows / LOSS_WG), 1, 1],
  });
  if (a.grad)
    a.blocks.forEach((blk, b) =>
      out.push({
        label: `${a.label} ce_block_grad ${b}`,
        pipeline: pGrad,
        bindGroup: ctx.bindGroup(`${a.label} grad ${b}`, pGrad, [uniforms[b]!, a.batch, a.labels, a.lse, blk.tensor]),
        workgroups: rowGrid,
      }),
    );
  return out;
}

export interface CrossEntropyShape {
  /** Tokens of the batch, flattened: batch × seqLen. */
  tokens: number;
  /** Positions per row: the shift by one never crosses a row boundary. */
  seqLen: number;
  hidden: number;
}

export interface CrossEntropyTensors {
  /** [tokens, hidden] final-norm output. */
  hidden: Tensor;
  /** lm_head row blocks [V_b, hidden] in vocab order (one block when it fits one binding). */
  lmHead: readonly Tensor[];
  /** i32 [tokens], unshifted (HF): −100 = not supervised. */
  labels: Tensor;
  /** Out [tokens]: per-position CE, 0 where the position has no supervised target. */
  losses: Tensor;
  /** Out [1]: mean of the losses over the supervised targets of the batch. */
  loss: Tensor;
  /** Out [tokens, hidden], written (=): d loss / d hidden. Given = training mode. */
  dhidden?: Tensor;
  /** Blocks like lmHead, accumulated (+=): d loss / d lm_head (frozen in LoRA training; for completeness). */
  dLmHead?: readonly Tensor[];
}

export interface CrossEntropyOptions {
  /** Supervised targets of the batch (countSupervised); change it per batch with setNumSupervised. */
  numSupervised: number;
  /** Bytes for one chunk's logits (default DEFAULT_CE_WORKSPACE_BYTES); sets the chunk size C = budget / (vocab · 4). */
  workspaceBytes?: number;
  /** Tokens per chunk, overriding the budget (tests split the tokens unevenly with it). */
  chunkTokens?: number;
  /** Force the one-invocation-per-row stats (true) or the workgroup reduction (false); default: per row on CPU adapters. */
  software?: boolean;
  /** k slices of dhidden = dlogits · lm_head (split-K; default ceDhiddenSplits); tests and benchmarks set it. */
  dhiddenSplits?: number;
}

/**
 * Split-K slices of a chunk's dhidden = dlogits · lm_head block: the product has chunk × hidden outputs (128
 * workgroups for 1024 × 2048) over the whole vocabulary, too few to fill a large GPU. The memory plan
 * counts the partials with this too.
 */
export function ceDhiddenSplits(chunkTokens: number, hidden: number, vocabCols: number, software = false): number {
  return matmulSplits({ M: chunkTokens, N: hidden, K: vocabCols }, {}, software);
}

export interface PreparedCrossEntropy {
  /** Everything of one step in order: chunks (matmuls, loss, gradient, dhidden), then the mean. */
  readonly dispatches: readonly KernelDispatch[];
  readonly chunkTokens: number;
  readonly chunks: number;
  /** [tokens] log-sum-exp of each position's logits (saved by the forward). */
  readonly lse: Tensor;
  /** Bytes of workspace this preparation holds (logits chunk, chunk copies, stats, lse, partials). */
  readonly workspaceBytes: number;
  /** Writes 1/n for the gradient scale and the mean (n = 0: loss and gradient 0). No recompile, no re-prepare. */
  setNumSupervised(n: number): void;
  /** Returns the workspace to the pool. */
  release(): void;
}

/**
 * Chunked cross-entropy through lm_head: loss (mean over supervised targets, HF shift convention), per
 * token losses and lse, and in training mode (dhidden given) dhidden and optionally d(lm_head), without
 * ever holding more than one chunk of logits. Eval mode (no dhidden): forward only.
 */
export async function prepareCrossEntropy(ctx: GpuContext, t: CrossEntropyTensors, shape: CrossEntropyShape, opts: CrossEntropyOptions): Promise<PreparedCrossEntropy> {
  const { tokens, seqLen, hidden: H } = shape;
  if (tokens < 1 || seqLen < 1 || tokens % seqLen !== 0) throw new Error(`cross_entropy: ${tokens} tokens are not whole rows of ${seqLen}`);
  if (t.lmHead.length === 0) throw new Error('cross_entropy: lm_head has no blocks');
  const blocksIn: { cols: number; colOffset: number }[] = [];
  let vocab = 0;
  for (const w of t.lmHead) {
    if (w.shape.length !== 2 || w.shape[1] !== H) throw new Error(`cross_entropy: lm_head block '${w.label}' ${shapeString(w.shape)} is not [rows, ${H}]`);
    blocksIn.push({ cols: w.shape[0]!, colOffset: vocab });
    vocab += w.shape[0]!;
  }
  checkF32('hidden', t.hidden, tokens * H);
  checkF32('labels', t.labels, tokens, 'i32');
  checkF32('losses', t.losses, tokens);
  checkF32('loss', t.loss, 1);
  const train = !!t.dhidden;
  if (t.dhidden) checkF32('dhidden', t.dhidden, tokens * H);
  if (t.dLmHead) {
    if (!train) throw new Error('cross_entropy: dLmHead needs dhidden (training mode)');
    if (t.dLmHead.length !== t.lmHead.length) throw new Error('cross_entropy: dLmHead must have the blocks of lmHead');
    t.dLmHead.forEach((d, b) => checkF32(`dLmHead[${b}]`, d, blocksIn[b]!.cols * H));
  }
  const C = ceChunkTokens(vocab, tokens, { chunkTokens: opts.chunkTokens, workspaceBytes: opts.workspaceBytes, limits: ctx.limits });
  const chunks = Math.ceil(tokens / C);
  const maxBlockBytes = Math.max(...blocksIn.map((b) => C * b.cols * 4));
  if (maxBlockBytes > ctx.limits.maxStorageBufferBindingSize) throw new Error(`cross_entropy: a logits block of ${C} tokens needs ${maxBlockBytes} bytes, over this adapter's binding limit`);

  const owned: Tensor[] = [];
  const own = (label: string, shape: number[]) => {
    const x = ctx.tensor(label, shape);
    owned.push(x);
    return x;
  };
  const blocks: VocabBlock[] = blocksIn.map((b, i) => ({ ...b, tensor: own(`ce logits chunk block ${i}`, [C, b.cols]) }));
  const hiddenChunk = chunks > 1 ? own('ce hidden chunk', [C, H]) : t.hidden;
  const dhiddenChunk = train && chunks > 1 ? own('ce dhidden chunk', [C, H]) : t.dhidden;
  const stats = own('ce stats', [C, blocks.length, 4]);
  const splits = train ? (opts.dhiddenSplits ?? Math.max(...blocksIn.map((b) => ceDhiddenSplits(C, H, b.cols, ctx.features.software)))) : 1;
  const partials = splits > 1 ? own('ce dhidden split-K partials', [splitKPartialElems({ M: C, N: H, K: 0 }, splits)]) : null;
  const lse = own('ce lse', [tokens]);
  const batch = ctx.uniforms('ce batch', batchFields(opts.numSupervised));

  const dispatches: KernelDispatch[] = [];
  for (let c = 0; c < chunks; c++) {
    const c0 = c * C;
    const n = Math.min(C, tokens - c0);
    const label = `ce chunk ${c}/${chunks}`;
    if (chunks > 1) dispatches.push(await prepareCopyRows(ctx, t.hidden, hiddenChunk, { rows: n, cols: H, srcOffset: c0 * H, srcStride: H, dstOffset: 0, dstStride: H }));
    for (let b = 0; b < blocks.length; b++) dispatches.push(await prepareMatmul(ctx, hiddenChunk, t.lmHead[b]!, blocks[b]!.tensor, { M: n, N: blocks[b]!.cols, K: H }, { transB: true }));
    dispatches.push(
      ...(await prepareLossCore(ctx, { blocks, rows: n, token0: c0, seqLen, vocab, labels: t.labels, stats, lse, losses: t.losses, batch, grad: train, label, ...(opts.software !== undefined ? { software: opts.software } : {}) })),
    );
    if (!train) continue;
    const dh = dhiddenChunk!;
    for (let b = 0; b < blocks.length; b++)
      dispatches.push(...(await prepareMatmulSplitK(ctx, blocks[b]!.tensor, t.lmHead[b]!, dh, { M: n, N: H, K: blocks[b]!.cols }, { accumulate: b > 0 }, { splits, partials })));
    if (t.dLmHead)
      for (let b = 0; b < blocks.length; b++)
        dispatches.push(await prepareMatmul(ctx, blocks[b]!.tensor, hiddenChunk, t.dLmHead[b]!, { M: blocks[b]!.cols, N: H, K: n }, { transA: true, accumulate: true }));
    if (chunks > 1) dispatches.push(await prepareCopyRows(ctx, dh, t.dhidden!, { rows: n, cols: H, srcOffset: 0, srcStride: H, dstOffset: c0 * H, dstStride: H }));
  }
  const mean: PreparedReduction = await prepareReduceAll(ctx, t.losses, t.loss, { op: 'sum', length: tokens, scale: batchFields(opts.numSupervised)[0]![1] });
  dispatches.push(...mean.dispatches);
  const workspaceBytes = owned.reduce((s, x) => s + x.byteSize, 0) + mean.partials.byteSize;
  return {
    dispatches,
    chunkTokens: C,
    chunks,
    lse,
    workspaceBytes,
    setNumSupervised(n: number) {
      const fields = batchFields(n);
      ctx.writeUniforms(batch, fields);
      mean.setScale(fields[0]![1]);
    },
    release() {
      for (const x of owned) ctx.release(x);
      mean.release();
    },
  };
}

export interface CrossEntropyLogitsTensors {
  /** [tokens, vocab] logits; in training mode overwritten with dlogits = d loss / d logits. */
  logits: Tensor;
  labels: Tensor;
  losses: Tensor;
  loss: Tensor;
}

/**
 * The same loss on logits that are given (evaluation of stored logits, the fixture check): one block,
 * one chunk. With `grad`, the logits are replaced by the gradient of the mean loss.
 */
export async function prepareCrossEntropyFromLogits(
  ctx: GpuContext,
  t: CrossEntropyLogitsTensors,
  shape: { tokens: number; seqLen: number; vocab: number },
  opts: { numSupervised: number; grad?: boolean; software?: boolean },
): Promise<PreparedCrossEntropy> {
  const { tokens, seqLen, vocab } = shape;
  if (tokens < 1 || seqLen < 1 || tokens % seqLen !== 0) throw new Error(`cross_entropy: ${tokens} tokens are not whole rows of ${seqLen}`);
  checkF32('logits', t.logits, tokens * vocab);
  checkF32('labels', t.labels, tokens, 'i32');
  checkF32('losses', t.losses, tokens);
  checkF32('loss', t.loss, 1);
  const stats = ctx.tensor('ce stats', [tokens, 1, 4]);
  const lse = ctx.tensor('ce lse', [tokens]);
  const batch = ctx.uniforms('ce batch', batchFields(opts.numSupervised));
  const core = await prepareLossCore(ctx, {
    blocks: [{ tensor: t.logits, cols: vocab, colOffset: 0 }],
    rows: tokens,
    token0: 0,
    seqLen,
    vocab,
    labels: t.labels,
    stats,
    lse,
    losses: t.losses,
    batch,
    grad: !!opts.grad,
    label: 'ce logits',
    ...(opts.software !== undefined ? { software: opts.software } : {}),
  });
  const mean = await prepareReduceAll(ctx, t.losses, t.loss, { op: 'sum', length: tokens, scale: batchFields(opts.numSupervised)[0]![1] });
  return {
    dispatches: [...core, ...mean.dispatches],
    chunkTokens: tokens,
    chunks: 1,
    lse,
    workspaceBytes: stats.byteSize + lse.byteSize + mean.partials.byteSize,
    setNumSupervised(n: number) {
      const fields = batchFields(n);
      ctx.writeUniforms(batch, fields);
      mean.setScale(fields[0]![1]);
    },
    release() {
      ctx.release(stats);
      ctx.release(lse);
      mean.release();
    },
  };
}

/** Logits of selected positions for sampling: rows firstRow, firstRow + rowStride, ... of hidden. */
export interface LmHeadLogitsShape {
  rows: number;
  hidden: number;
  /** Token index of the first selected position (e.g. seqLen − 1 for the last position of row 0). */
  firstRow: number;
  /** Tokens between selected positions (e.g. seqLen: the last position of every row). */
  rowStride: number;
}

/**
 * out[r, :] = hidden[firstRow + r·rowStride] · lm_headᵀ for r < rows, out [rows, vocab] contiguous over
 * the lm_head blocks. Returns the dispatches and a release for its small workspace.
 */
export async function prepareLmHeadLogits(
  ctx: GpuContext,
  t: { hidden: Tensor; lmHead: readonly Tensor[]; out: Tensor },
  s: LmHeadLogitsShape,
): Promise<{ dispatches: KernelDispatch[]; release(): void }> {
  const H = s.hidden;
  const vocab = t.lmHead.reduce((v, w) => v + w.shape[0]!, 0);
  for (const w of t.lmHead) if (w.shape.length !== 2 || w.shape[1] !== H) throw new Error(`lm_head logits: block '${w.label}' ${shapeString(w.shape)} is not [rows, ${H}]`);
  checkF32('hidden', t.hidden, (s.firstRow + (s.rows - 1) * s.rowStride + 1) * H);
  checkF32('logits', t.out, s.rows * vocab);
  const owned: Tensor[] = [];
  const gathered = ctx.tensor('lm_head selected hidden', [s.rows, H]);
  owned.push(gathered);
  const dispatches: KernelDispatch[] = [
    await prepareCopyRows(ctx, t.hidden, gathered, { rows: s.rows, cols: H, srcOffset: s.firstRow * H, srcStride: s.rowStride * H, dstOffset: 0, dstStride: H }),
  ];
  let col = 0;
  for (const w of t.lmHead) {
    const V = w.shape[0]!;
    if (t.lmHead.length === 1) {
      dispatches.push(await prepareMatmul(ctx, gathered, w, t.out, { M: s.rows, N: V, K: H }, { transB: true }));
    } else {
      const tmp = ctx.tensor('lm_head logits block', [s.rows, V]);
      owned.push(tmp);
      dispatches.push(await prepareMatmul(ctx, gathered, w, tmp, { M: s.rows, N: V, K: H }, { transB: true }));
      dispatches.push(await prepareCopyRows(ctx, tmp, t.out, { rows: s.rows, cols: V, srcOffset: 0, srcStride: V, dstOffset: col, dstStride: vocab }));
    }
    col += V;
  }
  return { dispatches, release: () => owned.forEach((x) => ctx.release(x)) };
}
