// The q4a64 format's decoding helpers (see quant4.wgsl's header and docs/quant4.md), shared by quant4.wgsl and
// quant4_mma.wgsl through `#include "q4_format.wgsl"`.

const GROUP: u32 = 64u;

// f16 bits → f32, exact (subnormals included).
fn f16_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8; // m · 2^-24, exact
    return bitcast<f32>(bitcast<u32>(v) | sign);
  }
  if (e == 31u) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
  return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// Decodes one group's scale word: (step, min).
fn group_scale(w: u32) -> vec2<f32> {
  return vec2<f32>(f16_to_f32(w & 0xffffu), f16_to_f32(w >> 16u));
}

// The 8 codes of one code word as two vec4 (codes 0..3, 4..7), as f32 0..15.
fn codes8(word: u32) -> array<vec4<f32>, 2> {
  let lo = vec4<f32>(f32(word & 15u), f32((word >> 4u) & 15u), f32((word >> 8u) & 15u), f32((word >> 12u) & 15u));
  let hi = vec4<f32>(f32((word >> 16u) & 15u), f32((word >> 20u) & 15u), f32((word >> 24u) & 15u), f32(word >> 28u));
  return array<vec4<f32>, 2>(lo, hi);
}

// The 8 weights of one code word as two vec4 (weights 0..3, 4..7).
fn dequant8(word: u32, sc: vec2<f32>) -> array<vec4<f32>, 2> {
  let c = codes8(word);
  return array<vec4<f32>, 2>(c[0] * sc.x + sc.y, c[1] * sc.x + sc.y);
}

// dequant8 with the codes turned into floats by their exponent bits instead of integer-to-float conversions
// (a quarter-rate instruction on NVIDIA): 0x4B000000 | c is the float 2²³ + c, and subtracting 2²³ is exact, so
// the result is dequant8's bit for bit (the same fma of the same c, step and min).
fn dequant8_exp(word: u32, sc: vec2<f32>) -> array<vec4<f32>, 2> {
  let lo = bitcast<vec4<f32>>(((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
  let hi = bitcast<vec4<f32>>(((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
  return array<vec4<f32>, 2>(lo * sc.x + sc.y, hi * sc.x + sc.y);
}
