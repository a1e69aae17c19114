// Tensor-core matmuls for the frozen 4-bit base: int8 × int8 → int32 subgroup matrices
// (chromium_experimental_subgroup_matrix, 16×16×32 tiles; on NVIDIA these run on the tensor cores).
//
// Both operands become int8 with one f32 scale per row of the operand:
//   activations (X forward, dY backward): per token (row), absmax / 127, by `quantize_rows` (a fused pass
//     that writes the packed int8 rows and the scale; rows padded with zeros to a multiple of 64 bytes).
//     RESIDUAL adds a second level, the rounding residual on a 254× finer grid (x ≈ (hi + lo/254)·scale):
//     two products per output, one activation grid error 254× smaller (see docs/int8-matmul.md).
//   weights: the 4-bit codes are re-quantized to int8 while a tile is staged in workgroup memory (never
//     materialised): forward per output row n of W (bound = the largest |w| its group scales allow: max over
//     groups of max(|min|, |min + 15·step|), by `q4_row_absmax`), backward per 64-column group of W (the same
//     bound over all rows, by `q4_col_absmax`), because there the rows of W are the reduction. A code c of a
//     group (step, min) becomes round(c·a + b) with (a, b) = (step, min)·127/bound: one fma per weight.
// The integer products are then exact (|sum| ≤ 127² · 131072 < 2³¹), so the one rounding beyond the
// int8 grids is the final f32 scaling: Y[m, n] = a[m] · c[n] · Σ_k xq[m, k] · wq[n, k].
// Why per-row and not per-64-group weight scales: a group scale varies along the reduction, so every 64
// steps the 16×16 integer tiles would go through workgroup memory to be rescaled (they are opaque); the
// per-row grid adds ≈ absmax/(127·√12) of noise per weight, well under the 4-bit grid's own error.
//
// Entry points (OP define):
//   quantize_rows  q[m, :] = round(src[m, off:off+cols] / a[m]), a[m] = absmax / 127      (any device)
//   q4_row_absmax  rowmax[n] = max over groups of row n's group bound above                  (any device)
//   q4_col_absmax  colmax[g] = max over rows n of the group bound above                     (any device)
//   q4_mma_fwd     Y[:, off:off+N] = X·Wᵀ (ACCUMULATE: +=), X as quantize_rows left it       (subgroup matrices)
//   q4_mma_dx      dX (+)= dY[:, off:off+N]·W                                               (subgroup matrices)
// PROBE_NO_STAGE / PROBE_HOIST / RAW_CODES are timing probes for bench/int8-matmul.bench.ts (wrong results).
// Layout of the matrix kernels: 256 invocations = 8 subgroups of 32 (the TypeScript side only picks
// this path where the subgroup size is fixed at 32), a 128×128 output tile per workgroup, each subgroup
// 64×32 of it (4×2 accumulators of 16×16), 64-deep stages double-buffered in workgroup memory with rows
// padded by 16 bytes (so the 16 rows a matrix load touches do not share banks).

#if OP == fwd || OP == dx
enable chromium_experimental_subgroup_matrix;
// Matrix offsets depend on the subgroup index: uniform within each subgroup (what the operations need), not
// across the workgroup (what the analysis can prove).
diagnostic(off, chromium.subgroup_matrix_uniformity);
#endif

struct Params {
  M: u32,      // rows of the activation (tokens)
  N: u32,      // rows of W in this block (forward: outputs; backward: the reduction)
  K: u32,      // in features of W (forward: the reduction; backward: outputs)
  ld: u32,     // row stride of Y (forward) or of dY (backward, quantize_rows: of src), in elements
  off: u32,    // first column of Y (forward) / of dY (backward, quantize_rows: of src) this block covers
  lda: u32,    // row stride of the int8 activation, in bytes (a multiple of 64)
  cols: u32,   // quantize_rows: columns to quantize
  lo: u32,     // RESIDUAL: byte offset of the second (residual) level within each activation row
}

@group(0) @binding(0) var<uniform> params: Params;

#include "q4_format.wgsl"

// |w| ≤ this for every code of a group with scale word `sw`.
fn group_absmax(sw: u32) -> f32 {
  let sc = group_scale(sw);
  return max(abs(sc.y), abs(sc.y + 15.0 * sc.x));
}

// ------------------------------------------------------------------------------------------------
#if OP == quantize_rows

@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;
@group(0) @binding(3) var<storage, read_write> scale: array<f32>;

var<workgroup> red: array<f32, 64>;

// One workgroup per row: absmax (tree reduce), then 4 codes per word.
@compute @workgroup_size(64)
fn quantize_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.M) { return; }  // workgroup-uniform
  let base = row * params.ld + params.off;
  var mx = 0.0;
  for (var c = lid; c < params.cols; c += 64u) { mx = max(mx, abs(src[base + c])); }
  red[lid] = mx;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let absmax = red[0];
  let inv = select(0.0, 127.0 / absmax, absmax > 0.0);
  if (lid == 0u) { scale[row] = absmax * (1.0 / 127.0); }
  let words = params.lda / 4u;   // per row (both levels)
#if RESIDUAL
  let level_words = params.lo / 4u;
#else
  let level_words = words;
#endif
  for (var w = lid; w < level_words; w += 64u) {
    var packed = 0u;
    var packed_lo = 0u;
    for (var j = 0u; j < 4u; j++) {
      let c = 4u * w + j;
      if (c < params.cols) {
        let t = src[base + c] * inv;
        let hi = clamp(round(t), -127.0, 127.0);
        packed |= (u32(i32(hi)) & 0xffu) << (8u * j);
#if RESIDUAL
        // The residual on a 254× finer grid: x ≈ (hi + lo/254) · scale, 15 bits in all.
        packed_lo |= (u32(i32(clamp(round((t - hi) * 254.0), -127.0, 127.0))) & 0xffu) << (8u * j);
#endif
      }
    }
    q[row * words + w] = packed;
#if RESIDUAL
    q[row * words + level_words + w] = packed_lo;
#endif
  }
}

#endif
// ------------------------------------------------------------------------------------------------
#if OP == col_absmax

@group(0) @binding(1) var<storage, read> sm: array<u32>;
@group(0) @binding(2) var<storage, read_write> colmax: array<f32>;

var<workgroup> red: array<f32, 256>;

// One workgroup per 64-column group g of W: max over the N rows of the group's bound.
@compute @workgroup_size(256)
fn q4_col_absmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = wid.x;
  let G = params.K / GROUP;
  var mx = 0.0;
  for (var n = lid; n < params.N; n += 256u) { mx = max(mx, group_absmax(sm[n * G + g])); }
  red[lid] = mx;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  if (lid == 0u) { colmax[g] = red[0]; }
}

#endif
// ------------------------------------------------------------------------------------------------
#if OP == row_absmax

@group(0) @binding(1) var<storage, read> sm: array<u32>;
@group(0) @binding(2) var<storage, read_write> rowmax: array<f32>;

// One invocation per W row: max over its groups of the group bound (the forward's int8 grid).
@compute @workgroup_size(64)
fn q4_row_absmax(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = gid.x;
  if (n >= params.N) { return; }
  let G = params.K / GROUP;
  var mx = 0.0;
  for (var g = 0u; g < G; g++) { mx = max(mx, group_absmax(sm[n * G + g])); }
  rowmax[n] = mx;
}

#endif
// ------------------------------------------------------------------------------------------------
#if OP == fwd || OP == dx

@group(0) @binding(1) var<storage, read> aq: array<vec4<u32>>;   // int8 activation rows, lda bytes each
@group(0) @binding(2) var<storage, read> ascale: array<f32>;     // its per-row scale
@group(0) @binding(3) var<storage, read> q: array<vec4<u32>>;    // W codes [N, K/32]
@group(0) @binding(4) var<storage, read> sm: array<u32>;         // W group scales [N, K/64]
@group(0) @binding(5) var<storage, read_write> y: array<f32>;    // Y [M, ld] (forward) or dX [M, K]
#if OP == dx
@group(0) @binding(6) var<storage, read> colmax: array<f32>;     // q4_col_absmax of this block [K/64]
#else
@group(0) @binding(6) var<storage, read> wmax: array<f32>;       // q4_row_absmax of this block [N]
#endif

const SG: u32 = 32u;        // subgroup size this layout assumes
const TILE: u32 = 128u;     // output columns per workgroup
#if RESIDUAL
// Activations in two levels (hi, residual): 64 activation rows per workgroup, staged as 128 rows (hi then lo).
const TILE_M: u32 = 64u;
#else
const TILE_M: u32 = 128u;   // activation rows per workgroup
#endif
const DEPTH: u32 = 64u;     // reduction depth of one stage
const A_ROW: u32 = 80u;     // bytes per staged activation row: 64 + 16 padding
const A_WORDS: u32 = TILE * A_ROW / 4u;          // one stage of the activation tile, in words (2560)
#if OP == fwd
// W tile as [n][k]: 128 rows of 64 codes (+16 bytes), read as the column-major right matrix.
const B_ROW: u32 = 80u;
const B_WORDS: u32 = TILE * B_ROW / 4u;          // 2560
#else
// W tile as [n][k]: 64 reduction rows of 128 outputs (+16 bytes), read as the row-major right matrix.
const B_ROW: u32 = 144u;
const B_WORDS: u32 = DEPTH * B_ROW / 4u;         // 2304
#endif
const STAGE_WORDS: u32 = A_WORDS + B_WORDS;
#if OP == fwd
const RIGHT_COL_MAJOR: bool = true;    // Wᵀ read from W's rows
#else
const RIGHT_COL_MAJOR: bool = false;   // W read as it is
#endif
// Two stages; the epilogue reuses the space: 8 subgroups × 4 tiles × 256 words = 8192 ≤ 2 · STAGE_WORDS.
var<workgroup> smem: array<i32, 2u * STAGE_WORDS>;
var<workgroup> wscale: array<f32, TILE>;   // forward: c[n] / 127 per W row; backward: per output column group (2 used)
var<workgroup> winv: array<f32, TILE>;     // 127 / c

alias Left = subgroup_matrix_left<i8, 32, 16>;
alias Right = subgroup_matrix_right<i8, 16, 32>;
alias Acc = subgroup_matrix_result<i32, 16, 16>;

// Codes 4j..4j+3 of a word (nibbles, low first) → four int8 on the weight's int8 grid: round(code·a + b),
// where (a, b) = (step, min) · 127/bound of the grid; |code·a + b| ≤ 127 by the choice of bound, so no clamp.
fn requant4(nibbles: u32, a: f32, b: f32) -> u32 {
  let c = vec4<f32>(vec4<u32>(nibbles, nibbles >> 4u, nibbles >> 8u, nibbles >> 12u) & vec4<u32>(15u));
#if RAW_CODES
  return pack4xI8(vec4<i32>(c));
#else
  return pack4xI8(vec4<i32>(round(fma(c, vec4<f32>(a), vec4<f32>(b)))));
#endif
}

// Registers holding the next stage while the current one is multiplied.
struct Staged {
  a0: vec4<u32>,
  a1: vec4<u32>,
  codes: vec4<u32>,
  sw: u32,
}

// This invocation's share of stage `s` (reduction offset r0 = s · 64): two 16-byte activation loads and one
// 16-byte load of 32 codes with their group scale word.
fn load_stage(lid: u32, m0: u32, o0: u32, r0: u32) -> Staged {
  var st: Staged;
  let a_row_vec4 = params.lda / 16u;
  for (var i = 0u; i < 2u; i++) {
    let idx = lid + 256u * i;       // 512 16-byte pieces: 128 staged rows × 4
#if RESIDUAL
    let m = m0 + lid / 4u;          // piece i of row m is level i (staged row 64·i + row)
    let level = i * (params.lo / 16u);
#else
    let m = m0 + idx / 4u;
    let level = 0u;
#endif
    var v = vec4<u32>(0u);
    if (m < params.M) { v = aq[m * a_row_vec4 + level + r0 / 16u + idx % 4u]; }
    if (i == 0u) { st.a0 = v; } else { st.a1 = v; }
  }
  let G = params.K / GROUP;
#if OP == fwd
  // 128 W rows × 2 pieces of 32 codes; the stage is one 64-group of every row.
  let n = o0 + lid / 2u;
  if (n < params.N) {
    st.codes = q[n * (params.K / 32u) + r0 / 32u + lid % 2u];
    st.sw = sm[n * G + r0 / GROUP];
  } else {
    st.codes = vec4<u32>(0u);
    st.sw = 0u;
  }
#else
  // 64 reduction rows of W × 4 pieces of 32 codes (128 output columns = 2 groups).
  let n = r0 + lid / 4u;
  let k = o0 + 32u * (lid % 4u);
  if (n < params.N && k < params.K) {
    st.codes = q[n * (params.K / 32u) + k / 32u];
    st.sw = sm[n * G + k / GROUP];
  } else {
    st.codes = vec4<u32>(0u);
    st.sw = 0u;
  }
#endif
  return st;
}

fn store_stage(lid: u32, st: Staged, buf: u32) {
  let base = buf * STAGE_WORDS;
  for (var i = 0u; i < 2u; i++) {
    let idx = lid + 256u * i;
    let at = base + (idx / 4u) * (A_ROW / 4u) + (idx % 4u) * 4u;
    let v = select(st.a1, st.a0, i == 0u);
    smem[at] = bitcast<i32>(v.x);
    smem[at + 1u] = bitcast<i32>(v.y);
    smem[at + 2u] = bitcast<i32>(v.z);
    smem[at + 3u] = bitcast<i32>(v.w);
  }
  let sc = group_scale(st.sw);
#if OP == fwd
  let row = lid / 2u;
  let inv = winv[row];
  let at = base + A_WORDS + row * (B_ROW / 4u) + (lid % 2u) * 8u;
#else
  let inv = winv[(lid % 4u) / 2u];
  let at = base + A_WORDS + (lid / 4u) * (B_ROW / 4u) + (lid % 4u) * 8u;
#endif
  let a = sc.x * inv;
  let b = sc.y * inv;
  for (var i = 0u; i < 4u; i++) {
    let word = st.codes[i];
    smem[at + 2u * i] = bitcast<i32>(requant4(word, a, b));
    smem[at + 2u * i + 1u] = bitcast<i32>(requant4(word >> 16u, a, b));
  }
}

// Where the subgroup's matrices of stage buffer `buf`, reduction step `ks` start (in int8 elements of smem):
// left tile i (16 activation rows), right tile j (16 output columns).
// With RESIDUAL, tile i is row tile i/2 of the subgroup's 32 rows, at level i%2 (0 hi, 1 residual): so the
// accumulators of row tile h are acc[4h..4h+3] (hi j0, hi j1, residual j0, residual j1), as without it.
fn left_at(buf: u32, sg_m: u32, i: u32, ks: u32) -> u32 {
#if RESIDUAL
  let row = (i % 2u) * 64u + sg_m * 32u + 16u * (i / 2u);
#else
  let row = sg_m * 64u + 16u * i;
#endif
  return 4u * (buf * STAGE_WORDS + row * (A_ROW / 4u)) + ks;
}

fn right_at(buf: u32, sg_o: u32, j: u32, ks: u32) -> u32 {
#if OP == fwd
  // Wᵀ as a 32×16 (k × n) matrix, column-major: column n is W row n, contiguous in k.
  return 4u * (buf * STAGE_WORDS + A_WORDS + (sg_o * 32u + 16u * j) * (B_ROW / 4u)) + ks;
#else
  // W as a 32×16 (n × k) matrix, row-major: row n, contiguous in k.
  return 4u * (buf * STAGE_WORDS + A_WORDS) + ks * B_ROW + sg_o * 32u + 16u * j;
#endif
}

@compute @workgroup_size(256)
#if OP == fwd
fn q4_mma_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let o0 = wid.x * TILE;   // first W row (output column)
  let depth_total = params.K;
#else
fn q4_mma_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let o0 = wid.x * TILE;   // first output column (input feature of W)
  let depth_total = params.N;
#endif
  let m0 = wid.y * TILE_M;
  let sg = lid / SG;
  let lane = lid % SG;
  let sg_m = sg / 4u;
  let sg_o = sg % 4u;

  // The weights' int8 grid.
#if OP == fwd
  // Per W row: the bound q4_row_absmax left for this block.
  if (lid < TILE) {
    var mx = 0.0;
    if (o0 + lid < params.N) { mx = wmax[o0 + lid]; }
    wscale[lid] = mx * (1.0 / 127.0);
    winv[lid] = select(0.0, 127.0 / mx, mx > 0.0);
  }
#else
  if (lid < 2u) {
    let g = o0 / GROUP + lid;
    var mx = 0.0;
    if (g < params.K / GROUP) { mx = colmax[g]; }
    wscale[lid] = mx * (1.0 / 127.0);
    winv[lid] = select(0.0, 127.0 / mx, mx > 0.0);
  }
#endif
  workgroupBarrier();

  // The subgroup's 4×2 tiles of 16×16 (RESIDUAL: 2×2 tiles × 2 levels), as named variables: arrays of
  // matrices indexed in loops were kept in addressable (local) memory by the driver.
  var acc0 = Acc(); var acc1 = Acc(); var acc2 = Acc(); var acc3 = Acc();
  var acc4 = Acc(); var acc5 = Acc(); var acc6 = Acc(); var acc7 = Acc();

  let stages = (depth_total + DEPTH - 1u) / DEPTH;
  store_stage(lid, load_stage(lid, m0, o0, 0u), 0u);
  workgroupBarrier();
#if PROBE_HOIST
  // Timing probe (wrong results): the operands of stage 0 reused by every stage.
  let h0 = subgroupMatrixLoad<Left>(&smem, left_at(0u, sg_m, 0u, 0u), false, A_ROW);
  let h1 = subgroupMatrixLoad<Left>(&smem, left_at(0u, sg_m, 1u, 0u), false, A_ROW);
  let h2 = subgroupMatrixLoad<Left>(&smem, left_at(0u, sg_m, 2u, 0u), false, A_ROW);
  let h3 = subgroupMatrixLoad<Left>(&smem, left_at(0u, sg_m, 3u, 0u), false, A_ROW);
  let hr0 = subgroupMatrixLoad<Right>(&smem, right_at(0u, sg_o, 0u, 0u), RIGHT_COL_MAJOR, B_ROW);
  let hr1 = subgroupMatrixLoad<Right>(&smem, right_at(0u, sg_o, 1u, 0u), RIGHT_COL_MAJOR, B_ROW);
#endif
  for (var s = 0u; s < stages; s++) {
    let more = s + 1u < stages;
    var next: Staged;
#if !PROBE_NO_STAGE
    if (more) { next = load_stage(lid, m0, o0, (s + 1u) * DEPTH); }
#endif
    let buf = s % 2u;
    for (var ks = 0u; ks < DEPTH; ks += 32u) {
#if PROBE_HOIST
      let l0 = h0; let l1 = h1; let l2 = h2; let l3 = h3; let r0 = hr0; let r1 = hr1;
#else
      let l0 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 0u, ks), false, A_ROW);
      let l1 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 1u, ks), false, A_ROW);
      let l2 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 2u, ks), false, A_ROW);
      let l3 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 3u, ks), false, A_ROW);
      let r0 = subgroupMatrixLoad<Right>(&smem, right_at(buf, sg_o, 0u, ks), RIGHT_COL_MAJOR, B_ROW);
      let r1 = subgroupMatrixLoad<Right>(&smem, right_at(buf, sg_o, 1u, ks), RIGHT_COL_MAJOR, B_ROW);
#endif
      acc0 = subgroupMatrixMultiplyAccumulate(l0, r0, acc0);
      acc1 = subgroupMatrixMultiplyAccumulate(l0, r1, acc1);
      acc2 = subgroupMatrixMultiplyAccumulate(l1, r0, acc2);
      acc3 = subgroupMatrixMultiplyAccumulate(l1, r1, acc3);
      acc4 = subgroupMatrixMultiplyAccumulate(l2, r0, acc4);
      acc5 = subgroupMatrixMultiplyAccumulate(l2, r1, acc5);
      acc6 = subgroupMatrixMultiplyAccumulate(l3, r0, acc6);
      acc7 = subgroupMatrixMultiplyAccumulate(l3, r1, acc7);
    }
#if !PROBE_NO_STAGE
    if (more) { store_stage(lid, next, (s + 1u) % 2u); }
#endif
    workgroupBarrier();
  }

  // Epilogue: the opaque tiles go through workgroup memory (4 at a time per subgroup) to be scaled.
  let region = sg * 1024u;
  for (var half = 0u; half < 2u; half++) {
    if (half == 0u) {
      subgroupMatrixStore(&smem, region, acc0, false, 16u);
      subgroupMatrixStore(&smem, region + 256u, acc1, false, 16u);
      subgroupMatrixStore(&smem, region + 512u, acc2, false, 16u);
      subgroupMatrixStore(&smem, region + 768u, acc3, false, 16u);
    } else {
      subgroupMatrixStore(&smem, region, acc4, false, 16u);
      subgroupMatrixStore(&smem, region + 256u, acc5, false, 16u);
      subgroupMatrixStore(&smem, region + 512u, acc6, false, 16u);
      subgroupMatrixStore(&smem, region + 768u, acc7, false, 16u);
    }
    workgroupBarrier();
#if RESIDUAL
    // Half h: row tile h, both column tiles, both levels (stored tiles 0, 1 hi; 2, 3 residual).
    for (var t = 0u; t < 2u; t++) {
      let ti = half;
      let tj = t;
      for (var e = lane; e < 256u; e += SG) {
        let m = m0 + sg_m * 32u + 16u * ti + e / 16u;
        let sum = f32(smem[region + 256u * t + e]) + f32(smem[region + 256u * (t + 2u) + e]) * (1.0 / 254.0);
#else
    for (var t = 0u; t < 4u; t++) {
      let tile = 4u * half + t;        // = 2·i + j
      let ti = tile / 2u;
      let tj = tile % 2u;
      for (var e = lane; e < 256u; e += SG) {
        let m = m0 + sg_m * 64u + 16u * ti + e / 16u;
        let sum = f32(smem[region + 256u * t + e]);
#endif
        let col = sg_o * 32u + 16u * tj + e % 16u;   // within the output tile
        let o = o0 + col;
#if OP == fwd
        if (m < params.M && o < params.N) {
          let v = sum * ascale[m] * wscale[col];
          let at = m * params.ld + params.off + o;
#else
        if (m < params.M && o < params.K) {
          let v = sum * ascale[m] * wscale[col / GROUP];
          let at = m * params.K + o;
#endif
#if ACCUMULATE
          y[at] += v;
#else
          y[at] = v;
#endif
        }
      }
    }
    workgroupBarrier();
  }
}

#endif
