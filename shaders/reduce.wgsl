// Deterministic reductions: sum, sum of squares, max (and the 2-norm) over the rows of a matrix or over a
// whole (sub-range of a) buffer. No float atomics: every result is a fixed tree over a fixed assignment of
// elements to threads, so the same shape gives bit-identical results run to run.
//
// This file has two parts:
//  1. Workgroup helpers (workgroup_sum / workgroup_max over REDUCE_WG threads through workgroup memory),
//     always emitted. cross_entropy.wgsl and adamw.wgsl `#include "reduce.wgsl"` to reuse them.
//  2. Bindings and entry points, emitted only when REDUCE_KERNELS is defined (reduce.ts sets it), so that
//     an including file does not inherit them:
//       reduce_rows     out[r] = scale · fin(⊕_j f(x[r·row_stride + j]))    one workgroup per row
//       reduce_partial  partials[w] = ⊕ f(x[i]) over workgroup w's contiguous slice of [offset, offset+length)
//       reduce_final    out[out_index] = scale · fin(⊕ partials[w])          one workgroup
//     with f = x or x² (SQUARE), ⊕ = + or max (MAX), fin = identity or sqrt (SQRT).
// Reductions produce activations/statistics: outputs are written (=), never accumulated.
//
// REDUCE_WG must be a power of two (the tree halves it); the TS module only passes powers of two.

override REDUCE_WG: u32 = 256u;

var<workgroup> reduce_scratch: array<f32, REDUCE_WG>;

// The lowest finite f32: the identity of max (WGSL has no infinity literal). A max over an empty set or
// over values that are all -inf gives this value.
const REDUCE_LOWEST: f32 = -3.4028234e38;

// Sum of `x` over the workgroup; every invocation gets the result. Call from uniform control flow.
fn workgroup_sum(x: f32, lid: u32) -> f32 {
  reduce_scratch[lid] = x;
  workgroupBarrier();
  for (var s = REDUCE_WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { reduce_scratch[lid] = reduce_scratch[lid] + reduce_scratch[lid + s]; }
    workgroupBarrier();
  }
  let r = reduce_scratch[0];
  workgroupBarrier(); // the scratch may be reused right after
  return r;
}

// Max of `x` over the workgroup; every invocation gets the result. Call from uniform control flow.
fn workgroup_max(x: f32, lid: u32) -> f32 {
  reduce_scratch[lid] = x;
  workgroupBarrier();
  for (var s = REDUCE_WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { reduce_scratch[lid] = max(reduce_scratch[lid], reduce_scratch[lid + s]); }
    workgroupBarrier();
  }
  let r = reduce_scratch[0];
  workgroupBarrier();
  return r;
}

#if REDUCE_KERNELS

struct Params {
  // reduce_rows: rows, cols, row_stride (elements between row starts), offset of row 0.
  // reduce_partial: length in `cols`, offset, elements per workgroup in `row_stride`, `rows` unused.
  // reduce_final: number of partials in `cols`.
  rows: u32,
  cols: u32,
  row_stride: u32,
  offset: u32,
  out_index: u32,
  scale: f32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn elem(v: f32) -> f32 {
#if SQUARE
  return v * v;
#else
  return v;
#endif
}

fn identity() -> f32 {
#if MAX
  return REDUCE_LOWEST;
#else
  return 0.0;
#endif
}

fn combine(a: f32, b: f32) -> f32 {
#if MAX
  return max(a, b);
#else
  return a + b;
#endif
}

fn workgroup_combine(v: f32, lid: u32) -> f32 {
#if MAX
  return workgroup_max(v, lid);
#else
  return workgroup_sum(v, lid);
#endif
}

fn finish(v: f32) -> f32 {
#if SQRT
  return params.scale * sqrt(v);
#else
  return params.scale * v;
#endif
}

@compute @workgroup_size(REDUCE_WG)
fn reduce_rows(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row = wg.y * nwg.x + wg.x;
  // Uniform per workgroup, so the barriers below stay in uniform control flow.
  if (row >= params.rows) { return; }
  let base = params.offset + row * params.row_stride;
  var acc = identity();
  for (var j = lid; j < params.cols; j += REDUCE_WG) { acc = combine(acc, elem(x[base + j])); }
  let r = workgroup_combine(acc, lid);
  if (lid == 0u) { out[params.out_index + row] = finish(r); }
}

@compute @workgroup_size(REDUCE_WG)
fn reduce_partial(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let per = params.row_stride;
  let begin = wg.x * per;
  let end = min(begin + per, params.cols);
  var acc = identity();
  for (var i = begin + lid; i < end; i += REDUCE_WG) { acc = combine(acc, elem(x[params.offset + i])); }
  let r = workgroup_combine(acc, lid);
  if (lid == 0u) { out[wg.x] = r; }
}

@compute @workgroup_size(REDUCE_WG)
fn reduce_final(@builtin(local_invocation_index) lid: u32) {
  // The partials are already squared when SQUARE: combine them as they are.
  var acc = identity();
  for (var i = lid; i < params.cols; i += REDUCE_WG) { acc = combine(acc, x[i]); }
  let r = workgroup_combine(acc, lid);
  if (lid == 0u) { out[params.out_index] = finish(r); }
}

#endif
