// Tensor-core matmuls for the frozen 4-bit base: int8 × int8 → int32 subgroup matrices
// (chromium_experimental_subgroup_matrix, 16×16×32 tiles; on NVIDIA these run on the tensor cores).
//
// Both operands become int8 with one f32 scale per row of the operand:
//   activations (X forward, dY backward): per token (row), absmax / 127, by `quantize_rows` (a fused pass
//     that writes the packed int8 rows and the scale; rows padded with zeros to a multiple of 64 bytes).
//     RESIDUAL adds a second level, the rounding residual on a 254× finer grid (x ≈ (hi + lo/254)·scale):
//     two products per output, one activation grid error 254× smaller (see docs/int8-matmul.md).
//   weights: the 4-bit codes are re-quantized to int8 by `q4_to_i8`, one block of W at a time into a
//     scratch the matrix kernel then stages as it is: forward per output row n of W (bound = the largest |w|
//     its group scales allow: max over groups of max(|min|, |min + 15·step|), by `q4_row_absmax`), backward
//     per 64-column group of W (the same bound over all rows, by `q4_col_absmax`), because there the rows of W
//     are the reduction. A code c of a group (step, min) becomes round(c·a + b) with (a, b) =
//     (step, min)·127/bound: one fma per weight. Why a pass of its own: done while staging, every row block of
//     activations re-quantized the same tile (32× at 2048 tokens) and the ALU work of the staging was what kept
//     the tensor cores waiting; the pass is bandwidth-bound (read ½ byte, write 1 per weight) and one per
//     projection.
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
//   q4_to_i8       wq[n, k] = W's code on the int8 grid (ROW_GRID: per row n, else per 64-column group) (any device)
//   q4_mma_fwd     Y[:, off:off+N] = X·Wᵀ (ACCUMULATE: +=), X as quantize_rows left it       (subgroup matrices)
//   q4_mma_dx      dX (+)= dY[:, off:off+N]·W                                               (subgroup matrices)
// PROBE_NO_STAGE / PROBE_HOIST are timing probes for bench/int8-matmul.bench.ts (wrong results).
// Layout of the matrix kernels: 128 invocations = 4 subgroups of 32 (the TypeScript side only picks
// this path where the subgroup size is fixed at 32), a 128×128 tile of staged rows × outputs per workgroup,
// each subgroup 64×64 of it (4×4 accumulators of 16×16: 8 matrix loads feed 16 products; 8 subgroups of
// 64×32 took 6 loads for 8 and measured 10–25% slower), 64-deep stages double-buffered in workgroup memory
// with rows padded by 16 bytes (so the 16 rows a matrix load touches do not share banks).

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
#if OP == to_i8

@group(0) @binding(1) var<storage, read> q: array<vec4<u32>>;    // W codes [N, K/32]
@group(0) @binding(2) var<storage, read> sm: array<u32>;         // W group scales [N, K/64]
@group(0) @binding(3) var<storage, read> bound: array<f32>;      // ROW_GRID: rowmax [N]; else colmax [K/64]
@group(0) @binding(4) var<storage, read_write> wq: array<vec4<u32>>;  // int8 W [N, K], K bytes a row

// Codes 4j..4j+3 of a word (nibbles, low first) → four int8 on the weight's int8 grid: round(code·a + b),
// where (a, b) = (step, min) · 127/bound of the grid; |code·a + b| ≤ 127 by the choice of bound, so no clamp.
fn requant4(nibbles: u32, a: f32, b: f32) -> u32 {
  let c = vec4<f32>(vec4<u32>(nibbles, nibbles >> 4u, nibbles >> 8u, nibbles >> 12u) & vec4<u32>(15u));
  return pack4xI8(vec4<i32>(round(fma(c, vec4<f32>(a), vec4<f32>(b)))));
}

// One invocation per 32 codes (16 bytes in, 32 out).
@compute @workgroup_size(64)
fn q4_to_i8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 64u + lid;
  let per_row = params.K / 32u;
  if (i >= params.N * per_row) { return; }
  let n = i / per_row;
  let g = (i % per_row) * 32u / GROUP;
#if ROW_GRID
  let mx = bound[n];
#else
  let mx = bound[g];
#endif
  let inv = select(0.0, 127.0 / mx, mx > 0.0);
  let sc = group_scale(sm[n * (params.K / GROUP) + g]);
  let a = sc.x * inv;
  let b = sc.y * inv;
  let c = q[i];
  wq[2u * i] = vec4<u32>(requant4(c.x, a, b), requant4(c.x >> 16u, a, b), requant4(c.y, a, b), requant4(c.y >> 16u, a, b));
  wq[2u * i + 1u] = vec4<u32>(requant4(c.z, a, b), requant4(c.z >> 16u, a, b), requant4(c.w, a, b), requant4(c.w >> 16u, a, b));
}

#endif
// ------------------------------------------------------------------------------------------------
#if OP == fwd || OP == dx

@group(0) @binding(1) var<storage, read> aq: array<vec4<u32>>;   // int8 activation rows, lda bytes each
@group(0) @binding(2) var<storage, read> ascale: array<f32>;     // its per-row scale
@group(0) @binding(3) var<storage, read> wq: array<vec4<u32>>;   // W on its int8 grid [N, K] (q4_to_i8)
#if EPI_VEC4
// Written as whole vec4 (quant4-mma.ts asks for this only where ld, off and N are multiples of 4).
@group(0) @binding(4) var<storage, read_write> y: array<vec4<f32>>; // Y [M, ld] (forward) or dX [M, K]
#else
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // Y [M, ld] (forward) or dX [M, K]
#endif
#if OP == dx
@group(0) @binding(5) var<storage, read> colmax: array<f32>;     // q4_col_absmax of this block [K/64]
#else
@group(0) @binding(5) var<storage, read> wmax: array<f32>;       // q4_row_absmax of this block [N]
#endif

const SG: u32 = 32u;        // subgroup size this layout assumes
const TILE: u32 = 128u;     // output columns per workgroup
#if RESIDUAL
// Activations in two levels (hi, residual): 64 activation rows per workgroup, staged as 128 rows (hi then lo).
const TILE_M: u32 = 64u;
#else
const TILE_M: u32 = 128u;   // activation rows per workgroup
#endif
const SUBGROUPS: u32 = 4u;  // 2 × 2, each 64 staged rows × 64 output columns
const THREADS: u32 = SUBGROUPS * SG;
const SG_COLS: u32 = 64u;   // output columns per subgroup
const NJ: u32 = SG_COLS / 16u;                 // right tiles per subgroup (4)
const PIECES: u32 = 512u / THREADS;            // 16-byte pieces of each operand's stage per invocation (4)
const DEPTH: u32 = 64u;     // reduction depth of one stage
const A_ROW: u32 = 80u;     // bytes per staged activation row: 64 + 16 padding
const A_WORDS: u32 = TILE * A_ROW / 4u;          // one stage of the activation tile, in words (2560)
#if OP == fwd
// W tile as [n][k]: 128 rows of 64 int8 weights (+16 bytes), read as the column-major right matrix.
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
// Two stages; the epilogue reuses the space: the workgroup's 64 tiles, half at a time, 4 × 8 × 256 words =
// 8192 ≤ 2 · STAGE_WORDS.
const EPI_TILES: u32 = 8u;                     // tiles per subgroup per half (= 2 · NJ)
const EPI_WORDS: u32 = EPI_TILES * 256u;       // per subgroup
var<workgroup> smem: array<i32, 2u * STAGE_WORDS>;
var<workgroup> wscale: array<f32, TILE>;   // forward: c[n] / 127 per W row; backward: per output column group (2 used)

// The epilogue: each lane scales and writes EPI_Q neighbouring outputs of a row at a time.
#if EPI_VEC4
const EPI_Q: u32 = 4u;
// Four words of a stored tile; word (c + lane / 8) % 4 in the c-th read, so every read's 32 lanes (words
// 4·lane apart) hit 32 different banks. Why vec4: a quarter of the scalar epilogue's stores and scale loads.
fn tile_sum(at: u32, lane: u32) -> vec4<f32> {
  var s = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    let w = (c + lane / 8u) & 3u;
    s[w] = f32(smem[at + w]);
  }
  return s;
}
#if OP == fwd
fn weight_scale(col: u32) -> vec4<f32> { return vec4<f32>(wscale[col], wscale[col + 1u], wscale[col + 2u], wscale[col + 3u]); }
#endif
#else
const EPI_Q: u32 = 1u;
fn tile_sum(at: u32, lane: u32) -> f32 { return f32(smem[at]); }
#if OP == fwd
fn weight_scale(col: u32) -> f32 { return wscale[col]; }
#endif
#endif

alias Left = subgroup_matrix_left<i8, 32, 16>;
alias Right = subgroup_matrix_right<i8, 16, 32>;
alias Acc = subgroup_matrix_result<i32, 16, 16>;

// Registers holding the next stage while the current one is multiplied.
struct Staged {
  a: array<vec4<u32>, PIECES>,
  w: array<vec4<u32>, PIECES>,
}

// This invocation's share of stage `s` (reduction offset r0 = s · 64): PIECES 16-byte activation loads and as
// many 16-byte loads of int8 weights.
fn load_stage(lid: u32, m0: u32, o0: u32, r0: u32) -> Staged {
  var st: Staged;
  let a_row_vec4 = params.lda / 16u;
  let w_row_vec4 = params.K / 16u;
  for (var i = 0u; i < PIECES; i++) {
    let idx = lid + THREADS * i;    // 512 16-byte pieces: 128 staged rows × 4
    let srow = idx / 4u;
#if RESIDUAL
    let m = m0 + srow % 64u;        // staged row 64·level + row
    let level = (srow / 64u) * (params.lo / 16u);
#else
    let m = m0 + srow;
    let level = 0u;
#endif
    var v = vec4<u32>(0u);
    if (m < params.M) { v = aq[m * a_row_vec4 + level + r0 / 16u + idx % 4u]; }
    st.a[i] = v;
    var u = vec4<u32>(0u);
#if OP == fwd
    // 128 W rows × 4 pieces of 16 weights: the stage's 64 reduction columns of every row.
    let n = o0 + idx / 4u;
    if (n < params.N) { u = wq[n * w_row_vec4 + r0 / 16u + idx % 4u]; }
#else
    // 64 reduction rows of W × 8 pieces of 16 weights (128 output columns).
    let n = r0 + idx / 8u;
    let k = o0 + 16u * (idx % 8u);
    if (n < params.N && k < params.K) { u = wq[n * w_row_vec4 + k / 16u]; }
#endif
    st.w[i] = u;
  }
  return st;
}

// Four words of one 16-byte piece into workgroup memory (the array holds scalars, what the matrix loads take).
// (Storing them in a rotated order per lane, conflict-free on paper, measured 2.5× slower: docs/int8-matmul.md.)
fn store4(at: u32, v: vec4<u32>) {
  smem[at] = bitcast<i32>(v.x);
  smem[at + 1u] = bitcast<i32>(v.y);
  smem[at + 2u] = bitcast<i32>(v.z);
  smem[at + 3u] = bitcast<i32>(v.w);
}

fn store_stage(lid: u32, st: Staged, buf: u32) {
  let base = buf * STAGE_WORDS;
  for (var i = 0u; i < PIECES; i++) {
    let idx = lid + THREADS * i;
    store4(base + (idx / 4u) * (A_ROW / 4u) + (idx % 4u) * 4u, st.a[i]);
#if OP == fwd
    store4(base + A_WORDS + (idx / 4u) * (B_ROW / 4u) + (idx % 4u) * 4u, st.w[i]);
#else
    store4(base + A_WORDS + (idx / 8u) * (B_ROW / 4u) + (idx % 8u) * 4u, st.w[i]);
#endif
  }
}

// Where the subgroup's matrices of stage buffer `buf`, reduction step `ks` start (in int8 elements of smem):
// left tile i (16 activation rows), right tile j (16 output columns).
// With RESIDUAL, tile i is row tile i/2 of the subgroup's 32 rows, at level i%2 (0 hi, 1 residual): so the
// accumulators of row tile h are those of lefts 2h (hi) and 2h + 1 (residual), in the same half of the epilogue.
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
  return 4u * (buf * STAGE_WORDS + A_WORDS + (sg_o * SG_COLS + 16u * j) * (B_ROW / 4u)) + ks;
#else
  // W as a 32×16 (n × k) matrix, row-major: row n, contiguous in k.
  return 4u * (buf * STAGE_WORDS + A_WORDS) + ks * B_ROW + sg_o * SG_COLS + 16u * j;
#endif
}

@compute @workgroup_size(THREADS)
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
  let sg_m = sg / 2u;
  let sg_o = sg % 2u;

  // The weights' int8 grid.
#if OP == fwd
  // Per W row: the bound q4_row_absmax left for this block.
  if (lid < TILE) {
    var mx = 0.0;
    if (o0 + lid < params.N) { mx = wmax[o0 + lid]; }
    wscale[lid] = mx * (1.0 / 127.0);
  }
#else
  if (lid < 2u) {
    let g = o0 / GROUP + lid;
    var mx = 0.0;
    if (g < params.K / GROUP) { mx = colmax[g]; }
    wscale[lid] = mx * (1.0 / 127.0);
  }
#endif
  workgroupBarrier();

  // The subgroup's 4×NJ tiles of 16×16 (acc[NJ·i + j] for left i, right j), as named variables: arrays of
  // matrices indexed in loops were kept in addressable (local) memory by the driver.
  var acc0 = Acc(); var acc1 = Acc(); var acc2 = Acc(); var acc3 = Acc();
  var acc4 = Acc(); var acc5 = Acc(); var acc6 = Acc(); var acc7 = Acc();
  var acc8 = Acc(); var acc9 = Acc(); var acc10 = Acc(); var acc11 = Acc();
  var acc12 = Acc(); var acc13 = Acc(); var acc14 = Acc(); var acc15 = Acc();

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
  let hr2 = subgroupMatrixLoad<Right>(&smem, right_at(0u, sg_o, 2u, 0u), RIGHT_COL_MAJOR, B_ROW);
  let hr3 = subgroupMatrixLoad<Right>(&smem, right_at(0u, sg_o, 3u, 0u), RIGHT_COL_MAJOR, B_ROW);
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
      let r2 = hr2; let r3 = hr3;
#else
      let l0 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 0u, ks), false, A_ROW);
      let l1 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 1u, ks), false, A_ROW);
      let l2 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 2u, ks), false, A_ROW);
      let l3 = subgroupMatrixLoad<Left>(&smem, left_at(buf, sg_m, 3u, ks), false, A_ROW);
      let r0 = subgroupMatrixLoad<Right>(&smem, right_at(buf, sg_o, 0u, ks), RIGHT_COL_MAJOR, B_ROW);
      let r1 = subgroupMatrixLoad<Right>(&smem, right_at(buf, sg_o, 1u, ks), RIGHT_COL_MAJOR, B_ROW);
      let r2 = subgroupMatrixLoad<Right>(&smem, right_at(buf, sg_o, 2u, ks), RIGHT_COL_MAJOR, B_ROW);
      let r3 = subgroupMatrixLoad<Right>(&smem, right_at(buf, sg_o, 3u, ks), RIGHT_COL_MAJOR, B_ROW);
#endif
      acc0 = subgroupMatrixMultiplyAccumulate(l0, r0, acc0);
      acc1 = subgroupMatrixMultiplyAccumulate(l0, r1, acc1);
      acc2 = subgroupMatrixMultiplyAccumulate(l0, r2, acc2);
      acc3 = subgroupMatrixMultiplyAccumulate(l0, r3, acc3);
      acc4 = subgroupMatrixMultiplyAccumulate(l1, r0, acc4);
      acc5 = subgroupMatrixMultiplyAccumulate(l1, r1, acc5);
      acc6 = subgroupMatrixMultiplyAccumulate(l1, r2, acc6);
      acc7 = subgroupMatrixMultiplyAccumulate(l1, r3, acc7);
      acc8 = subgroupMatrixMultiplyAccumulate(l2, r0, acc8);
      acc9 = subgroupMatrixMultiplyAccumulate(l2, r1, acc9);
      acc10 = subgroupMatrixMultiplyAccumulate(l2, r2, acc10);
      acc11 = subgroupMatrixMultiplyAccumulate(l2, r3, acc11);
      acc12 = subgroupMatrixMultiplyAccumulate(l3, r0, acc12);
      acc13 = subgroupMatrixMultiplyAccumulate(l3, r1, acc13);
      acc14 = subgroupMatrixMultiplyAccumulate(l3, r2, acc14);
      acc15 = subgroupMatrixMultiplyAccumulate(l3, r3, acc15);
    }
#if !PROBE_NO_STAGE
    if (more) { store_stage(lid, next, (s + 1u) % 2u); }
#endif
    workgroupBarrier();
  }

  // Epilogue: the opaque tiles go through workgroup memory (half of them at a time: lefts 0, 1 then 2, 3)
  // to be scaled.
  let region = sg * EPI_WORDS;
  for (var half = 0u; half < 2u; half++) {
    if (half == 0u) {
      subgroupMatrixStore(&smem, region, acc0, false, 16u);
      subgroupMatrixStore(&smem, region + 256u, acc1, false, 16u);
      subgroupMatrixStore(&smem, region + 512u, acc2, false, 16u);
      subgroupMatrixStore(&smem, region + 768u, acc3, false, 16u);
      subgroupMatrixStore(&smem, region + 1024u, acc4, false, 16u);
      subgroupMatrixStore(&smem, region + 1280u, acc5, false, 16u);
      subgroupMatrixStore(&smem, region + 1536u, acc6, false, 16u);
      subgroupMatrixStore(&smem, region + 1792u, acc7, false, 16u);
    } else {
      subgroupMatrixStore(&smem, region, acc8, false, 16u);
      subgroupMatrixStore(&smem, region + 256u, acc9, false, 16u);
      subgroupMatrixStore(&smem, region + 512u, acc10, false, 16u);
      subgroupMatrixStore(&smem, region + 768u, acc11, false, 16u);
      subgroupMatrixStore(&smem, region + 1024u, acc12, false, 16u);
      subgroupMatrixStore(&smem, region + 1280u, acc13, false, 16u);
      subgroupMatrixStore(&smem, region + 1536u, acc14, false, 16u);
      subgroupMatrixStore(&smem, region + 1792u, acc15, false, 16u);
    }
    workgroupBarrier();
#if RESIDUAL
    // Half h: row tile h, every column tile, both levels (stored tiles 0..NJ-1 hi, NJ..2NJ-1 residual).
    for (var t = 0u; t < NJ; t++) {
      let ti = half;
      let tj = t;
      let mrow = m0 + sg_m * 32u + 16u * ti;
#else
    for (var t = 0u; t < EPI_TILES; t++) {
      let tile = EPI_TILES * half + t;        // = NJ·i + j
      let ti = tile / NJ;
      let tj = tile % NJ;
      let mrow = m0 + sg_m * 64u + 16u * ti;
#endif
      for (var e = lane * EPI_Q; e < 256u; e += EPI_Q * SG) {
        let m = mrow + e / 16u;
        var sum = tile_sum(region + 256u * t + e, lane);
#if RESIDUAL
        sum += tile_sum(region + 256u * (t + NJ) + e, lane) * (1.0 / 254.0);
#endif
        let col = sg_o * SG_COLS + 16u * tj + e % 16u;   // within the output tile
        let o = o0 + col;
#if OP == fwd
        if (m < params.M && o < params.N) {
          let v = sum * ascale[m] * weight_scale(col);
          let at = (m * params.ld + params.off + o) / EPI_Q;
#else
        if (m < params.M && o < params.K) {
          let v = sum * ascale[m] * wscale[col / GROUP];
          let at = (m * params.K + o) / EPI_Q;
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
