// RMSNorm over rows of length dim (hidden 2048, or head_dim 64/128 for Qwen3's per-head q_norm/k_norm,
// whose rows are [tokens * heads, head_dim]):
//
//   forward:   y = x · rstd · w,   rstd = 1 / sqrt(mean(x²) + eps), rstd saved per row for backward.
//              RESIDUAL (define): first h += delta in place (the residual stream update), then y = norm(h):
//              `h = h + attn; n = rmsnorm(h)` in one pass. RESIDUAL_OUT (define): the same, but the sum goes
//              to a separate buffer h_out = x + delta and x is left intact (training keeps each layer's
//              input h for the backward of the norm before it, as llm.c's fused_residual_forward does).
//   backward:  dx = rstd·w·dy − x · rstd³/dim · Σ_j dy_j w_j x_j      (activation grad: WRITTEN, =)
//              ACCUMULATE_DX (define): dx += instead, the one deliberate exception, for the residual
//              stream, whose gradient already holds the skip path's term (llm.c's layernorm_backward
//              adds into dinp the same way); it saves a separate add pass.
//   dw:        dw += Σ_rows dy · x · rstd                              (parameter grad: ACCUMULATED, +=)
//
// Gradient rule (llm.c): parameter grads are accumulated (+=), activation grads are written (=).
//
// Layout: a workgroup of WG threads handles WG / T rows, T threads (a power of two, the override
// constant, chosen from dim by the TS module) per row; each thread strides over the row, the T partial
// sums are combined by a fixed tree in workgroup memory (deterministic). VEC4 (a define, used when dim is
// a multiple of 4) makes the arrays vec4<f32>; `units` counts vec4s then. Rows are reread for the second
// pass (each thread rereads exactly what it read or wrote itself, so the residual variant needs no
// barrier). dw is two passes without atomics: per-(column block, row chunk) partials, then an ordered sum.

#if VEC4
alias V = vec4<f32>;
fn hsum(v: V) -> f32 { return v.x + v.y + v.z + v.w; }
#else
alias V = f32;
fn hsum(v: V) -> f32 { return v; }
#endif

struct Params {
  rows: u32,
  units: u32,       // row length in units of V
  dim: u32,         // row length in elements
  eps: f32,
  chunk_rows: u32,  // dw: rows per partial sum
  chunks: u32,      // dw: number of row chunks
  _pad0: u32,
  _pad1: u32,
}

override WG: u32 = 256u;
override T: u32 = 64u;       // threads per row (power of two, ≤ WG)
override COLS: u32 = 64u;    // dw: columns (units) per workgroup
override LANES: u32 = 4u;    // dw: row lanes per workgroup

@group(0) @binding(0) var<uniform> params: Params;

// forward
#if RESIDUAL
@group(0) @binding(1) var<storage, read_write> fx: array<V>;   // h: h += delta, written back
@group(0) @binding(5) var<storage, read> delta: array<V>;
#elif RESIDUAL_OUT
@group(0) @binding(1) var<storage, read> fx: array<V>;
@group(0) @binding(5) var<storage, read> delta: array<V>;
@group(0) @binding(6) var<storage, read_write> hout: array<V>;  // h_out = x + delta
#else
@group(0) @binding(1) var<storage, read> fx: array<V>;
#endif
@group(0) @binding(2) var<storage, read> fw: array<V>;
@group(0) @binding(3) var<storage, read_write> fy: array<V>;
@group(0) @binding(4) var<storage, read_write> frstd: array<f32>;

// backward (dx) and dw partials
@group(0) @binding(1) var<storage, read> bdy: array<V>;
@group(0) @binding(2) var<storage, read> bx: array<V>;
@group(0) @binding(3) var<storage, read> brstd: array<f32>;
@group(0) @binding(4) var<storage, read> bw: array<V>;
@group(0) @binding(5) var<storage, read_write> bdx: array<V>;
@group(0) @binding(4) var<storage, read_write> partial: array<V>;

// dw reduce
@group(0) @binding(1) var<storage, read> partial_in: array<V>;
@group(0) @binding(2) var<storage, read_write> dw: array<V>;

var<workgroup> red: array<f32, WG>;

// Sums v over the T threads of each row segment; every thread of the workgroup must call it.
fn segment_sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  let tl = lid % T;
  for (var s = T / 2u; s > 0u; s = s / 2u) {
    if (tl < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let total = red[lid - tl];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(WG)
fn rmsnorm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let tl = lid % T;
  let row = (wg.y * nwg.x + wg.x) * (WG / T) + lid / T;
  let valid = row < params.rows;
  let base = row * params.units;
  var ss = 0.0;
  if (valid) {
    for (var u = tl; u < params.units; u += T) {
#if RESIDUAL
      let v = fx[base + u] + delta[base + u];
      fx[base + u] = v;
#elif RESIDUAL_OUT
      let v = fx[base + u] + delta[base + u];
      hout[base + u] = v;
#else
      let v = fx[base + u];
#endif
      ss += hsum(v * v);
    }
  }
  let total = segment_sum(lid, ss);
  if (!valid) { return; }
  let r = 1.0 / sqrt(total / f32(params.dim) + params.eps);
  for (var u = tl; u < params.units; u += T) {
#if RESIDUAL_OUT
    let v = hout[base + u];
#else
    let v = fx[base + u];
#endif
    fy[base + u] = (v * r) * fw[u];
  }
  if (tl == 0u) { frstd[row] = r; }
}

@compute @workgroup_size(WG)
fn rmsnorm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let tl = lid % T;
  let row = (wg.y * nwg.x + wg.x) * (WG / T) + lid / T;
  let valid = row < params.rows;
  let base = row * params.units;
  var dot = 0.0;
  if (valid) {
    for (var u = tl; u < params.units; u += T) { dot += hsum(bdy[base + u] * bw[u] * bx[base + u]); }
  }
  let total = segment_sum(lid, dot);
  if (!valid) { return; }
  let r = brstd[row];
  let c = r * r * r * total / f32(params.dim);
  for (var u = tl; u < params.units; u += T) {
    let g = r * bw[u] * bdy[base + u] - c * bx[base + u];
#if ACCUMULATE_DX
    bdx[base + u] = bdx[base + u] + g;
#else
    bdx[base + u] = g;
#endif
  }
}

// dw = Σ_rows dy·x·rstd as colsum.wgsl's two passes (the same code as the bias gradient's).
fn colsum_term(r: u32, c: u32) -> V { return bdy[r * params.units + c] * bx[r * params.units + c] * brstd[r]; }
fn colsum_write_partial(chunk: u32, c: u32, v: V) { partial[chunk * params.units + c] = v; }
fn colsum_read_partial(chunk: u32, c: u32) -> V { return partial_in[chunk * params.units + c]; }
fn colsum_finish(c: u32, v: V) { dw[c] = dw[c] + v; }
#include "colsum.wgsl"

// workgroup (x = column block, y = row chunk); thread = (column in block, row lane).
@compute @workgroup_size(COLS * LANES)
fn rmsnorm_dw_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  colsum_partial(wg, lid, params.rows, params.units, params.chunk_rows);
}

@compute @workgroup_size(COLS * LANES)
fn rmsnorm_dw_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  colsum_reduce(wg, lid, params.units, params.chunks);
}
