// The rank-r products of a LoRA adapter on a linear layer Y = X·Wᵀ + s·dropout(X)·Aᵀ·Bᵀ (s = alpha / r,
// A [r, in], B [out, r]). The base product and the +s·U·Bᵀ epilogue live in quant4.wgsl (4-bit W, fused)
// or matmul.wgsl (f32 W); this file holds the three products that touch dropout(X), one tiled kernel
// `lora_mm` with a MODE define:
//
//   MODE == XA   U  = dropout(X) · Aᵀ                    [M, r]   (forward; U is kept for the backward)
//   MODE == GB   G  = dY · B                             [M, r]   (backward)
//   MODE == DX   dX += s · mask ⊙ (G · A)                [M, in]  (adds the adapter path onto the base dX)
//   MODE == DB   dB += s · dYᵀ · U                       [out, r]
//   MODE == DA   dA += s · Gᵀ · dropout(X)               [r, in]
//
// All but DX have a small output and a long reduction (in, out or tokens), so on GPUs they run split-K
// (SPLIT): workgroup z reduces its slice [z·chunk, (z+1)·chunk) into partials[z] (written), and
// `lora_reduce` adds the slices in order and applies the epilogue: deterministic, no float atomics. On CPU
// adapters (SOFTWARE) each is one barrier-free pass.
//
// PANEL (`lora_panel`, the same four products in one dispatch each, no partials and no reduce pass): a
// workgroup owns a 16 × 64 panel of C and splits the reduction among its 4 groups of 64 invocations, which
// add their sums in workgroup memory in a fixed order (deterministic). Why: each dispatch costs ~10–20 µs on
// the H100 whatever its size (Dawn puts a barrier between dependent dispatches), and a split product with its
// reduce is two of them for a 0.5 GFLOP product; the panels give 128 workgroups wherever C has 2048 rows
// or columns.
//
// Gradient rule (llm.c): parameter grads are accumulated (dA +=, and dB += in lora.ts); activation grads
// are written: dX is written by the base path first, and this kernel then adds the adapter's term.
//
// Dropout (lora_dropout p) needs no stored mask: element (m, k) of X is kept when
// hash(seed, m·in + k) ≥ threshold (= p·2^32) and then scaled by 1/(1-p); the backward regenerates the
// same mask from the seed. The hash (lowbias32 twice, keyed by the seed) is mirrored in lora.ts.

struct Params {
  rows: u32,        // rows of the output C
  cols: u32,        // columns of the output C (its row stride)
  red: u32,         // reduction length
  K: u32,           // in features: row stride of X and A, and the dropout index stride
  R: u32,           // rank: row stride of G
  s: f32,           // alpha / r
  seed: u32,
  threshold: u32,   // dropped when hash < threshold
  keep_scale: f32,  // 1 / (1 - p)
  chunk: u32,       // SPLIT: reduction length per slice
  N: u32,           // out features: row stride of dY
  slices: u32,      // lora_reduce: number of slices
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;         // XA: X; GB: dY; DX: G; DB: dY; DA: G  (reduce: partials)
#if MODE != REDUCE
@group(0) @binding(2) var<storage, read> b: array<f32>;         // XA: A; GB: B;  DX: A; DB: U;  DA: X
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;   // XA: U; GB: G;  DX: dX; DB: dB; DA: dA (SPLIT: partials)

#include "dropout.wgsl"

// The factor dropout applies to X[m, k]: 0 or 1/(1-p) (always 1 without DROPOUT).
fn keep(m: u32, k: u32) -> f32 {
#if DROPOUT
  return select(params.keep_scale, 0.0, dropout_hash(params.seed, m * params.K + k) < params.threshold);
#else
  return 1.0;
#endif
}

#if MODE != REDUCE
#if !PANEL
const THREAD: u32 = 4u;
#if SOFTWARE
// 8×8 invocations: rank 16 would leave three quarters of a 64-wide tile's invocations idle, and a CPU
// schedules a workgroup's invocations together.
const TILE: u32 = 32u;
#else
const TILE: u32 = 64u;
#endif
const TILE_R: u32 = 16u;
const THREADS: u32 = (TILE / THREAD) * (TILE / THREAD);
// Elements of each operand's tile a thread stages per step.
const STAGE: u32 = TILE * TILE_R / THREADS;
// Rows padded by 4 (keeps vec4 alignment) against bank conflicts on the transposing stores.
const PAD: u32 = 4u;
var<workgroup> tile_a: array<vec4<f32>, TILE_R * (TILE + PAD) / 4u>;  // [red][row]
var<workgroup> tile_b: array<vec4<f32>, TILE_R * (TILE + PAD) / 4u>;  // [red][col]

fn store_a(t: u32, i: u32, v: f32) {
  tile_a[(t * (TILE + PAD) + i) / 4u][i % 4u] = v;
}
fn store_b(t: u32, j: u32, v: f32) {
  tile_b[(t * (TILE + PAD) + j) / 4u][j % 4u] = v;
}
#endif

// A operand: row i (of C), reduction index t (in range).
fn raw_a(i: u32, t: u32) -> f32 {
#if MODE == XA
  return a[i * params.K + t] * keep(i, t);
#elif MODE == GB
  return a[i * params.N + t];
#elif MODE == DB
  return a[t * params.N + i];
#elif MODE == DA
  return a[t * params.R + i];
#else
  return a[i * params.R + t];
#endif
}

// B operand: reduction index t, column j (of C) (in range).
fn raw_b(t: u32, j: u32) -> f32 {
#if MODE == XA
  return b[j * params.K + t];
#elif MODE == GB || MODE == DB
  return b[t * params.R + j];
#elif MODE == DA
  return b[t * params.K + j] * keep(t, j);
#else
  return b[t * params.K + j];
#endif
}

// The same, zero outside C's rows / columns and past the slice's end (the tiles' ragged edges).
fn load_a(i: u32, t: u32, t_end: u32) -> f32 {
  if (i >= params.rows || t >= t_end) { return 0.0; }
  return raw_a(i, t);
}
fn load_b(t: u32, j: u32, t_end: u32) -> f32 {
  if (t >= t_end || j >= params.cols) { return 0.0; }
  return raw_b(t, j);
}

// Tile coordinates (reduction index, row or column) of staging slot idx of a tile `edge` rows (columns) by
// `depth` reduction steps: consecutive threads take consecutive addresses of each operand's stored layout
// (lora_mm and lora_panel stage their tiles alike).
fn slot_a_of(idx: u32, edge: u32, depth: u32) -> vec2<u32> {
#if MODE == DA || MODE == DB
  return vec2<u32>(idx / edge, idx % edge);
#else
  return vec2<u32>(idx % depth, idx / depth);
#endif
}
fn slot_b_of(idx: u32, edge: u32, depth: u32) -> vec2<u32> {
#if MODE == XA
  return vec2<u32>(idx % depth, idx / depth);
#else
  return vec2<u32>(idx / edge, idx % edge);
#endif
}

#if !PANEL
fn slot_a(idx: u32) -> vec2<u32> { return slot_a_of(idx, TILE, TILE_R); }
fn slot_b(idx: u32) -> vec2<u32> { return slot_b_of(idx, TILE, TILE_R); }

// Register-staged loads: the next reduction step's operands are read from global memory while the
// current step is multiplied (the products are skinny and short per workgroup, so load latency, not
// arithmetic, bounded them).
fn fetch(pa: ptr<function, array<f32, STAGE>>, pb: ptr<function, array<f32, STAGE>>, row0: u32, col0: u32, t0: u32, t_end: u32, tid: u32) {
  for (var u = 0u; u < STAGE; u++) {
    let sa = slot_a(u * THREADS + tid);
    (*pa)[u] = load_a(row0 + sa.y, t0 + sa.x, t_end);
    let sb = slot_b(u * THREADS + tid);
    (*pb)[u] = load_b(t0 + sb.x, col0 + sb.y, t_end);
  }
}
fn commit(pa: ptr<function, array<f32, STAGE>>, pb: ptr<function, array<f32, STAGE>>, tid: u32) {
  for (var u = 0u; u < STAGE; u++) {
    let sa = slot_a(u * THREADS + tid);
    store_a(sa.x, sa.y, (*pa)[u]);
    let sb = slot_b(u * THREADS + tid);
    store_b(sb.x, sb.y, (*pb)[u]);
  }
}

@compute @workgroup_size(TILE / THREAD, TILE / THREAD)
fn lora_mm(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let S4 = (TILE + PAD) / 4u;
  let row0 = wg.y * TILE;
  let col0 = wg.x * TILE;
#if SOFTWARE
  var acc = array<vec4<f32>, THREAD>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
#else
  var acc: array<array<f32, THREAD>, THREAD>;
  for (var i = 0u; i < THREAD; i++) {
    for (var j = 0u; j < THREAD; j++) { acc[i][j] = 0.0; }
  }
#endif
#if SPLIT
  let t_begin = wg.z * params.chunk;
  let t_end = min(params.red, t_begin + params.chunk);
#else
  let t_begin = 0u;
  let t_end = params.red;
#endif
#if SOFTWARE
  // CPU adapters (SwiftShader): the same 4×4 block per invocation, its operands read straight from the
  // buffers: no workgroup memory, no barriers (the expensive part there), so a block wholly outside C
  // (rank 16 fills a quarter of a 64-wide tile) can leave at once.
  if (row0 + lid.y * THREAD >= params.rows || col0 + lid.x * THREAD >= params.cols) { return; }
  // Rows / columns past the edge read the last valid one (their results are not stored): no branch per load.
  let ri = min(vec4<u32>(row0 + lid.y * THREAD) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.rows - 1u));
  let cj = min(vec4<u32>(col0 + lid.x * THREAD) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.cols - 1u));
  for (var t = t_begin; t < t_end; t++) {
    let av = vec4<f32>(raw_a(ri.x, t), raw_a(ri.y, t), raw_a(ri.z, t), raw_a(ri.w, t));
    let bv = vec4<f32>(raw_b(t, cj.x), raw_b(t, cj.y), raw_b(t, cj.z), raw_b(t, cj.w));
    acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
    acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
    acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
    acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
  }
#else
  var pa: array<f32, STAGE>;
  var pb: array<f32, STAGE>;
  fetch(&pa, &pb, row0, col0, t_begin, t_end, tid);
  for (var t0 = t_begin; t0 < t_end; t0 += TILE_R) {
    commit(&pa, &pb, tid);
    workgroupBarrier();
    if (t0 + TILE_R < t_end) { fetch(&pa, &pb, row0, col0, t0 + TILE_R, t_end, tid); }
    for (var tt = 0u; tt < TILE_R; tt++) {
      let ra = tile_a[tt * S4 + lid.y];
      let rb = tile_b[tt * S4 + lid.x];
      for (var i = 0u; i < THREAD; i++) {
        for (var j = 0u; j < THREAD; j++) { acc[i][j] = fma(ra[i], rb[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
#endif
  for (var i = 0u; i < THREAD; i++) {
    let row = row0 + lid.y * THREAD + i;
    if (row >= params.rows) { continue; }
    for (var j = 0u; j < THREAD; j++) {
      let col = col0 + lid.x * THREAD + j;
      if (col >= params.cols) { continue; }
      let at = row * params.cols + col;
#if SPLIT
      c[wg.z * params.rows * params.cols + at] = acc[i][j];
#elif MODE == GB && ACCUMULATE
      c[at] = c[at] + acc[i][j];   // G summed over the outputs that share one A (a packed qkv)
#elif MODE == XA || MODE == GB
      c[at] = acc[i][j];
#elif MODE == DX
      c[at] = c[at] + params.s * keep(row, col) * acc[i][j];
#else
      c[at] = c[at] + params.s * acc[i][j];
#endif
    }
  }
}
#endif
#endif

#if PANEL
const P_ROWS: u32 = 16u;    // rows of C per workgroup
const P_COLS: u32 = 64u;    // columns of C per workgroup
const P_T: u32 = 16u;       // reduction steps staged at a time
const P_GROUPS: u32 = 4u;   // invocation groups, each a quarter of the reduction
const P_GROUP: u32 = 64u;   // invocations per group: 4 × 16, each 4 rows × 4 columns
const P_A_STAGE: u32 = P_ROWS * P_T / P_GROUP;   // A values each invocation stages per step (4)
const P_B_STAGE: u32 = P_COLS * P_T / P_GROUP;   // B values (16)
// Per group: A as [t][row] (4 vec4 a step), B as [t][col] (16 vec4); 20 KiB for the 4 groups, reused for the
// groups' sums at the end (4 × 64 invocations × 16 values).
var<workgroup> panel: array<vec4<f32>, P_GROUPS * P_T * (P_ROWS + P_COLS) / 4u>;

fn pa_at(kg: u32, t: u32, row: u32) -> u32 { return (kg * P_T + t) * (P_ROWS / 4u) + row / 4u; }
fn pb_at(kg: u32, t: u32, col: u32) -> u32 { return P_GROUPS * P_T * (P_ROWS / 4u) + (kg * P_T + t) * (P_COLS / 4u) + col / 4u; }

fn panel_slot_a(s: u32) -> vec2<u32> { return slot_a_of(s, P_ROWS, P_T); }
fn panel_slot_b(s: u32) -> vec2<u32> { return slot_b_of(s, P_COLS, P_T); }

// Register-staged loads of invocation tl of a group: the step at t0 is read while the current one is multiplied.
fn panel_fetch(pa: ptr<function, array<f32, P_A_STAGE>>, pb: ptr<function, array<f32, P_B_STAGE>>, row0: u32, col0: u32, t0: u32, t_end: u32, tl: u32) {
  for (var u = 0u; u < P_A_STAGE; u++) {
    let sa = panel_slot_a(u * P_GROUP + tl);
    (*pa)[u] = load_a(row0 + sa.y, t0 + sa.x, t_end);
  }
  for (var u = 0u; u < P_B_STAGE; u++) {
    let sb = panel_slot_b(u * P_GROUP + tl);
    (*pb)[u] = load_b(t0 + sb.x, col0 + sb.y, t_end);
  }
}
fn panel_commit(pa: ptr<function, array<f32, P_A_STAGE>>, pb: ptr<function, array<f32, P_B_STAGE>>, kg: u32, tl: u32) {
  for (var u = 0u; u < P_A_STAGE; u++) {
    let sa = panel_slot_a(u * P_GROUP + tl);
    panel[pa_at(kg, sa.x, sa.y)][sa.y % 4u] = (*pa)[u];
  }
  for (var u = 0u; u < P_B_STAGE; u++) {
    let sb = panel_slot_b(u * P_GROUP + tl);
    panel[pb_at(kg, sb.x, sb.y)][sb.y % 4u] = (*pb)[u];
  }
}

@compute @workgroup_size(256)
fn lora_panel(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row0 = wg.y * P_ROWS;
  let col0 = wg.x * P_COLS;
  let kg = tid / P_GROUP;
  let tl = tid % P_GROUP;
  let ty = tl / 16u;   // rows 4·ty .. 4·ty + 3 of the panel
  let tx = tl % 16u;   // columns 4·tx .. 4·tx + 3
  // Group kg reduces [kg·chunk, (kg + 1)·chunk) ∩ [0, red); every group runs the same number of steps.
  let chunk = ((params.red + P_GROUPS * P_T - 1u) / (P_GROUPS * P_T)) * P_T;
  let t_begin = kg * chunk;
  let t_end = min(params.red, t_begin + chunk);
  var acc: array<vec4<f32>, 4>;
  var ra: array<f32, P_A_STAGE>;
  var rb: array<f32, P_B_STAGE>;
  panel_fetch(&ra, &rb, row0, col0, t_begin, t_end, tl);
  for (var step = 0u; step < chunk; step += P_T) {
    panel_commit(&ra, &rb, kg, tl);
    workgroupBarrier();
    if (step + P_T < chunk) { panel_fetch(&ra, &rb, row0, col0, t_begin + step + P_T, t_end, tl); }
    for (var t = 0u; t < P_T; t++) {
      let av = panel[pa_at(kg, t, 4u * ty)];
      let bv = panel[pb_at(kg, t, 4u * tx)];
      acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
      acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
      acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
      acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
    }
    workgroupBarrier();
  }
  // The groups' sums through workgroup memory, added in group order by group 0.
  if (kg > 0u) {
    for (var i = 0u; i < 4u; i++) { panel[((kg - 1u) * P_GROUP + tl) * 4u + i] = acc[i]; }
  }
  workgroupBarrier();
  if (kg > 0u) { return; }
  for (var g = 0u; g < P_GROUPS - 1u; g++) {
    for (var i = 0u; i < 4u; i++) { acc[i] += panel[(g * P_GROUP + tl) * 4u + i]; }
  }
  for (var i = 0u; i < 4u; i++) {
    let row = row0 + 4u * ty + i;
    if (row >= params.rows) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let col = col0 + 4u * tx + j;
      if (col >= params.cols) { continue; }
      let at = row * params.cols + col;
#if MODE == GB && ACCUMULATE
      c[at] = c[at] + acc[i][j];
#elif MODE == XA || MODE == GB
      c[at] = acc[i][j];
#else
      c[at] = c[at] + params.s * acc[i][j];
#endif
    }
  }
}
#endif

#if MODE == REDUCE
// Sums the split-K slices a[z][e] in order: c = Σ (ACCUMULATE: c += s · Σ). 2-D grid of 256-thread groups.
@compute @workgroup_size(256)
fn lora_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * 256u;
  let n = params.rows * params.cols;
  if (e >= n) { return; }
  var t = 0.0;
  for (var z = 0u; z < params.slices; z++) { t += a[z * n + e]; }
#if ACCUMULATE
  c[e] = c[e] + params.s * t;
#else
  c[e] = t;
#endif
}
#endif
