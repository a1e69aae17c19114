/** float32 → bfloat16 / float16 bit patterns, round to nearest even (as torch's .to() does). */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) return ((b >>> 16) | 0x40) & 0xffff; // quiet NaN
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112; // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++; // a carry into the exponent is correct (up to inf)
  return sign | half;
}

export type ExportDType = 'f32' | 'f16' | 'bf16';

export const SAFETENSORS_NAME: Record<ExportDType, 'F32' | 'F16' | 'BF16'> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };
export const TORCH_NAME: Record<ExportDType, string> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };
export const DTYPE_BYTES: Record<ExportDType, number> = { f32: 4, f16: 2, bf16: 2 };

/** Little-endian bytes of `data` in the export dtype. */
export function encodeAs(data: Float32Array, dtype: ExportDType): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  const conv = dtype === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
  for (let i = 0; i < data.length; i++) out[i] = conv(data[i]!);
  return new Uint8Array(out.buffer);
}
