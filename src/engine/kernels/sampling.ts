import samplingWgsl from '../../../shaders/sampling.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { grid1d } from './grid.ts';

export const SAMPLING_SHADER = { name: 'sampling.wgsl', code: samplingWgsl };

/**
 * Longest merged candidate list of the fast path: top-k up to SAMPLING_KMAX − 1 (each chunk lists k + 1)
 * and, with top-k off, top-p nuclei within the SAMPLING_KMAX best. Anything else (larger k, a larger
 * nucleus, a tie group cut by the list) goes to sample_general: exact, slower.
 */
export const SAMPLING_KMAX = 256;
const WG = 256;
/** Invocations per row of the head GEMV: up to 32, about a quarter of the row's vec4s (short rows, more rows per workgroup). */
function headLanes(hidden4: number): number {
  let lanes = 1;
  while (lanes < 32 && lanes * 8 <= hidden4) lanes *= 2;
  return lanes;
}

/** The sampling controls the GPU applies (stop conditions and max length live in the generator). */
export interface SamplingParams {
  /** ≤ 0 (or below 1e-5): greedy (argmax, lowest id on ties). */
  temperature: number;
  /** 0 (or ≥ vocabulary): off. Keeps every token ≥ the k-th largest value (HF: ties at the k-th all stay). */
  topK: number;
  /** ≥ 1: off. */
  topP: number;
  /** 1: off. HF semantics: a seen id's logit is divided by it if > 0, else multiplied. */
  repetitionPenalty: number;
  /** RNG seed (u32); the draw of step s is samplingUniform(seed, s). */
  seed: number;
}

export function isGreedy(p: Pick<SamplingParams, 'temperature'>): boolean {
  return !(p.temperature >= 1e-5);
}

function hash32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/** The uniform draw in [0, 1) for (seed, step): the CPU mirror of sampling.wgsl's uniform01. */
export function samplingUniform(seed: number, step: number): number {
  const h = hash32((seed >>> 0) ^ hash32((step + 0x9e3779b9) >>> 0));
  return (h >>> 8) / 16777216;
}

/** A row block of the lm_head: rows [row0, row0 + rows) of the vocabulary, [rows, hidden] f32. */
export interface HeadBlock {
  tensor: Tensor;
  row0: number;
  rows: number;
}

function need(what: string, t: Tensor, elems: number, dtype: 'f32' | 'i32' | 'u32' = 'f32'): void {
  if (t.dtype !== dtype) throw new Error(`sampling: ${what} '${t.label}' must be ${dtype}, is ${t.dtype}`);
  if (t.byteSize / 4 < elems) throw new Error(`sampling: ${what} '${t.label}' ${shapeString(t.shape)} holds ${t.byteSize / 4} elements, needs ${elems}`);
}

function fields(f: Partial<Record<'vocab' | 'nChunks' | 'rounds' | 'merge' | 'topK' | 'seed' | 'greedy' | 'rows' | 'hidden4' | 'col0', number>> & { invTemp?: number; topP?: number; penalty?: number }): UniformField[] {
  return [
    ['u32', f.vocab ?? 0],
    ['u32', f.nChunks ?? 0],
    ['u32', f.rounds ?? 0],
    ['u32', f.merge ?? 0],
    ['f32', f.invTemp ?? 1],
    ['f32', f.topP ?? 1],
    ['f32', f.penalty ?? 1],
    ['u32', f.seed ?? 0],
    ['u32', f.greedy ?? 1],
    ['u32', f.rows ?? 0],
    ['u32', f.hidden4 ?? 0],
    ['u32', f.col0 ?? 0],
    ['u32', f.topK ?? 0],
  ];
}

/**
 * logits[row0 + r] = hidden · block[r, :] for every lm_head block: the last position's logits as a GEMV
 * (one row of hidden, [hidden] f32, hidden a multiple of 4). One dispatch per block. A one-row GEMV
 * y = W·x in general: the generator also computes LoRA's U = x·Aᵀ with it at decode time.
 */
export async function prepareHeadLogits(ctx: GpuContext, hidden: Tensor, blocks: readonly HeadBlock[], logits: Tensor, H: number): Promise<KernelDispatch[]> {
  if (H % 4 !== 0) throw new Error(`head logits: hidden ${H} is not a multiple of 4`);
  need('hidden', hidden, H);
  const vocab = blocks.reduce((n, b) => Math.max(n, b.row0 + b.rows), 0);
  need('logits', logits, vocab);
  const LANES = headLanes(H / 4);
  const HEAD_ROWS = 256 / LANES;
  const pipeline = await ctx.pipeline({ shader: SAMPLING_SHADER, entryPoint: 'head_logits', constants: { LANES, HEAD_ROWS } });
  return blocks.map((b) => {
    need('lm_head block', b.tensor, b.rows * H);
    const label = `head logits ${H}·${b.tensor.label}ᵀ`;
    const u = ctx.uniforms(`${label} params`, fields({ rows: b.rows, hidden4: H / 4, col0: b.row0 }));
    return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [u, hidden, b.tensor, logits]), workgroups: grid1d(ctx, Math.ceil(b.rows / HEAD_ROWS), label) };
  });
}

export interface PreparedSampler {
  /** [chunks, select, general]: encode after the logits are written (general is a no-op unless select defers). */
  readonly dispatches: readonly KernelDispatch[];
  /** i32 [1]: the chosen id (also the next step's embedding input). */
  readonly outId: Tensor;
  /** u32 [vocab]: 1 for ids the repetition penalty applies to (the prompt and every chosen id). */
  readonly seen: Tensor;
  /** u32 [4]: [0] = the step counter the RNG draws from (advanced by every sampling); [1] = general path pending; [2] = tokens the general path chose (diagnostics). */
  readonly state: Tensor;
  /** Writes the controls (a uniform write; no recompilation). */
  setParams(p: SamplingParams): void;
  /** Sets the step counter (generate() starts every reply at 0) and the seen flags to exactly `ids`. */
  reset(seenIds: ArrayLike<number>, step?: number): void;
  release(): void;
}

export interface SamplerOptions {
  /** Logits per chunk workgroup (a multiple of 256; default 2048, or more so that chunks ≤ 256). */
  chunk?: number;
  /** Where the chosen id goes (default: a fresh i32 [1] tensor). */
  outId?: Tensor;
}

/**
 * How the kernels split the work for these controls: candidates per chunk (rounds), the merged prefix
 * (merge) and the effective top-k (0: off). rounds 0 sends every token to the general path.
 */
export function samplingPlan(p: SamplingParams, vocab: number): { rounds: number; merge: number; topK: number } {
  if (isGreedy(p)) return { rounds: 1, merge: 1, topK: 0 };
  const topK = p.topK > 0 && p.topK < vocab ? p.topK : 0;
  if (topK > 0) return topK + 1 <= SAMPLING_KMAX ? { rounds: topK + 1, merge: topK, topK } : { rounds: 0, merge: 0, topK };
  if (vocab <= SAMPLING_KMAX) return { rounds: vocab, merge: vocab, topK: 0 };
  return p.topP < 1 ? { rounds: SAMPLING_KMAX, merge: SAMPLING_KMAX, topK: 0 } : { rounds: 0, merge: 0, topK: 0 };
}

/** Prepares GPU sampling over logits [vocab] (one row). Chunks of the vocabulary, then one merge. */
export async function prepareSampler(ctx: GpuContext, logits: Tensor, vocab: number, opts: SamplerOptions = {}): Promise<PreparedSampler> {
  need('logits', logits, vocab);
  let chunk = opts.chunk ?? 2048;
  while (Math.ceil(vocab / chunk) > WG) chunk *= 2;
  if (chunk % WG !== 0) throw new Error(`sampling: chunk ${chunk} is not a multiple of ${WG}`);
  if (chunk * 4 + WG * 8 > ctx.limits.maxComputeWorkgroupStorageSize) throw new Error(`sampling: vocabulary ${vocab} needs chunks of ${chunk} logits, more than workgroup memory holds`);
  const nChunks = Math.ceil(vocab / chunk);
  if (nChunks > WG) throw new Error(`sampling: ${nChunks} chunks exceed ${WG}`);
  const owned: Tensor[] = [];
  const t = (label: string, shape: number[], dtype: 'f32' | 'i32' | 'u32') => {
    const x = ctx.tensor(label, shape, dtype);
    owned.push(x);
    return x;
  };
  const outId = opts.outId ?? t('sampled id', [1], 'i32');
  need('outId', outId, 1, 'i32');
  const seen = t('sampling seen ids', [vocab], 'u32');
  const state = t('sampling state', [4], 'u32');
  const candV = t('sampling candidate logits', [nChunks * SAMPLING_KMAX], 'f32');
  const candI = t('sampling candidate ids', [nChunks * SAMPLING_KMAX], 'i32');
  const stats = t('sampling chunk stats', [nChunks, 2], 'f32');
  const constants = { WG, CHUNK: chunk, KMAX: SAMPLING_KMAX };
  const [pChunks, pSelect, pGeneral] = await Promise.all([
    ctx.pipeline({ shader: SAMPLING_SHADER, entryPoint: 'sample_chunks', constants }),
    ctx.pipeline({ shader: SAMPLING_SHADER, entryPoint: 'sample_select', constants }),
    ctx.pipeline({ shader: SAMPLING_SHADER, entryPoint: 'sample_general', constants: { WG } }),
  ]);
  const label = `sampling vocab ${vocab} (${nChunks}×${chunk})`;
  const uniforms = ctx.uniforms(`${label} params`, fields({ vocab, nChunks, rounds: 1, merge: 1 }));
  // These entry points use sparse binding numbers (one numbering for the whole file).
  const dispatches: KernelDispatch[] = [
    { label: `${label} chunks`, pipeline: pChunks, bindGroup: sparseBindGroup(ctx, `${label} chunks`, pChunks, [[0, uniforms], [3, logits], [4, seen], [5, candV], [6, candI], [7, stats]]), workgroups: [nChunks, 1, 1] },
    { label: `${label} select`, pipeline: pSelect, bindGroup: sparseBindGroup(ctx, `${label} select`, pSelect, [[0, uniforms], [4, seen], [5, candV], [6, candI], [7, stats], [8, outId], [9, state]]), workgroups: [1, 1, 1] },
    { label: `${label} general`, pipeline: pGeneral, bindGroup: sparseBindGroup(ctx, `${label} general`, pGeneral, [[0, uniforms], [3, logits], [4, seen], [7, stats], [8, outId], [9, state]]), workgroups: [1, 1, 1] },
  ];
  ctx.write(state, new Uint32Array(4));
  ctx.write(seen, new Uint32Array(vocab));
  return {
    dispatches,
    outId,
    seen,
    state,
    setParams(p) {
      if (!(p.repetitionPenalty > 0)) throw new Error(`sampling: repetition penalty must be > 0, got ${p.repetitionPenalty}`);
      if (!(p.topP > 0)) throw new Error(`sampling: top-p must be > 0, got ${p.topP}`);
      if (!Number.isInteger(p.topK) || p.topK < 0) throw new Error(`sampling: top-k must be an integer ≥ 0, got ${p.topK}`);
      const greedy = isGreedy(p);
      const plan = samplingPlan(p, vocab);
      ctx.writeUniforms(uniforms, fields({ vocab, nChunks, ...plan, invTemp: greedy ? 1 : 1 / p.temperature, topP: p.topP, penalty: p.repetitionPenalty, seed: p.seed >>> 0, greedy: greedy ? 1 : 0 }));
    },
    reset(seenIds, step = 0) {
      const flags = new Uint32Array(vocab);
      for (let i = 0; i < seenIds.length; i++) {
        const id = seenIds[i]!;
        if (id >= 0 && id < vocab) flags[id] = 1;
      }
      ctx.write(seen, flags);
      ctx.write(state, Uint32Array.of(step >>> 0, 0, 0, 0));
    },
    release() {
      for (const x of owned) ctx.release(x);
    },
  };
}

function tensorBinding(t: Tensor): GPUBufferBinding {
  if (t.byteOffset === undefined) return { buffer: t.buffer };
  return { buffer: t.buffer, offset: t.byteOffset, size: Math.min(Math.ceil(t.byteSize / 16) * 16, t.buffer.size - t.byteOffset) };
}

function sparseBindGroup(ctx: GpuContext, label: string, pipeline: GPUComputePipeline, entries: readonly (readonly [number, GPUBuffer | Tensor])[]): GPUBindGroup {
  return ctx.device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: entries.map(([binding, r]) => ({ binding, resource: 'shape' in r ? tensorBinding(r) : { buffer: r } })),
  });
}

/** Convenience for tools and tests: samples one id from logits [vocab] on the GPU (step 0 unless given). */
export async function sampleOnce(ctx: GpuContext, logits: Tensor, vocab: number, p: SamplingParams, o: { seen?: ArrayLike<number>; step?: number } = {}): Promise<number> {
  const s = await prepareSampler(ctx, logits, vocab);
  try {
    s.setParams(p);
    s.reset(o.seen ?? [], o.step ?? 0);
    await ctx.run(s.dispatches);
    return (await ctx.read(s.outId))[0]!;
  } finally {
    s.release();
  }
}
