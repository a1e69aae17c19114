import embeddingWgsl from '../../../shaders/embedding.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { grid1d } from './grid.ts';

export const EMBEDDING_SHADER = { name: 'embedding.wgsl', code: embeddingWgsl };

const WG = 256;
/** Backward: vocab rows owned by one workgroup (each workgroup scans the whole id list once). */
const ROWS_PER_GROUP = 64;

export interface EmbeddingShape {
  tokens: number;
  hidden: number;
  /** Rows of the whole table (ids ≥ vocab are out of range). */
  vocab: number;
}

/**
 * The part of the table one buffer holds: rows [rowOffset, rowOffset + rowCount), the buffer's row 0 being
 * table row rowOffset. Default: the whole table in one buffer.
 */
export interface TableChunk {
  rowOffset?: number;
  rowCount?: number;
  /**
   * Write zeros for out-of-range ids (id < 0 or ≥ vocab) in this dispatch. Default: true for the chunk at
   * rowOffset 0, so that exactly one dispatch of a split table writes them.
   */
  zeroInvalid?: boolean;
}

/** Throws if an id is outside [0, vocab), naming the first one: the CPU check before upload. */
export function validateTokenIds(ids: ArrayLike<number>, vocab: number): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new RangeError(`token id ${id} at position ${i} is outside the vocabulary [0, ${vocab})`);
  }
}

function check(op: string, what: string, t: Tensor, need: number, dtype: 'f32' | 'i32' = 'f32'): void {
  if (t.dtype !== dtype) throw new Error(`${op}: ${what} '${t.label}' must be ${dtype}, is ${t.dtype}`);
  const have = t.byteSize / 4;
  if (have < need) throw new Error(`${op}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${need}`);
}

function chunkOf(op: string, shape: EmbeddingShape, chunk: TableChunk) {
  const rowOffset = chunk.rowOffset ?? 0;
  const rowCount = chunk.rowCount ?? shape.vocab - rowOffset;
  if (!Number.isInteger(rowOffset) || rowOffset < 0 || rowCount < 0 || rowOffset + rowCount > shape.vocab) {
    throw new Error(`${op}: table chunk rows [${rowOffset}, ${rowOffset + rowCount}) outside the vocabulary [0, ${shape.vocab})`);
  }
  return { rowOffset, rowCount, zeroInvalid: chunk.zeroInvalid ?? rowOffset === 0 };
}

function params(ctx: GpuContext, label: string, shape: EmbeddingShape, units: number, c: { rowOffset: number; rowCount: number; zeroInvalid: boolean }): GPUBuffer {
  return ctx.uniforms(`${label} params`, [
    ['u32', shape.tokens],
    ['u32', units],
    ['u32', c.rowOffset],
    ['u32', c.rowCount],
    ['u32', shape.vocab],
    ['u32', c.zeroInvalid ? 1 : 0],
    ['u32', ROWS_PER_GROUP],
    ['u32', 0],
  ]);
}

/** out[t, :] = table[ids[t], :] for the ids in this chunk's rows; zeros for out-of-range ids (see TableChunk.zeroInvalid). */
export async function prepareEmbeddingForward(ctx: GpuContext, ids: Tensor, table: Tensor, out: Tensor, shape: EmbeddingShape, chunk: TableChunk = {}): Promise<KernelDispatch[]> {
  const op = 'embedding_forward';
  const c = chunkOf(op, shape, chunk);
  check(op, 'ids', ids, shape.tokens, 'i32');
  check(op, 'table', table, c.rowCount * shape.hidden);
  check(op, 'out', out, shape.tokens * shape.hidden);
  const vec4 = shape.hidden % 4 === 0;
  const units = vec4 ? shape.hidden / 4 : shape.hidden;
  const label = `${op} ${shape.tokens}×${shape.hidden} rows [${c.rowOffset}, ${c.rowOffset + c.rowCount})`;
  const pipeline = await ctx.pipeline({ shader: EMBEDDING_SHADER, entryPoint: op, defines: { VEC4: vec4 }, constants: { WG } });
  return [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [params(ctx, label, shape, units, c), ids, table, out]), workgroups: grid1d(ctx, shape.tokens, label) }];
}

/** dtable[r, :] += Σ_{t: ids[t] = r} dout[t, :] for this chunk's rows (parameter grad, accumulated; deterministic). */
export async function prepareEmbeddingBackward(ctx: GpuContext, ids: Tensor, dout: Tensor, dtable: Tensor, shape: EmbeddingShape, chunk: TableChunk = {}): Promise<KernelDispatch[]> {
  const op = 'embedding_backward';
  const c = chunkOf(op, shape, chunk);
  check(op, 'ids', ids, shape.tokens, 'i32');
  check(op, 'dout', dout, shape.tokens * shape.hidden);
  check(op, 'dtable', dtable, c.rowCount * shape.hidden);
  const vec4 = shape.hidden % 4 === 0;
  const units = vec4 ? shape.hidden / 4 : shape.hidden;
  const label = `${op} ${shape.tokens}×${shape.hidden} rows [${c.rowOffset}, ${c.rowOffset + c.rowCount})`;
  const pipeline = await ctx.pipeline({ shader: EMBEDDING_SHADER, entryPoint: op, defines: { VEC4: vec4 }, constants: { WG } });
  return [{ label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [params(ctx, label, shape, units, c), ids, dout, dtable]), workgroups: grid1d(ctx, Math.ceil(c.rowCount / ROWS_PER_GROUP), label) }];
}

// ---- convenience wrappers (tools and tests: prepare, run once, wait) ----------------------------------

export async function embeddingForward(ctx: GpuContext, ids: Tensor, table: Tensor, out: Tensor, shape: EmbeddingShape, chunk: TableChunk = {}): Promise<void> {
  await ctx.run(await prepareEmbeddingForward(ctx, ids, table, out, shape, chunk));
}

export async function embeddingBackward(ctx: GpuContext, ids: Tensor, dout: Tensor, dtable: Tensor, shape: EmbeddingShape, chunk: TableChunk = {}): Promise<void> {
  await ctx.run(await prepareEmbeddingBackward(ctx, ids, dout, dtable, shape, chunk));
}
