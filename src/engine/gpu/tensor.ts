/** Element types a tensor buffer can hold. 'q4' tensors are packed 4-bit blocks; their byte size comes from the quant format. */
export type DType = 'f32' | 'f16' | 'i32' | 'u32' | 'q4';

export const DTYPE_BYTES: Record<Exclude<DType, 'q4'>, number> = { f32: 4, f16: 2, i32: 4, u32: 4 };

/** A GPU buffer with the shape and element type of what it holds. The buffer may be larger (pool rounding). */
export interface Tensor {
  readonly label: string;
  readonly buffer: GPUBuffer;
  readonly shape: readonly number[];
  readonly dtype: DType;
  /** Bytes of meaningful data (not the rounded buffer size). */
  readonly byteSize: number;
  /**
   * Where the data starts in the buffer (a view into a larger buffer, e.g. one LoRA matrix inside the
   * optimizer's flat parameter buffer). A multiple of 256 bytes, WebGPU's storage-offset alignment.
   */
  readonly byteOffset?: number;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export type HostArray = Float32Array | Int32Array | Uint32Array | Uint16Array;
