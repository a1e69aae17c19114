// Elementwise ops of the residual stream: add (out = a + b), in-place add (a += b), in-place scale
// (a *= s), copy (out = a), bias add over rows (y[t, :] += bias) and its backward (dbias += Σ_t dy[t, :]).
//
// Gradient rule (llm.c): parameter grads are accumulated (+=), activation grads are written (=). Here the
// only gradient is dbias, a parameter grad: bias_backward_reduce ACCUMULATES into dbias. The backward of
// add is the identity and of scale is another scale, so they need no entry points of their own.
//
// VEC4 (a define) makes every array an array of vec4<f32> and every count below a count of vec4s; the TS
// module uses it for the multiple-of-4 bulk and finishes a ragged tail with a second, scalar dispatch
// (params.start skips the part already done). Workgroups are laid out in a 2D grid (more than 65535 of
// them are needed for big tensors): group = wg.y * num_workgroups.x + wg.x.
//
// bias_backward is deterministic without atomics: pass 1 (bias_backward_partial) gives each workgroup a
// block of COLS columns and a chunk of params.chunk_rows rows; its LANES row lanes each sum a fixed
// subset of rows in order and are combined in a fixed order into partial[chunk, col]. Pass 2
// (bias_backward_reduce) sums the chunks in order and adds the result to dbias.

#if VEC4
alias V = vec4<f32>;
#else
alias V = f32;
#endif

struct Params {
  n: u32,           // units (f32 or vec4) to process, counted from 0 (the dispatch covers [start, n))
  start: u32,       // first unit of this dispatch
  dim: u32,         // row length in units (bias ops)
  rows: u32,        // rows (bias backward)
  scale: f32,       // scale_inplace
  chunk_rows: u32,  // rows per partial sum (bias backward)
  chunks: u32,      // number of row chunks (bias backward)
  _pad: u32,
}

override WG: u32 = 256u;
override COLS: u32 = 64u;
override LANES: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;

// Bindings per entry point (several names share a binding number; each entry uses one set):
//   add:                   a, b, out          copy:                 a, out
//   add_inplace:           acc, b             scale_inplace:        acc
//   bias_add:              acc, bias          bias_backward_partial: dy, partial
//   bias_backward_reduce:  partial_in, dbias
@group(0) @binding(1) var<storage, read> a: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, read_write> out: array<V>;
@group(0) @binding(2) var<storage, read_write> copy_out: array<V>;
@group(0) @binding(1) var<storage, read_write> acc: array<V>;
@group(0) @binding(2) var<storage, read> bias: array<V>;
@group(0) @binding(1) var<storage, read> dy: array<V>;
@group(0) @binding(2) var<storage, read_write> partial: array<V>;
@group(0) @binding(1) var<storage, read> partial_in: array<V>;
@group(0) @binding(2) var<storage, read_write> dbias: array<V>;

fn unit_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return params.start + (wg.y * nwg.x + wg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = unit_index(wg, nwg, lid);
  if (i < params.n) { out[i] = a[i] + b[i]; }
}

@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = unit_index(wg, nwg, lid);
  if (i < params.n) { acc[i] = acc[i] + b[i]; }
}

@compute @workgroup_size(WG)
fn scale_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = unit_index(wg, nwg, lid);
  if (i < params.n) { acc[i] = acc[i] * params.scale; }
}

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = unit_index(wg, nwg, lid);
  if (i < params.n) { copy_out[i] = a[i]; }
}

@compute @workgroup_size(WG)
fn bias_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = unit_index(wg, nwg, lid);
  if (i < params.n) { acc[i] = acc[i] + bias[i % params.dim]; }
}

// dbias = Σ_t dy[t, :] as colsum.wgsl's two passes.
fn colsum_term(r: u32, c: u32) -> V { return dy[r * params.dim + c]; }
fn colsum_write_partial(chunk: u32, c: u32, v: V) { partial[chunk * params.dim + c] = v; }
fn colsum_read_partial(chunk: u32, c: u32) -> V { return partial_in[chunk * params.dim + c]; }
fn colsum_finish(c: u32, v: V) { dbias[c] = dbias[c] + v; }
#include "colsum.wgsl"

// workgroup (x = column block, y = row chunk); thread = (column in block, row lane).
@compute @workgroup_size(COLS * LANES)
fn bias_backward_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  colsum_partial(wg, lid, params.rows, params.dim, params.chunk_rows);
}

@compute @workgroup_size(COLS * LANES)
fn bias_backward_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  colsum_reduce(wg, lid, params.dim, params.chunks);
}
