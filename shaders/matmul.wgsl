// Tiled f32 matrix multiply: C = alpha · op(A) · op(B)  (+ C when ACCUMULATE), batched over workgroup_id.z.
//
//   op(A) is M×K: A is stored [M, K] row-major, or [K, M] when TRANS_A.
//   op(B) is K×N: B is stored [K, N] row-major, or [N, K] when TRANS_B.
//
// The three products a linear layer needs: forward Y = X·Wᵀ (TRANS_B), input gradient dX = dY·W (plain),
// weight gradient dW = dYᵀ·X (TRANS_A, ACCUMULATE: parameter gradients are accumulated). There is no
// separate backward entry point: the backward of a matmul is two more matmuls of this kernel.
//
// A 16×16 workgroup computes a TILE_M×TILE_N block of C; each thread owns THREAD_M×THREAD_N outputs in
// registers (8×8 with WIDE, else 4×4), split into 4-row/4-column groups spaced WG·4 apart so that the
// vec4 reads of workgroup memory by neighbouring threads are contiguous. A and B are staged through
// workgroup memory TILE_K deep, stored k-major. VEC4_A / VEC4_B load 16 bytes at a time from global
// memory; the host enables them when the contiguous dimension (and the batch stride) is a multiple of 4.
// Ragged edges load zeros and skip stores, so any M, N, K works. Shapes are uniforms. PREFETCH (see below)
// stages the next k-tile through registers; every loop over a register array has a constant bound (the
// NVIDIA driver leaves arrays indexed under override-bounded loops in local memory).
//
// SPLIT_K (split-K, for products with few output tiles and a long reduction, such as dhidden = dlogits ·
// lm_head over a vocabulary of 92544): workgroup z multiplies the k range [z·k_split, (z+1)·k_split) into its
// own partial C at z·batch_stride_c (k_split is a multiple of TILE_K, so no tile straddles two ranges);
// matmul_split_sum then adds the partials in a fixed order (deterministic) into C, with alpha and ACCUMULATE.

struct Params {
  M: u32,
  N: u32,
  K: u32,
  alpha: f32,
  // Element strides between consecutive matrices of a batch (0 broadcasts one matrix to the batch).
  batch_stride_a: u32,
  batch_stride_b: u32,
  batch_stride_c: u32,
  // SPLIT_K: elements of K per slice (a multiple of TILE_K). matmul_split_sum: the number of partials.
  k_split: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#if SPLIT_SUM
// Partials [k slices][M·N / 4] (M = M·N / 4 here, batch_stride_c the partials' stride in vec4) into C.
@group(0) @binding(1) var<storage, read> parts: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> sum_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn matmul_split_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let i = (wg.y * nwg.x + wg.x) * 256u + tid;
  if (i >= params.M) { return; }
  var s = parts[i];
  for (var z = 1u; z < params.k_split; z++) { s += parts[z * params.batch_stride_c + i]; }
#if ACCUMULATE
  sum_out[i] = sum_out[i] + params.alpha * s;
#else
  sum_out[i] = params.alpha * s;
#endif
}
#else
#if VEC4_A && !SMALL
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
#endif
#if VEC4_B && !SMALL
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

#if WIDE
const THREAD_M: u32 = 8u;
const THREAD_N: u32 = 8u;
#else
const THREAD_M: u32 = 4u;
const THREAD_N: u32 = 4u;
#endif
const WG_X: u32 = 16u;
const WG_Y: u32 = 16u;
const THREADS: u32 = WG_X * WG_Y;
const TILE_M: u32 = WG_Y * THREAD_M;
const TILE_N: u32 = WG_X * THREAD_N;
override TILE_K: u32 = 16u;

#if !SMALL
// Tile layouts. k-major (the default): tile[k][m], one vec4 = 4 neighbouring rows at one k; an operand
// stored k-contiguous in global memory must be transposed on its way in. KC_A / KC_B (with PREFETCH, for
// operands stored k-contiguous: A [M, K], B [N, K]) keep the global layout instead: tile[row][k], one vec4
// = 4 consecutive k of one row, no transpose, every load and store a whole vec4. 8 consecutive rows read
// as vec4 must land on 8 distinct bank quads: rows of 8 or 16 k get one vec4 of padding; rows of 32 k
// (8 vec4, all 32 banks) are XOR-swizzled instead (vec4 q of row r at q ^ (r & 7)), which keeps two
// 128×32 tiles within 32 KiB.
// DBUF's two 128×16 tiles of each operand fill 32 KiB only without the padding, so there rows of 16 k are
// swizzled too: vec4 q of row r at q ^ ((r >> 1) & 3) (rows r and r + 2 share bank quads unswizzled).
#if DBUF
override KC_ROW: u32 = TILE_K / 4u;
#else
override KC_ROW: u32 = TILE_K / 4u + select(1u, 0u, TILE_K >= 32u);
#endif
fn kc_at(row: u32, kq: u32) -> u32 {
  if (TILE_K >= 32u) { return row * KC_ROW + (kq ^ (row & 7u)); }
#if DBUF
  if (TILE_K == 16u) { return row * KC_ROW + (kq ^ ((row >> 1u) & 3u)); }
  if (TILE_K == 8u) { return row * KC_ROW + (kq ^ ((row >> 2u) & 1u)); }
#endif
  return row * KC_ROW + kq;
}
// DBUF (with PREFETCH): two buffers of each tile; step s multiplies buffer s % 2 while the next step's
// registers go into the other, so a step takes one barrier instead of two.
#if DBUF
const NBUF: u32 = 2u;
#else
const NBUF: u32 = 1u;
#endif
#if KC_A
override A_TILE: u32 = TILE_M * KC_ROW;
#else
override A_TILE: u32 = TILE_K * TILE_M / 4u;
#endif
#if KC_B
override B_TILE: u32 = TILE_N * KC_ROW;
#else
override B_TILE: u32 = TILE_K * TILE_N / 4u;
#endif
var<workgroup> tile_a: array<vec4<f32>, A_TILE * NBUF>;
var<workgroup> tile_b: array<vec4<f32>, B_TILE * NBUF>;

// Rows (columns) of C owned by a thread: with a k-major tile, groups of 4 neighbours spaced WG·4 apart
// (one vec4 read covers a group); with a k-contiguous tile, single rows spaced WG apart (neighbouring
// threads read neighbouring rows: conflict-free with the padded row).
fn tile_row(i: u32, ly: u32) -> u32 {
#if KC_A
  return i * WG_Y + ly;
#else
  return ((i / 4u) * WG_Y + ly) * 4u + i % 4u;
#endif
}
fn tile_col(j: u32, lx: u32) -> u32 {
#if KC_B
  return j * WG_X + lx;
#else
  return ((j / 4u) * WG_X + lx) * 4u + j % 4u;
#endif
}

fn store_a(kk: u32, mm: u32, v: f32) {
  tile_a[(kk * TILE_M + mm) / 4u][mm % 4u] = v;
}
fn store_b(kk: u32, nn: u32, v: f32) {
  tile_b[(kk * TILE_N + nn) / 4u][nn % 4u] = v;
}

fn load_tile_a(base: u32, row0: u32, k0: u32, tid: u32) {
  let M = params.M;
  let K = params.K;
#if VEC4_A && TRANS_A
  // [K, M]: vec4 along m.
  for (var idx = tid; idx < TILE_M * TILE_K / 4u; idx += THREADS) {
    let mq = idx % (TILE_M / 4u);
    let kk = idx / (TILE_M / 4u);
    let m = row0 + mq * 4u;
    let k = k0 + kk;
    var v = vec4<f32>(0.0);
    if (m < M && k < K) { v = a[(base + k * M + m) / 4u]; }
    tile_a[(kk * TILE_M) / 4u + mq] = v;
  }
#elif VEC4_A
  // [M, K]: vec4 along k, transposed into the k-major tile.
  for (var idx = tid; idx < TILE_M * TILE_K / 4u; idx += THREADS) {
    let kq = idx % (TILE_K / 4u);
    let mm = idx / (TILE_K / 4u);
    let m = row0 + mm;
    let k = k0 + kq * 4u;
    var v = vec4<f32>(0.0);
    if (m < M && k < K) { v = a[(base + m * K + k) / 4u]; }
    for (var i = 0u; i < 4u; i++) { store_a(kq * 4u + i, mm, v[i]); }
  }
#else
  for (var idx = tid; idx < TILE_M * TILE_K; idx += THREADS) {
#if TRANS_A
    let mm = idx % TILE_M;
    let kk = idx / TILE_M;
#else
    let kk = idx % TILE_K;
    let mm = idx / TILE_K;
#endif
    let m = row0 + mm;
    let k = k0 + kk;
    var v = 0.0;
#if TRANS_A
    if (m < M && k < K) { v = a[base + k * M + m]; }
#else
    if (m < M && k < K) { v = a[base + m * K + k]; }
#endif
    store_a(kk, mm, v);
  }
#endif
}

fn load_tile_b(base: u32, col0: u32, k0: u32, tid: u32) {
  let N = params.N;
  let K = params.K;
#if VEC4_B && TRANS_B
  // [N, K]: vec4 along k, transposed into the k-major tile.
  for (var idx = tid; idx < TILE_N * TILE_K / 4u; idx += THREADS) {
    let kq = idx % (TILE_K / 4u);
    let nn = idx / (TILE_K / 4u);
    let n = col0 + nn;
    let k = k0 + kq * 4u;
    var v = vec4<f32>(0.0);
    if (n < N && k < K) { v = b[(base + n * K + k) / 4u]; }
    for (var i = 0u; i < 4u; i++) { store_b(kq * 4u + i, nn, v[i]); }
  }
#elif VEC4_B
  // [K, N]: vec4 along n.
  for (var idx = tid; idx < TILE_N * TILE_K / 4u; idx += THREADS) {
    let nq = idx % (TILE_N / 4u);
    let kk = idx / (TILE_N / 4u);
    let n = col0 + nq * 4u;
    let k = k0 + kk;
    var v = vec4<f32>(0.0);
    if (n < N && k < K) { v = b[(base + k * N + n) / 4u]; }
    tile_b[(kk * TILE_N) / 4u + nq] = v;
  }
#else
  for (var idx = tid; idx < TILE_N * TILE_K; idx += THREADS) {
#if TRANS_B
    let kk = idx % TILE_K;
    let nn = idx / TILE_K;
#else
    let nn = idx % TILE_N;
    let kk = idx / TILE_N;
#endif
    let n = col0 + nn;
    let k = k0 + kk;
    var v = 0.0;
#if TRANS_B
    if (n < N && k < K) { v = b[base + n * K + k]; }
#else
    if (n < N && k < K) { v = b[base + k * N + n]; }
#endif
    store_b(kk, nn, v);
  }
#endif
}

#if PREFETCH
// Register-staged loads (VEC4_A && VEC4_B): the next k-tile is fetched from global memory into registers
// (fetch_*) while the current one is multiplied, then written to workgroup memory (commit_*) after the
// barrier. An operand stored k-contiguous ([M, K] for A, [N, K] for B) is read as 4×4 blocks (4 rows ×
// 4 k) and transposed in registers, so every workgroup-memory store is a whole vec4 (no scalar stores).
// Slot s of a thread is s·THREADS + tid; slots walk the m (n) quads fastest so the stores are contiguous.
const MAX_PREF: u32 = 8u;

fn kcontig_slots(edge: u32) -> u32 { return (edge / 4u) * (TILE_K / 4u); }
// (row quad, k quad) of a k-contiguous slot: row quads fastest, so the workgroup-memory stores are
// contiguous (k quads fastest, for whole 32-byte sectors per row in the global loads, measured no better).
fn kcontig_split(slot: u32, edge: u32) -> vec2<u32> { return vec2<u32>(slot % (edge / 4u), slot / (edge / 4u)); }
fn mcontig_slots(edge: u32) -> u32 { return edge * TILE_K / 4u; }

// k-contiguous operand: rows [row0, row0 + edge) of a [rows, K] matrix (vec4 view `src` offset `base`/4).
fn fetch_kcontig_a(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, base: u32, row0: u32, k0: u32, tid: u32, rows: u32) {
  let K = params.K;
  for (var u = 0u; u < MAX_PREF / 4u; u++) { if (u * THREADS >= kcontig_slots(TILE_M)) { break; }
    let slot = u * THREADS + tid;
    let sp = kcontig_split(slot, TILE_M);
    let mq = sp.x;
    let kq = sp.y;
    let k = k0 + kq * 4u;
    for (var r = 0u; r < 4u; r++) {
      let m = row0 + mq * 4u + r;
      var x = vec4<f32>(0.0);
      if (slot < kcontig_slots(TILE_M) && m < rows && k < K) { x = a[(base + m * K + k) / 4u]; }
      (*reg)[u * 4u + r] = x;
    }
  }
}
fn fetch_kcontig_b(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, base: u32, row0: u32, k0: u32, tid: u32, rows: u32) {
  let K = params.K;
  for (var u = 0u; u < MAX_PREF / 4u; u++) { if (u * THREADS >= kcontig_slots(TILE_N)) { break; }
    let slot = u * THREADS + tid;
    let sp = kcontig_split(slot, TILE_N);
    let nq = sp.x;
    let kq = sp.y;
    let k = k0 + kq * 4u;
    for (var r = 0u; r < 4u; r++) {
      let n = row0 + nq * 4u + r;
      var x = vec4<f32>(0.0);
      if (slot < kcontig_slots(TILE_N) && n < rows && k < K) { x = b[(base + n * K + k) / 4u]; }
      (*reg)[u * 4u + r] = x;
    }
  }
}
// m-contiguous operand: a [K, cols] matrix, vec4 along the columns.
fn fetch_mcontig_a(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, base: u32, col0: u32, k0: u32, tid: u32, cols: u32) {
  let K = params.K;
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= mcontig_slots(TILE_M)) { break; }
    let slot = u * THREADS + tid;
    let q4 = slot % (TILE_M / 4u);
    let kk = slot / (TILE_M / 4u);
    let col = col0 + q4 * 4u;
    let k = k0 + kk;
    var x = vec4<f32>(0.0);
    if (slot < mcontig_slots(TILE_M) && col < cols && k < K) { x = a[(base + k * cols + col) / 4u]; }
    (*reg)[u] = x;
  }
}
fn fetch_mcontig_b(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, base: u32, col0: u32, k0: u32, tid: u32, cols: u32) {
  let K = params.K;
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= mcontig_slots(TILE_N)) { break; }
    let slot = u * THREADS + tid;
    let q4 = slot % (TILE_N / 4u);
    let kk = slot / (TILE_N / 4u);
    let col = col0 + q4 * 4u;
    let k = k0 + kk;
    var x = vec4<f32>(0.0);
    if (slot < mcontig_slots(TILE_N) && col < cols && k < K) { x = b[(base + k * cols + col) / 4u]; }
    (*reg)[u] = x;
  }
}

// k-contiguous operand kept k-contiguous (KC_A / KC_B): slot s = one vec4 (row s / (TILE_K/4), k quad
// s % (TILE_K/4)); k quads fastest, so 4 neighbouring threads read one row's 64 contiguous bytes and their
// workgroup stores hit distinct bank quads.
fn kc_slots(edge: u32) -> u32 { return edge * TILE_K / 4u; }
fn fetch_kc(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, is_a: bool, base: u32, row0: u32, k0: u32, tid: u32, rows: u32, edge: u32) {
  let K = params.K;
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= kc_slots(edge)) { break; }
    let slot = u * THREADS + tid;
    let row = row0 + slot / (TILE_K / 4u);
    let k = k0 + (slot % (TILE_K / 4u)) * 4u;
    var x = vec4<f32>(0.0);
    if (slot < kc_slots(edge) && row < rows && k < K) {
      if (is_a) { x = a[(base + row * K + k) / 4u]; } else { x = b[(base + row * K + k) / 4u]; }
    }
    (*reg)[u] = x;
  }
}
fn kc_index(slot: u32) -> u32 { return kc_at(slot / (TILE_K / 4u), slot % (TILE_K / 4u)); }

fn commit_a(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, tid: u32, off: u32) {
#if KC_A
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= kc_slots(TILE_M)) { break; }
    let slot = u * THREADS + tid;
    if (slot < kc_slots(TILE_M)) { tile_a[off + kc_index(slot)] = (*reg)[u]; }
  }
#elif TRANS_A
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= mcontig_slots(TILE_M)) { break; }
    let slot = u * THREADS + tid;
    if (slot < mcontig_slots(TILE_M)) { tile_a[off + slot] = (*reg)[u]; }
  }
#else
  for (var u = 0u; u < MAX_PREF / 4u; u++) { if (u * THREADS >= kcontig_slots(TILE_M)) { break; }
    let slot = u * THREADS + tid;
    let sp = kcontig_split(slot, TILE_M);
    let mq = sp.x;
    let kq = sp.y;
    if (slot < kcontig_slots(TILE_M)) {
      let r0 = (*reg)[u * 4u];
      let r1 = (*reg)[u * 4u + 1u];
      let r2 = (*reg)[u * 4u + 2u];
      let r3 = (*reg)[u * 4u + 3u];
      tile_a[off + ((kq * 4u) * TILE_M) / 4u + mq] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
      tile_a[off + ((kq * 4u + 1u) * TILE_M) / 4u + mq] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
      tile_a[off + ((kq * 4u + 2u) * TILE_M) / 4u + mq] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
      tile_a[off + ((kq * 4u + 3u) * TILE_M) / 4u + mq] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
    }
  }
#endif
}

fn commit_b(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, tid: u32, off: u32) {
#if KC_B
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= kc_slots(TILE_N)) { break; }
    let slot = u * THREADS + tid;
    if (slot < kc_slots(TILE_N)) { tile_b[off + kc_index(slot)] = (*reg)[u]; }
  }
#elif TRANS_B
  for (var u = 0u; u < MAX_PREF / 4u; u++) { if (u * THREADS >= kcontig_slots(TILE_N)) { break; }
    let slot = u * THREADS + tid;
    let sp = kcontig_split(slot, TILE_N);
    let nq = sp.x;
    let kq = sp.y;
    if (slot < kcontig_slots(TILE_N)) {
      let r0 = (*reg)[u * 4u];
      let r1 = (*reg)[u * 4u + 1u];
      let r2 = (*reg)[u * 4u + 2u];
      let r3 = (*reg)[u * 4u + 3u];
      tile_b[off + ((kq * 4u) * TILE_N) / 4u + nq] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
      tile_b[off + ((kq * 4u + 1u) * TILE_N) / 4u + nq] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
      tile_b[off + ((kq * 4u + 2u) * TILE_N) / 4u + nq] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
      tile_b[off + ((kq * 4u + 3u) * TILE_N) / 4u + nq] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
    }
  }
#else
  for (var u = 0u; u < MAX_PREF; u++) { if (u * THREADS >= mcontig_slots(TILE_N)) { break; }
    let slot = u * THREADS + tid;
    if (slot < mcontig_slots(TILE_N)) { tile_b[off + slot] = (*reg)[u]; }
  }
#endif
}

fn fetch_a(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, base: u32, row0: u32, k0: u32, tid: u32) {
#if KC_A
  fetch_kc(reg, true, base, row0, k0, tid, params.M, TILE_M);
#elif TRANS_A
  fetch_mcontig_a(reg, base, row0, k0, tid, params.M);
#else
  fetch_kcontig_a(reg, base, row0, k0, tid, params.M);
#endif
}
fn fetch_b(reg: ptr<function, array<vec4<f32>, MAX_PREF>>, base: u32, col0: u32, k0: u32, tid: u32) {
#if KC_B
  fetch_kc(reg, false, base, col0, k0, tid, params.N, TILE_N);
#elif TRANS_B
  fetch_kcontig_b(reg, base, col0, k0, tid, params.N);
#else
  fetch_mcontig_b(reg, base, col0, k0, tid, params.N);
#endif
}
#endif

@compute @workgroup_size(WG_X, WG_Y)
fn matmul(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
#if SPLIT_K
  // One k range of one matrix: the operands' k indices stay absolute, C is this range's partial.
  let base_a = 0u;
  let base_b = 0u;
  let k_begin = wg.z * params.k_split;
  let k_end = min(params.K, k_begin + params.k_split);
#else
  let base_a = wg.z * params.batch_stride_a;
  let base_b = wg.z * params.batch_stride_b;
  let k_begin = 0u;
  let k_end = params.K;
#endif
  let base_c = wg.z * params.batch_stride_c;

  var acc: array<array<f32, THREAD_N>, THREAD_M>;
  for (var i = 0u; i < THREAD_M; i++) {
    for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = 0.0; }
  }

#if PREFETCH
  var pa: array<vec4<f32>, MAX_PREF>;
  var pb: array<vec4<f32>, MAX_PREF>;
  fetch_a(&pa, base_a, row0, k_begin, tid);
  fetch_b(&pb, base_b, col0, k_begin, tid);
#endif
#if DBUF
  commit_a(&pa, tid, 0u);
  commit_b(&pb, tid, 0u);
  workgroupBarrier();
  var buf = 0u;
#endif
  for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
#if DBUF
    let oa = buf * A_TILE;
    let ob = buf * B_TILE;
    let more = k0 + TILE_K < k_end;
    if (more) {
      fetch_a(&pa, base_a, row0, k0 + TILE_K, tid);
      fetch_b(&pb, base_b, col0, k0 + TILE_K, tid);
    }
#elif PREFETCH
    let oa = 0u;
    let ob = 0u;
    commit_a(&pa, tid, 0u);
    commit_b(&pb, tid, 0u);
    workgroupBarrier();
    if (k0 + TILE_K < k_end) {
      fetch_a(&pa, base_a, row0, k0 + TILE_K, tid);
      fetch_b(&pb, base_b, col0, k0 + TILE_K, tid);
    }
#else
    let oa = 0u;
    let ob = 0u;
    load_tile_a(base_a, row0, k0, tid);
    load_tile_b(base_b, col0, k0, tid);
    workgroupBarrier();
#endif
#if KC_A
    // A k-contiguous: each vec4 read is 4 k of one row; 4 k-steps per round of reads.
    for (var kq = 0u; kq < TILE_K / 4u; kq++) {
      var ra: array<vec4<f32>, THREAD_M>;
      for (var i = 0u; i < THREAD_M; i++) { ra[i] = tile_a[oa + kc_at(tile_row(i, lid.y), kq)]; }
#if KC_B
      for (var j = 0u; j < THREAD_N; j++) {
        let bv = tile_b[ob + kc_at(tile_col(j, lid.x), kq)];
        for (var i = 0u; i < THREAD_M; i++) {
          var s = acc[i][j];
          s = fma(ra[i].x, bv.x, s);
          s = fma(ra[i].y, bv.y, s);
          s = fma(ra[i].z, bv.z, s);
          s = fma(ra[i].w, bv.w, s);
          acc[i][j] = s;
        }
      }
#else
      for (var kk = 0u; kk < 4u; kk++) {
        var rb: array<vec4<f32>, THREAD_N / 4u>;
        for (var g = 0u; g < THREAD_N / 4u; g++) { rb[g] = tile_b[ob + ((kq * 4u + kk) * TILE_N) / 4u + g * WG_X + lid.x]; }
        for (var i = 0u; i < THREAD_M; i++) {
          let av = ra[i][kk];
          for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = fma(av, rb[j / 4u][j % 4u], acc[i][j]); }
        }
      }
#endif
    }
#else
    for (var kk = 0u; kk < TILE_K; kk++) {
      var ra: array<vec4<f32>, THREAD_M / 4u>;
      var rb: array<vec4<f32>, THREAD_N / 4u>;
      for (var g = 0u; g < THREAD_M / 4u; g++) { ra[g] = tile_a[oa + (kk * TILE_M) / 4u + g * WG_Y + lid.y]; }
      for (var g = 0u; g < THREAD_N / 4u; g++) { rb[g] = tile_b[ob + (kk * TILE_N) / 4u + g * WG_X + lid.x]; }
      for (var i = 0u; i < THREAD_M; i++) {
        let av = ra[i / 4u][i % 4u];
        for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = fma(av, rb[j / 4u][j % 4u], acc[i][j]); }
      }
    }
#endif
#if DBUF
    if (more) {
      buf ^= 1u;
      commit_a(&pa, tid, buf * A_TILE);
      commit_b(&pb, tid, buf * B_TILE);
    }
#endif
    workgroupBarrier();
  }

  // The same row/column mapping as the tile reads above.
  for (var i = 0u; i < THREAD_M; i++) {
    let m = row0 + tile_row(i, lid.y);
    if (m >= params.M) { continue; }
#if ACCUMULATE
    // All of a row's old values are loaded before any is stored: a load after a store to the same
    // read_write buffer waits for it, so one read-modify-write at a time left every load's latency
    // exposed (a LoRA epilogue, K = 64, ran at a sixth of its memory bound on the H100).
    var old: array<f32, THREAD_N>;
    for (var j = 0u; j < THREAD_N; j++) {
      let n = col0 + tile_col(j, lid.x);
      old[j] = 0.0;
      if (n < params.N) { old[j] = c[base_c + m * params.N + n]; }
    }
#endif
    for (var j = 0u; j < THREAD_N; j++) {
      let n = col0 + tile_col(j, lid.x);
      if (n >= params.N) { continue; }
      let at = base_c + m * params.N + n;
#if ACCUMULATE
      c[at] = old[j] + params.alpha * acc[i][j];
#else
      c[at] = params.alpha * acc[i][j];
#endif
    }
  }
}
#endif

#if SMALL && BLOCK4
// CPU adapters (SwiftShader): a 4×4 block of outputs per invocation, so every operand value loaded (the
// expensive part there: bounds-checked buffer reads) feeds four fmas; still no workgroup memory or barriers.
@compute @workgroup_size(8, 8)
fn matmul_small(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m0 = gid.y * 4u;
  let n0 = gid.x * 4u;
  if (m0 >= params.M || n0 >= params.N) { return; }
  let base_a = gid.z * params.batch_stride_a;
  let base_b = gid.z * params.batch_stride_b;
  // Rows / columns past the edge read the last valid one (their results are not stored).
  let mi = min(vec4<u32>(m0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.M - 1u));
  let ni = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.N - 1u));
  var acc: array<vec4<f32>, 4>;
  for (var k = 0u; k < params.K; k++) {
#if TRANS_A
    let av = vec4<f32>(a[base_a + k * params.M + mi.x], a[base_a + k * params.M + mi.y], a[base_a + k * params.M + mi.z], a[base_a + k * params.M + mi.w]);
#else
    let av = vec4<f32>(a[base_a + mi.x * params.K + k], a[base_a + mi.y * params.K + k], a[base_a + mi.z * params.K + k], a[base_a + mi.w * params.K + k]);
#endif
#if TRANS_B
    let bv = vec4<f32>(b[base_b + ni.x * params.K + k], b[base_b + ni.y * params.K + k], b[base_b + ni.z * params.K + k], b[base_b + ni.w * params.K + k]);
#else
    let bv = vec4<f32>(b[base_b + k * params.N + ni.x], b[base_b + k * params.N + ni.y], b[base_b + k * params.N + ni.z], b[base_b + k * params.N + ni.w]);
#endif
    acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
    acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
    acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
    acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + i;
    if (m >= params.M) { break; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + j;
      if (n >= params.N) { break; }
      let at = gid.z * params.batch_stride_c + m * params.N + n;
#if ACCUMULATE
      c[at] = c[at] + params.alpha * acc[i][j];
#else
      c[at] = params.alpha * acc[i][j];
#endif
    }
  }
}
#elif SMALL
// Small products (decode-time LoRA, tiny models): one output per invocation, operands read straight from
// global memory (they fit in cache), no workgroup memory and no barriers. Tiling only pays for itself
// once a tile's loads are shared by many outputs; below that the barriers cost more than they save.
@compute @workgroup_size(8, 8)
fn matmul_small(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m = gid.y;
  let n = gid.x;
  if (m >= params.M || n >= params.N) { return; }
  let base_a = gid.z * params.batch_stride_a;
  let base_b = gid.z * params.batch_stride_b;
  var acc = 0.0;
  for (var k = 0u; k < params.K; k++) {
#if TRANS_A
    let av = a[base_a + k * params.M + m];
#else
    let av = a[base_a + m * params.K + k];
#endif
#if TRANS_B
    let bv = b[base_b + n * params.K + k];
#else
    let bv = b[base_b + k * params.N + n];
#endif
    acc = fma(av, bv, acc);
  }
  let at = gid.z * params.batch_stride_c + m * params.N + n;
#if ACCUMULATE
  c[at] = c[at] + params.alpha * acc;
#else
  c[at] = params.alpha * acc;
#endif
}
#endif
#endif // SPLIT_SUM
