// Rotary position embedding, rotate-half convention (HF Llama / Qwen / InternLM2): for each head of
// head_dim d and i < d/2, with θ = position · inv_freq[i],
//
//   out[i]       = x[i] · cos θ − x[i + d/2] · sin θ
//   out[i + d/2] = x[i + d/2] · cos θ + x[i] · sin θ
//
// Forward rotates by +θ (params.sign = 1). Backward is the rotation by −θ (params.sign = −1): dx = R(−θ)·dy,
// the same entry point. It is a pure rotation of activations: the gradient is WRITTEN (=), never added.
// Gradient rule (llm.c): parameter grads are accumulated (+=), activation grads are written (=); rope has
// no parameters.
//
// Positions are explicit i32 per token (packed rows restart at 0). inv_freq [d/2] is computed on the CPU
// (float64, with the model's rope scaling) and uploaded as f32. The angle is formed as HF forms it in
// float32: θ = f32(position) · inv_freq (one rounding), then cos/sin of that f32 value. WGSL's sin/cos only
// promise 2^-11 absolute error inside [−π, π] and nothing outside, while θ reaches ~1e5; so sincos below
// reduces θ by π/2 in three parts (Cody–Waite, exact for |θ| up to ~1.2e4 even without fused fma, within a
// few 1e-7 beyond) and evaluates minimax polynomials on [−π/4, π/4] (single-precision Cephes
// coefficients, ~1 ulp).
//
// The tensor is [tokens, heads, d] inside rows of `stride` elements starting at `offset`, so q and k can
// be rotated inside a fused qkv buffer. INPLACE (define) rotates x itself; otherwise x is read and out is
// written (with its own stride and offset). VEC4 (define; when d/2, the strides and offsets are multiples
// of 4) handles four frequencies per thread with vec4 loads.
// OUT_ROW_POS (define, with out) writes token t's row at row positions[t] of out instead of row t: generation
// rotates the new keys straight into the KV cache (whose row is the token's position). STORE_V (with
// OUT_ROW_POS) also copies the same tokens' values, laid out as x, into v_out at those rows: one dispatch
// instead of two buffer copies, which would each end the compute pass.
// Grid: group = wg.y * num_workgroups.x + wg.x, one thread per (token, head, i < d/2 [/4]).

#if VEC4
alias V = vec4<f32>;
alias VI = vec4<i32>;
#else
alias V = f32;
alias VI = i32;
#endif

struct Params {
  tokens: u32,
  heads: u32,
  head_units: u32,   // d in units of V
  half_units: u32,   // d/2 in units of V
  x_stride: u32,     // units between consecutive tokens of x
  x_offset: u32,     // units before head 0 of token 0 of x
  o_stride: u32,
  o_offset: u32,
  n: u32,            // tokens · heads · half_units
  sign: f32,         // +1 forward, −1 backward
  _pad0: u32,
  _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> positions: array<i32>;
@group(0) @binding(2) var<storage, read> inv_freq: array<V>;
#if INPLACE
@group(0) @binding(3) var<storage, read_write> x: array<V>;
#else
@group(0) @binding(3) var<storage, read> x: array<V>;
@group(0) @binding(4) var<storage, read_write> out: array<V>;
#endif
#if STORE_V
@group(0) @binding(5) var<storage, read> v_src: array<V>;
@group(0) @binding(6) var<storage, read_write> v_out: array<V>;
#endif

struct SinCos {
  s: V,
  c: V,
}

fn sincos(a: V) -> SinCos {
  // a = q·π/2 + r, |r| ≤ π/4; π/2 = 1.5703125 + 4.837512969970703125e-4 + 7.54978995489188216e-8
  // (the first two parts have 8 and 11 significant bits, so q·part is exact for |q| < 8192).
  let q = round(a * V(0.63661977236758134));
  var r = fma(-q, V(1.5703125), a);
  r = fma(-q, V(4.837512969970703125e-4), r);
  r = fma(-q, V(7.54978995489188216e-8), r);
  let z = r * r;
  let s = fma(r * z, fma(z, fma(z, V(-1.9515295891e-4), V(8.3321608736e-3)), V(-1.6666654611e-1)), r);
  let c = fma(z * z, fma(z, fma(z, V(2.443315711809948e-5), V(-1.388731625493765e-3)), V(4.166664568298827e-2)), fma(V(-0.5), z, V(1.0)));
  // Quadrant q mod 4: 0 → (s, c), 1 → (c, −s), 2 → (−s, −c), 3 → (−c, s).
  let qi = VI(q);
  let swap = (qi & VI(1)) != VI(0);
  let sin_neg = (qi & VI(2)) != VI(0);
  let cos_neg = ((qi + VI(1)) & VI(2)) != VI(0);
  let s1 = select(s, c, swap);
  let c1 = select(c, s, swap);
  return SinCos(select(s1, -s1, sin_neg), select(c1, -c1, cos_neg));
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * WG + lid;
  if (i >= params.n) { return; }
  let per_token = params.heads * params.half_units;
  let t = i / per_token;
  let rem = i - t * per_token;
  let h = rem / params.half_units;
  let k = rem - h * params.half_units;

  let theta = V(f32(positions[t])) * inv_freq[k];
  let sc = sincos(theta);
  let sn = sc.s * params.sign;

  let xa = t * params.x_stride + params.x_offset + h * params.head_units + k;
  let x1 = x[xa];
  let x2 = x[xa + params.half_units];
  let y1 = x1 * sc.c - x2 * sn;
  let y2 = x2 * sc.c + x1 * sn;
#if INPLACE
  x[xa] = y1;
  x[xa + params.half_units] = y2;
#else
#if OUT_ROW_POS
  let orow = u32(positions[t]);
#else
  let orow = t;
#endif
  let oa = orow * params.o_stride + params.o_offset + h * params.head_units + k;
  out[oa] = y1;
  out[oa + params.half_units] = y2;
#if STORE_V
  v_out[oa] = v_src[xa];
  v_out[oa + params.half_units] = v_src[xa + params.half_units];
#endif
#endif
}
