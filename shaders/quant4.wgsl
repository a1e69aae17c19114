// 4-bit block-quantized frozen base weights (the QLoRA base): quantize, dequantize, and matmuls that
// dequantise in registers / workgroup memory without ever materialising W in f32.
//
// Format ("q4a64", see docs/quant4.md): W is [out, in] (HF layout), in % 64 == 0. Each row is cut into
// groups of 64 along `in`; each group has an asymmetric int4 code per weight and one u32 holding two f16:
//   w = f32(code) * step + min,   code in 0..15,   low 16 bits = step (f16), high 16 bits = min (f16).
// Codes: q is array<vec4<u32>>, [out, in/32]: one vec4 = 16 bytes = 32 consecutive weights; weight 8·i + j
// of a vec4 is nibble j (bits 4j..4j+3) of component i. Scales: sm is array<u32>, [out, in/64], a separate
// array so every load is aligned. 4.5 bits per weight.
//
// Quantization rule (GPU and the CPU reference in quant4.ts agree bit for bit; only correctly rounded f32
// ops are used, no division): min16 = f16 rounded toward -inf of the group minimum; step16 = f16 rounded
// toward +inf of (max - min16) · f32(1/15); code = #{c in 0..14 : (x - min16) > (c + 0.5) · step16}.
// The f16 conversions are done on the bits (shader-f16 is not needed).
//
// Entry points (one OP define per pipeline selects the bindings):
//   OP == quantize   quantize     f32 / f16 / bf16 (SRC define) rows of W → codes + scales at a row offset
//   OP == dequantize dequantize   codes + scales → f32 [rows, in]
//   OP == matmul     q4_matmul    Y[:, off:off+N] = X · Wᵀ (+ s · U · B[b_row0:]ᵀ when LORA), tiled
//   OP == gemv       q4_gemv      the same for M ≤ 8 tokens (decode): each weight is read once
//                                 (ONE_ROW: the M = 1 kernel, RPT rows per invocation)
//   OP == dx         q4_matmul_dx dX = dY[:, off:off+N] · W (ACCUMULATE: dX += ..., for later row blocks)
// Gradient rule (llm.c): activation grads are written (=); the base is frozen, so there is no dW. dX of a
// W split into row blocks is the sum over blocks: the first block writes, later blocks add (ACCUMULATE).

struct Params {
  M: u32,        // rows of X / Y / dY (tokens)
  N: u32,        // rows of W in this block (quantize: rows of the source chunk)
  K: u32,        // in features (multiple of 64)
  ldy: u32,      // row stride of Y / dY (all output features of all blocks)
  off: u32,      // first column of Y / dY this block covers (quantize: first destination row)
  R: u32,        // LoRA rank
  s: f32,        // LoRA scale alpha / r
  src_off: u32,  // quantize: first source element
  b_row0: u32,   // LoRA: first row of B belonging to this block
  seed: u32,      // dx LORA && DROPOUT: lora_dropout's seed (the step's, as the forward's XA had it)
  threshold: u32, // dropped where dropout_hash(seed, m·K + k) < threshold
  keep_scale: f32, // 1 / (1 − p)
}

@group(0) @binding(0) var<uniform> params: Params;

#include "q4_format.wgsl"
#if DROPOUT
#include "dropout.wgsl"
#endif

// ------------------------------------------------------------------------------------------------
#if OP == quantize

#if SRC == f16 || SRC == bf16
@group(0) @binding(1) var<storage, read> src: array<u32>;  // two 16-bit values per word, low half first
#else
@group(0) @binding(1) var<storage, read> src: array<f32>;
#endif
@group(0) @binding(2) var<storage, read_write> q: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> sm: array<u32>;

// f16 bits of x rounded toward +inf (up) or -inf (!up); exact when x is representable.
fn f32_to_f16_directed(x: f32, up: bool) -> u32 {
  let b = bitcast<u32>(x);
  let sign = b >> 31u;
  let a = b & 0x7fffffffu;
  let away = (sign == 0u) == up; // round the magnitude up
  if (a >= 0x7f800000u) { return (sign << 15u) | 0x7c00u | select(0u, 0x200u, a > 0x7f800000u); }
  let e = i32(a >> 23u) - 112;
  var h = 0u;
  var rem = false;
  if (e >= 31) {
    h = select(0x7bffu, 0x7c00u, away);
  } else if (e >= 1) {
    h = (u32(e) << 10u) | ((a >> 13u) & 0x3ffu);
    rem = (a & 0x1fffu) != 0u;
  } else {
    let m = select(a & 0x7fffffu, (a & 0x7fffffu) | 0x800000u, (a >> 23u) != 0u);
    let shift = u32(14 - e);
    if (shift >= 32u) {
      rem = m != 0u;
    } else {
      h = m >> shift;
      rem = (m & ((1u << shift) - 1u)) != 0u;
    }
  }
  if (away && rem) { h += 1u; }
  return (sign << 15u) | h;
}

fn src_value(i: u32) -> f32 {
#if SRC == bf16
  let w = src[i >> 1u];
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
#elif SRC == f16
  let w = src[i >> 1u];
  return f16_to_f32(select(w & 0xffffu, w >> 16u, (i & 1u) == 1u));
#else
  return src[i];
#endif
}

// One thread per group of 64 source values (rows [0, N) of the chunk, starting at element src_off),
// written to destination rows [off, off + N). 2-D grid: group = gid.x + gid.y · (64 · num_workgroups.x).
@compute @workgroup_size(64)
fn quantize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = gid.x + gid.y * nwg.x * 64u;
  let gpr = params.K / GROUP;
  if (g >= params.N * gpr) { return; }
  let base = params.src_off + g * GROUP;
  var lo = src_value(base);
  var hi = lo;
  for (var j = 1u; j < GROUP; j++) {
    let v = src_value(base + j);
    lo = min(lo, v);
    hi = max(hi, v);
  }
  let mn_bits = f32_to_f16_directed(lo, false);
  let mn = f16_to_f32(mn_bits);
  let step_bits = f32_to_f16_directed((hi - mn) * (1.0 / 15.0), true);
  let step = f16_to_f32(step_bits);
  let dst = params.off * gpr + g;
  sm[dst] = step_bits | (mn_bits << 16u);
  var words: array<u32, 8>;
  for (var w = 0u; w < 8u; w++) {
    var word = 0u;
    for (var j = 0u; j < 8u; j++) {
      let d = src_value(base + w * 8u + j) - mn;
      var code = 0u;
      for (var c = 0u; c < 15u; c++) {
        if (d > (f32(c) + 0.5) * step) { code += 1u; }
      }
      word |= code << (4u * j);
    }
    words[w] = word;
  }
  q[2u * dst] = vec4<u32>(words[0], words[1], words[2], words[3]);
  q[2u * dst + 1u] = vec4<u32>(words[4], words[5], words[6], words[7]);
}

#endif
// ------------------------------------------------------------------------------------------------
#if OP == dequantize

@group(0) @binding(1) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sm: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;  // [N, K]

// One thread per code word (8 weights). 2-D grid like quantize.
@compute @workgroup_size(64)
fn dequantize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let w = gid.x + gid.y * nwg.x * 64u;
  if (w >= params.N * (params.K / 8u)) { return; }
  let v = dequant8(q[w / 4u][w % 4u], group_scale(sm[w / 8u]));
  out[2u * w] = v[0];
  out[2u * w + 1u] = v[1];
}

#endif
// ------------------------------------------------------------------------------------------------
#if OP == matmul || OP == dx

// matmul: X [M, K] (16-byte loads: K % 64 == 0). dx: dY [M, ldy], 16-byte loads when VEC4 (ldy, off % 4 == 0).
#if OP == matmul || VEC4
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> sm: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // matmul: Y [M, ldy]; dx: dX [M, K]
#if LORA
// The adapter's rank-R left operand: U [M, R] in the forward, G = dY·B [M, R] in dX.
@group(0) @binding(5) var<storage, read> rank_rows: array<f32>;
#endif
#if LORA && OP == matmul
@group(0) @binding(6) var<storage, read> lb: array<f32>;         // B [out, R]
#elif LORA
@group(0) @binding(6) var<storage, read> la: array<f32>;         // A [R, K]
#endif

// The layout of matmul.wgsl: 16×16 threads, each THREAD_M×THREAD_N outputs (8×8 with WIDE, else 4×4) in
// 4×4 groups spaced 64 apart, so neighbouring threads' vec4 reads of the tiles are contiguous.
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
#if OP == matmul
// Reduction depth per step: 32 k = one 16-byte vec4 of codes per W row. Tiles are 2 × 16 KiB when WIDE.
const TR: u32 = 32u;
const SB: u32 = TILE_N;
#elif DX_DBUF
// Double-buffered dX (PREFETCH): step s multiplies buffer s % 2 while the next step's registers go into
// the other, one barrier per step. The padding below would take the four tiles past 32 KiB, so tile_b's
// rows are unpadded and vec4 q of row r sits at q ^ (r & 7) instead (the dequantising threads write the
// same q of 8 different rows: 8 distinct bank quads).
const TR: u32 = 16u;
const SB: u32 = TILE_N;
#else
// 16 rows of W per step, each read as TILE_N / 32 vec4; the row stride of tile_b is padded by 4 so the
// dequantising threads (same column offsets, different rows) hit different banks.
const TR: u32 = 16u;
const SB: u32 = TILE_N + 4u;
#endif
const SA: u32 = TILE_M;
#if DX_DBUF
const NBUF: u32 = 2u;
#else
const NBUF: u32 = 1u;
#endif
const A_TILE: u32 = TR * SA / 4u;
const B_TILE: u32 = TR * SB / 4u;
var<workgroup> tile_a: array<vec4<f32>, A_TILE * NBUF>;  // reduction-major: [r][m]
var<workgroup> tile_b: array<vec4<f32>, B_TILE * NBUF>;  // reduction-major: [r][n]

// vec4 index of vec4 column `q` of tile_b's row `r`.
fn b_at(r: u32, q: u32) -> u32 {
#if DX_DBUF
  return r * (SB / 4u) + (q ^ (r & 7u));
#else
  return (r * SB) / 4u + q;
#endif
}

fn store_a(r: u32, mm: u32, v: f32) {
  tile_a[(r * SA + mm) / 4u][mm % 4u] = v;
}
fn store_b(r: u32, nn: u32, v: f32) {
  tile_b[b_at(r, nn / 4u)][nn % 4u] = v;
}

// Stores the 32 dequantised weights of one vec4 of codes: tile_b[r0 + i·dr][c0 + i·dc], i = 0..31.
fn store_codes(codes: vec4<u32>, sc: vec2<f32>, r0: u32, dr: u32, c0: u32, dc: u32) {
  for (var i = 0u; i < 4u; i++) {
    let v = dequant8(codes[i], sc);
    for (var j = 0u; j < 4u; j++) {
      let e = 8u * i + j;
      store_b(r0 + e * dr, c0 + e * dc, v[0][j]);
      store_b(r0 + (e + 4u) * dr, c0 + (e + 4u) * dc, v[1][j]);
    }
  }
}

fn mac(lid: vec3<u32>, acc: ptr<function, array<array<f32, THREAD_N>, THREAD_M>>) { mac_buf(lid, acc, 0u); }

fn mac_buf(lid: vec3<u32>, acc: ptr<function, array<array<f32, THREAD_N>, THREAD_M>>, buf: u32) {
  for (var kk = 0u; kk < TR; kk++) {
    var ra: array<vec4<f32>, THREAD_M / 4u>;
    var rb: array<vec4<f32>, THREAD_N / 4u>;
    for (var g = 0u; g < THREAD_M / 4u; g++) { ra[g] = tile_a[buf * A_TILE + (kk * SA) / 4u + g * WG_Y + lid.y]; }
    for (var g = 0u; g < THREAD_N / 4u; g++) { rb[g] = tile_b[buf * B_TILE + b_at(kk, g * WG_X + lid.x)]; }
    for (var i = 0u; i < THREAD_M; i++) {
      let av = ra[i / 4u][i % 4u];
      for (var j = 0u; j < THREAD_N; j++) { (*acc)[i][j] = fma(av, rb[j / 4u][j % 4u], (*acc)[i][j]); }
    }
  }
}

#if LORA
// Stages s·rank_rows [row0, row0 + TILE_M) × [r0, r0 + TR) into tile_a: the left operand of the adapter's
// R extra reduction steps (s·U·Bᵀ in the forward, s·G·A in dX), zero past M and R.
fn stage_scaled_rank_rows(r0: u32, row0: u32, tid: u32) {
  for (var idx = tid; idx < TILE_M * TR; idx += THREADS) {
    let rr = idx % TR;
    let mm = idx / TR;
    let m = row0 + mm;
    let r = r0 + rr;
    var v = 0.0;
    if (m < params.M && r < params.R) { v = params.s * rank_rows[m * params.R + r]; }
    store_a(rr, mm, v);
  }
}
#endif

#if OP == dx && PREFETCH
// Register-staged dX (VEC4 and WIDE): the next step's dY tile is fetched as 4×4 blocks (4 rows m × 4 n,
// threads below DX_A_BLOCKS) and transposed in registers, so every store to the reduction-major tile is a
// whole vec4 with neighbouring threads on neighbouring vec4s; the W tile as one vec4 of codes (32 k of
// one row n) per thread below DX_W_SLOTS, dequantised into 8 vec4 stores, rows fastest across threads so
// the padded row stride spreads them over distinct banks.
const DX_A_BLOCKS: u32 = (TILE_M / 4u) * (TR / 4u);
const DX_W_SLOTS: u32 = TR * (TILE_N / 32u);

fn dx_fetch(pa: ptr<function, array<vec4<f32>, 4>>, pq: ptr<function, vec4<u32>>, ps: ptr<function, u32>, row0: u32, col0: u32, r0: u32, tid: u32) {
  let N = params.N;
  if (tid < DX_A_BLOCKS) {
    let mq = tid % (TILE_M / 4u);
    let n = r0 + (tid / (TILE_M / 4u)) * 4u;
    for (var r = 0u; r < 4u; r++) {
      let m = row0 + mq * 4u + r;
      var v = vec4<f32>(0.0);
      if (m < params.M && n < N) {
        v = x[(m * params.ldy + params.off + n) / 4u];
        v = select(v, vec4<f32>(0.0), vec4<u32>(n) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(N));
      }
      (*pa)[r] = v;
    }
  }
  if (tid < DX_W_SLOTS) {
    let n = r0 + tid % TR;
    let k = col0 + 32u * (tid / TR);
    *pq = vec4<u32>(0u);
    *ps = 0u;
    if (n < N && k < params.K) {
      let at = n * params.K + k;
      *pq = q[at / 32u];
      *ps = sm[at / GROUP];
    }
  }
}

fn dx_commit(pa: ptr<function, array<vec4<f32>, 4>>, pq: vec4<u32>, ps: u32, tid: u32, buf: u32) {
  let oa = buf * A_TILE;
  let ob = buf * B_TILE;
  if (tid < DX_A_BLOCKS) {
    let mq = tid % (TILE_M / 4u);
    let nq = tid / (TILE_M / 4u);
    let b0 = (*pa)[0];
    let b1 = (*pa)[1];
    let b2 = (*pa)[2];
    let b3 = (*pa)[3];
    tile_a[oa + ((nq * 4u) * SA) / 4u + mq] = vec4<f32>(b0.x, b1.x, b2.x, b3.x);
    tile_a[oa + ((nq * 4u + 1u) * SA) / 4u + mq] = vec4<f32>(b0.y, b1.y, b2.y, b3.y);
    tile_a[oa + ((nq * 4u + 2u) * SA) / 4u + mq] = vec4<f32>(b0.z, b1.z, b2.z, b3.z);
    tile_a[oa + ((nq * 4u + 3u) * SA) / 4u + mq] = vec4<f32>(b0.w, b1.w, b2.w, b3.w);
  }
  if (tid < DX_W_SLOTS) {
    let nn = tid % TR;
    let c0 = 32u * (tid / TR);
    let sc = group_scale(ps);
    for (var i = 0u; i < 4u; i++) {
      let v = dequant8(pq[i], sc);
      tile_b[ob + b_at(nn, (c0 + 8u * i) / 4u)] = v[0];
      tile_b[ob + b_at(nn, (c0 + 8u * i) / 4u + 1u)] = v[1];
    }
  }
}
#endif

@compute @workgroup_size(WG_X, WG_Y)
#if OP == matmul
fn q4_matmul(
#else
fn q4_matmul_dx(
#endif
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
  let M = params.M;
  let N = params.N;
  let K = params.K;
  var acc: array<array<f32, THREAD_N>, THREAD_M>;
  for (var i = 0u; i < THREAD_M; i++) {
    for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = 0.0; }
  }
#if OP == matmul
  for (var r0 = 0u; r0 < K; r0 += TR) {
    // X tile [TILE_M, 32 k]: 8 consecutive threads read one row's 128 contiguous bytes.
    for (var idx = tid; idx < TILE_M * (TR / 4u); idx += THREADS) {
      let kq = idx % (TR / 4u);
      let mm = idx / (TR / 4u);
      let m = row0 + mm;
      var v = vec4<f32>(0.0);
      if (m < M) { v = x[(m * K + r0) / 4u + kq]; }
      for (var i = 0u; i < 4u; i++) { store_a(kq * 4u + i, mm, v[i]); }
    }
    // W tile [TILE_N rows, 32 k]: one 16-byte load of codes per row, plus the group's scale word.
    for (var nn = tid; nn < TILE_N; nn += THREADS) {
      let n = col0 + nn;
      if (n < N) {
        let at = n * K + r0;
        store_codes(q[at / 32u], group_scale(sm[at / GROUP]), 0u, 1u, nn, 0u);
      } else {
        for (var j = 0u; j < TR; j++) { store_b(j, nn, 0.0); }
      }
    }
    workgroupBarrier();
    mac(lid, &acc);
    workgroupBarrier();
  }
#if LORA
  // The adapter term s·U·Bᵀ as R more reduction steps over [s·U | B]: Y is written once.
  for (var r0 = 0u; r0 < params.R; r0 += TR) {
    stage_scaled_rank_rows(r0, row0, tid);
    for (var idx = tid; idx < TILE_N * TR; idx += THREADS) {
      let rr = idx % TR;
      let nn = idx / TR;
      let n = col0 + nn;
      let r = r0 + rr;
      var v = 0.0;
      if (n < N && r < params.R) { v = lb[(params.b_row0 + n) * params.R + r]; }
      store_b(rr, nn, v);
    }
    workgroupBarrier();
    mac(lid, &acc);
    workgroupBarrier();
  }
#endif
#elif PREFETCH
#if LORA
  // The adapter's share of dX first, s·G·A, as R reduction steps over [s·G | A] (A [R, K] is laid out like
  // W's rows); the base steps below accumulate onto it, so dX is written once and the separate
  // read-modify-write pass over dX disappears. With lora_dropout (DROPOUT) the term is then masked per
  // element of X, before the base steps add on: see below.
  for (var r0 = 0u; r0 < params.R; r0 += TR) {
    stage_scaled_rank_rows(r0, row0, tid);
    for (var idx = tid; idx < TR * TILE_N; idx += THREADS) {
      let kk = idx % TILE_N;
      let rr = idx / TILE_N;
      let k = col0 + kk;
      let r = r0 + rr;
      var v = 0.0;
      if (k < K && r < params.R) { v = la[r * K + k]; }
      store_b(rr, kk, v);
    }
    workgroupBarrier();
    mac(lid, &acc);
    workgroupBarrier();
  }
#if DROPOUT
  // mask ⊙ s·G·A, the mask of X's element (m, k) as the forward's XA drew it. The hashes go into one bit
  // mask per row first, and the accumulators are then scaled by a select on those bits: an earlier version
  // hashed inside the accumulator loop, which the driver did not unroll, and the accumulators left registers
  // (37–54% slower than the bare kernel on the H100). This way the whole backward beat the separate DX pass
  // on 7 of 8 shapes on the H100 (2048 tokens: wqkv 1.193 vs 1.258 ms, w1 2.268 vs 2.372, w2 2.307 vs 2.320;
  // 512 tokens: w1 1.389 vs 1.599; wo at 512 tokens 0.367 vs 0.354).
  var keep_bits: array<u32, THREAD_M>;
  for (var i = 0u; i < THREAD_M; i++) {
    let m = row0 + ((i / 4u) * WG_Y + lid.y) * 4u + i % 4u;
    var bits = 0u;
    for (var j = 0u; j < THREAD_N; j++) {
      let k = col0 + ((j / 4u) * WG_X + lid.x) * 4u + j % 4u;
      bits |= select(0u, 1u << j, dropout_hash(params.seed, m * K + k) >= params.threshold);
    }
    keep_bits[i] = bits;
  }
  for (var i = 0u; i < THREAD_M; i++) {
    for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = select(0.0, acc[i][j] * params.keep_scale, ((keep_bits[i] >> j) & 1u) != 0u); }
  }
#endif
#endif
  var pa: array<vec4<f32>, 4>;
  var pq = vec4<u32>(0u);
  var ps = 0u;
  dx_fetch(&pa, &pq, &ps, row0, col0, 0u, tid);
#if DX_DBUF
  dx_commit(&pa, pq, ps, tid, 0u);
  workgroupBarrier();
  var buf = 0u;
  for (var r0 = 0u; r0 < N; r0 += TR) {
    let more = r0 + TR < N;
    if (more) { dx_fetch(&pa, &pq, &ps, row0, col0, r0 + TR, tid); }
    mac_buf(lid, &acc, buf);
    if (more) {
      buf ^= 1u;
      dx_commit(&pa, pq, ps, tid, buf);
    }
    workgroupBarrier();
  }
#else
  for (var r0 = 0u; r0 < N; r0 += TR) {
    dx_commit(&pa, pq, ps, tid, 0u);
    workgroupBarrier();
    if (r0 + TR < N) { dx_fetch(&pa, &pq, &ps, row0, col0, r0 + TR, tid); }
    mac(lid, &acc);
    workgroupBarrier();
  }
#endif
#else
  for (var r0 = 0u; r0 < N; r0 += TR) {
    // dY tile [TILE_M, TR n] of this block's columns.
#if VEC4
    for (var idx = tid; idx < TILE_M * (TR / 4u); idx += THREADS) {
      let nq = idx % (TR / 4u);
      let mm = idx / (TR / 4u);
      let m = row0 + mm;
      let n = r0 + nq * 4u;
      var v = vec4<f32>(0.0);
      if (m < M && n < N) { v = x[(m * params.ldy + params.off + n) / 4u]; }
      for (var i = 0u; i < 4u; i++) { store_a(nq * 4u + i, mm, select(v[i], 0.0, n + i >= N)); }
    }
#else
    for (var idx = tid; idx < TILE_M * TR; idx += THREADS) {
      let nn = idx % TR;
      let mm = idx / TR;
      let m = row0 + mm;
      let n = r0 + nn;
      var v = 0.0;
      if (m < M && n < N) { v = x[m * params.ldy + params.off + n]; }
      store_a(nn, mm, v);
    }
#endif
    // W tile [TR rows n, TILE_N k]: TILE_N / 32 16-byte loads per row.
    let per_row = TILE_N / 32u;
    for (var idx = tid; idx < TR * per_row; idx += THREADS) {
      let h = idx % per_row;
      let nn = idx / per_row;
      let n = r0 + nn;
      if (n < N && col0 + 32u * h < K) {
        let at = n * K + col0 + 32u * h;
        store_codes(q[at / 32u], group_scale(sm[at / GROUP]), nn, 0u, 32u * h, 1u);
      } else {
        for (var j = 0u; j < 32u; j++) { store_b(nn, 32u * h + j, 0.0); }
      }
    }
    workgroupBarrier();
    mac(lid, &acc);
    workgroupBarrier();
  }
#endif

  for (var i = 0u; i < THREAD_M; i++) {
    let m = row0 + ((i / 4u) * WG_Y + lid.y) * 4u + i % 4u;
    if (m >= M) { continue; }
    for (var j = 0u; j < THREAD_N; j++) {
      let n = col0 + ((j / 4u) * WG_X + lid.x) * 4u + j % 4u;
#if OP == matmul
      if (n >= N) { continue; }
      y[m * params.ldy + params.off + n] = acc[i][j];
#else
      if (n >= K) { continue; }
      let at = m * K + n;
#if ACCUMULATE
      y[at] = y[at] + acc[i][j];
#else
      y[at] = acc[i][j];
#endif
#endif
    }
  }
}

#endif

#if OP == matmul && KC && WIDE
// The forward with k-contiguous tiles (KC): X rows and W rows both stay k-contiguous in workgroup memory,
// [row][16 k] as 4 vec4 plus one vec4 of padding (8 neighbouring rows reading the same k quad hit 8
// distinct bank quads), so nothing is transposed on the way in: two code words dequantise into 4
// whole-vec4 stores. Register-staged: the next step's 2 vec4 of X per thread and, for threads below
// TILE_N, the two code words + scale word of one W row are fetched while the current step is multiplied.
// Threads own rows i·16 + lid.y and columns j·16 + lid.x (neighbouring threads read neighbouring rows).
// 16 k per step measured faster than 32 (swizzled, 32 KiB of tiles) on the H100, as for matmul.wgsl.
// KC_SPLIT_W (the default): all 256 threads dequantise one code word each (two vec4 stores) instead of the
// first 128 threads two words: 4–5% faster on the H100 at T=2048 (w1 31.6 vs 30.3 TFLOP/s, w2 29.8 vs 28.3),
// the warps reach the barrier together.
// Measured and removed: loading and decoding the group's scale word once per 64 k instead of every step, with
// codes turned into floats by exponent bits (0x4B000000 | c = 2²³ + c) instead of integer-to-float
// conversions: 0.6–2.3% slower at 2048 tokens on the H100 (w1 2.189 vs 2.176 ms, wqkv 1.167 vs 1.140). The
// exponent bits alone, with the scale decoded every step as now, are KC_EXP_CODES below (not yet measured).
// KC_DBUF: two buffers of each tile, one barrier per step (step s multiplies buffer s % 2 while the next
// step's registers go into the other); the four 128×16 tiles fill 32 KiB only without the padding vec4, so
// there vec4 q of row r sits at q ^ ((r >> 1) & 3) instead (rows r and r + 2 would share bank quads).
const KC_DEPTH: u32 = 16u;
#if KC_DBUF
const KC_ROW: u32 = KC_DEPTH / 4u;
const KC_NBUF: u32 = 2u;
fn kc_at(row: u32, kq: u32) -> u32 { return row * KC_ROW + (kq ^ ((row >> 1u) & 3u)); }
#else
const KC_ROW: u32 = KC_DEPTH / 4u + 1u;
const KC_NBUF: u32 = 1u;
fn kc_at(row: u32, kq: u32) -> u32 { return row * KC_ROW + kq; }
#endif
const KC_X_TILE: u32 = TILE_M * KC_ROW;
const KC_W_TILE: u32 = TILE_N * KC_ROW;
var<workgroup> kc_x: array<vec4<f32>, KC_X_TILE * KC_NBUF>;
var<workgroup> kc_w: array<vec4<f32>, KC_W_TILE * KC_NBUF>;
const KC_X_SLOTS: u32 = TILE_M * (KC_DEPTH / 4u) / THREADS;
#if KC_SPLIT_W
alias KC_CODES = u32;
#else
alias KC_CODES = vec2<u32>;
#endif

fn kc_mac(lid: vec3<u32>, acc: ptr<function, array<array<f32, THREAD_N>, THREAD_M>>, buf: u32) {
  for (var kq = 0u; kq < KC_DEPTH / 4u; kq++) {
    var ra: array<vec4<f32>, THREAD_M>;
    for (var i = 0u; i < THREAD_M; i++) { ra[i] = kc_x[buf * KC_X_TILE + kc_at(i * WG_Y + lid.y, kq)]; }
    for (var j = 0u; j < THREAD_N; j++) {
      let bv = kc_w[buf * KC_W_TILE + kc_at(j * WG_X + lid.x, kq)];
      for (var i = 0u; i < THREAD_M; i++) {
        var s = (*acc)[i][j];
        s = fma(ra[i].x, bv.x, s);
        s = fma(ra[i].y, bv.y, s);
        s = fma(ra[i].z, bv.z, s);
        s = fma(ra[i].w, bv.w, s);
        (*acc)[i][j] = s;
      }
    }
  }
}

// Stages step k0: X slot u of this thread is (row (u·THREADS + tid) / 4, k quad % 4); threads below TILE_N
// also take the two code words of W row col0 + tid covering [k0, k0 + 16) and its group's scale word (rows
// past N keep zero codes and a zero scale word, which dequantise to zeros).
fn kc_fetch_x(px: ptr<function, array<vec4<f32>, KC_X_SLOTS>>, row0: u32, k0: u32, tid: u32) {
  let K = params.K;
  for (var u = 0u; u < KC_X_SLOTS; u++) {
    let slot = u * THREADS + tid;
    let m = row0 + slot / 4u;
    var v = vec4<f32>(0.0);
    if (m < params.M) { v = x[(m * K + k0) / 4u + slot % 4u]; }
    (*px)[u] = v;
  }
}

fn kc_fetch_w(pq: ptr<function, KC_CODES>, ps: ptr<function, u32>, col0: u32, k0: u32, tid: u32) {
  let K = params.K;
#if KC_SPLIT_W
  // Every thread takes one code word: W row col0 + tid / 2, word tid % 2 of the step's two.
  let n = col0 + tid / 2u;
  if (n < params.N) {
    let at = n * K + k0;
    *pq = q[at / 32u][(k0 & 16u) / 8u + tid % 2u];
    *ps = sm[at / GROUP];
  }
#else
  if (tid < TILE_N && col0 + tid < params.N) {
    let at = (col0 + tid) * K + k0;
    let codes = q[at / 32u];
    *pq = select(codes.zw, codes.xy, (k0 & 16u) == 0u);
    *ps = sm[at / GROUP];
  }
#endif
}

fn kc_fetch(px: ptr<function, array<vec4<f32>, KC_X_SLOTS>>, pq: ptr<function, KC_CODES>, ps: ptr<function, u32>, row0: u32, col0: u32, k0: u32, tid: u32) {
  kc_fetch_x(px, row0, k0, tid);
  kc_fetch_w(pq, ps, col0, k0, tid);
}

// KC_EXP_CODES: the codes become floats by exponent bits (q4_format.wgsl's dequant8_exp, same results).
fn kc_dequant(word: u32, sc: vec2<f32>) -> array<vec4<f32>, 2> {
#if KC_EXP_CODES
  return dequant8_exp(word, sc);
#else
  return dequant8(word, sc);
#endif
}

// One step's X registers into tile buffer `buf`.
fn kc_store_x(px: array<vec4<f32>, KC_X_SLOTS>, tid: u32, buf: u32) {
  for (var u = 0u; u < KC_X_SLOTS; u++) {
    let slot = u * THREADS + tid;
    kc_x[buf * KC_X_TILE + kc_at(slot / 4u, slot % 4u)] = px[u];
  }
}

#if KC_SPLIT_W
// One step's X registers and this thread's 8 dequantised weights (W row tid / 2, half tid % 2 of the step)
// into tile buffer `buf`. KC_EARLY (with KC_DBUF) calls it with weights dequantised a step ahead: W's codes
// are fetched two steps ahead and dequantised one step ahead, before the step's products, so what is left
// between the products and the barrier is stores alone (as in the f32 kernel).
fn kc_store(px: array<vec4<f32>, KC_X_SLOTS>, w: array<vec4<f32>, 2>, tid: u32, buf: u32) {
  kc_store_x(px, tid, buf);
  let row = buf * KC_W_TILE;
  kc_w[row + kc_at(tid / 2u, 2u * (tid % 2u))] = w[0];
  kc_w[row + kc_at(tid / 2u, 2u * (tid % 2u) + 1u)] = w[1];
}
#endif

// The staged registers of one step into tile buffer `buf`: X as it is, W's codes dequantised.
fn kc_commit(px: array<vec4<f32>, KC_X_SLOTS>, pq: KC_CODES, ps: u32, tid: u32, buf: u32) {
#if KC_SPLIT_W
  kc_store(px, kc_dequant(pq, group_scale(ps)), tid, buf);
#else
  kc_store_x(px, tid, buf);
  if (tid < TILE_N) {
    let sc = group_scale(ps);
    let lo = kc_dequant(pq.x, sc);
    let hi = kc_dequant(pq.y, sc);
    let row = buf * KC_W_TILE;
    kc_w[row + kc_at(tid, 0u)] = lo[0];
    kc_w[row + kc_at(tid, 1u)] = lo[1];
    kc_w[row + kc_at(tid, 2u)] = hi[0];
    kc_w[row + kc_at(tid, 3u)] = hi[1];
  }
#endif
}

@compute @workgroup_size(WG_X, WG_Y)
fn q4_matmul_kc(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
  let M = params.M;
  let N = params.N;
  let K = params.K;
  var acc: array<array<f32, THREAD_N>, THREAD_M>;
  for (var i = 0u; i < THREAD_M; i++) {
    for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = 0.0; }
  }
  var px: array<vec4<f32>, KC_X_SLOTS>;
  var pq = KC_CODES(0u);
  var ps = 0u;
  kc_fetch(&px, &pq, &ps, row0, col0, 0u, tid);
#if KC_EARLY
  kc_commit(px, pq, ps, tid, 0u);
  if (KC_DEPTH < K) { kc_fetch_w(&pq, &ps, col0, KC_DEPTH, tid); }
  workgroupBarrier();
  var buf = 0u;
  var pw: array<vec4<f32>, 2>;
  for (var k0 = 0u; k0 < K; k0 += KC_DEPTH) {
    let more = k0 + KC_DEPTH < K;
    if (more) {
      pw = kc_dequant(pq, group_scale(ps));
      kc_fetch_x(&px, row0, k0 + KC_DEPTH, tid);
    }
    if (k0 + 2u * KC_DEPTH < K) { kc_fetch_w(&pq, &ps, col0, k0 + 2u * KC_DEPTH, tid); }
    kc_mac(lid, &acc, buf);
    if (more) {
      buf ^= 1u;
      kc_store(px, pw, tid, buf);
    }
    workgroupBarrier();
  }
#elif KC_DBUF
  kc_commit(px, pq, ps, tid, 0u);
  workgroupBarrier();
  var buf = 0u;
  for (var k0 = 0u; k0 < K; k0 += KC_DEPTH) {
    let more = k0 + KC_DEPTH < K;
    if (more) { kc_fetch(&px, &pq, &ps, row0, col0, k0 + KC_DEPTH, tid); }
    kc_mac(lid, &acc, buf);
    if (more) {
      buf ^= 1u;
      kc_commit(px, pq, ps, tid, buf);
    }
    workgroupBarrier();
  }
#else
  for (var k0 = 0u; k0 < K; k0 += KC_DEPTH) {
    kc_commit(px, pq, ps, tid, 0u);
    workgroupBarrier();
    if (k0 + KC_DEPTH < K) { kc_fetch(&px, &pq, &ps, row0, col0, k0 + KC_DEPTH, tid); }
    kc_mac(lid, &acc, 0u);
    workgroupBarrier();
  }
#endif
#if LORA
  // The adapter term s·U·Bᵀ as R more reduction steps over [s·U | B] (both k-contiguous): Y is written once.
  for (var r0 = 0u; r0 < params.R; r0 += KC_DEPTH) {
    for (var idx = tid; idx < TILE_M * KC_DEPTH; idx += THREADS) {
      let rr = idx % KC_DEPTH;
      let mm = idx / KC_DEPTH;
      let m = row0 + mm;
      let r = r0 + rr;
      var v = 0.0;
      if (m < M && r < params.R) { v = params.s * rank_rows[m * params.R + r]; }
      kc_x[kc_at(mm, rr / 4u)][rr % 4u] = v;
    }
    for (var idx = tid; idx < TILE_N * KC_DEPTH; idx += THREADS) {
      let rr = idx % KC_DEPTH;
      let nn = idx / KC_DEPTH;
      let n = col0 + nn;
      let r = r0 + rr;
      var v = 0.0;
      if (n < N && r < params.R) { v = lb[(params.b_row0 + n) * params.R + r]; }
      kc_w[kc_at(nn, rr / 4u)][rr % 4u] = v;
    }
    workgroupBarrier();
    kc_mac(lid, &acc, 0u);
    workgroupBarrier();
  }
#endif
  for (var i = 0u; i < THREAD_M; i++) {
    let m = row0 + i * WG_Y + lid.y;
    if (m >= M) { continue; }
    for (var j = 0u; j < THREAD_N; j++) {
      let n = col0 + j * WG_X + lid.x;
      if (n >= N) { continue; }
      y[m * params.ldy + params.off + n] = acc[i][j];
    }
  }
}
#endif

#if OP == gemv && ONE_ROW

// Decode's single token (M = 1). Each invocation owns RPT rows of W at the same columns, so the 32
// activations of a code word are loaded once and reused for RPT rows, and its RPT code words are independent
// loads in flight together; the accumulators are one vec4 (no dynamically indexed array, which the general
// kernel below needs for its runtime M and which NVIDIA's compiler keeps in local memory). The LoRA epilogue
// s·(u·B[n]) is spread over the lanes (each lane a strided share of the rank) and rides the same reduction.
// Rows past N are read clamped to the last row and never written.

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;    // x [K]
@group(0) @binding(2) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> sm: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // y [ldy]
#if LORA
@group(0) @binding(5) var<storage, read> lu: array<f32>;         // u [R]
@group(0) @binding(6) var<storage, read> lb: array<f32>;         // B [out, R]
#endif
#if GLU
// SwiGLU: q/sm above are the gate projection, these the up projection (same shape); y = silu(gate)·up.
@group(0) @binding(5) var<storage, read> q_up: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> sm_up: array<u32>;
#endif

const LANES: u32 = 32u;
const RPT: u32 = 4u;            // W rows per invocation (the vec4 accumulator)
override GEMV_ROWS: u32 = 4u;   // row groups per workgroup (RPT rows each, LANES invocations each)
var<workgroup> part: array<vec4<f32>, LANES * GEMV_ROWS>;
#if GLU
var<workgroup> part_up: array<vec4<f32>, LANES * GEMV_ROWS>;

// The same as swiglu.wgsl's forward, so the fused decode gives what the two projections and swiglu give.
fn sigmoid(g: f32) -> f32 { return 1.0 / (1.0 + exp(-g)); }
#endif

// Σ over one code word of w·x for the 4 rows at `at` (+ c), w = code·step + min.
fn rows4_dot(qq: vec4<u32>, qr: vec4<u32>, qs: vec4<u32>, qt: vec4<u32>, sw: vec4<u32>, xs: array<vec4<f32>, 8>, xsum: f32) -> vec4<f32> {
  let s0 = group_scale(sw.x);
  let s1 = group_scale(sw.y);
  let s2 = group_scale(sw.z);
  let s3 = group_scale(sw.w);
  let d = vec4<f32>(codes_dot(qq, xs), codes_dot(qr, xs), codes_dot(qs, xs), codes_dot(qt, xs));
  return d * vec4<f32>(s0.x, s1.x, s2.x, s3.x) + xsum * vec4<f32>(s0.y, s1.y, s2.y, s3.y);
}

// code·x for one code word (32 weights) against its 32 activations xs.
fn codes_dot(word: vec4<u32>, xs: array<vec4<f32>, 8>) -> f32 {
  var d = 0.0;
  for (var i = 0u; i < 4u; i++) {
    let c = codes8(word[i]);
    d += dot(c[0], xs[2u * i]) + dot(c[1], xs[2u * i + 1u]);
  }
  return d;
}

@compute @workgroup_size(LANES, GEMV_ROWS)
fn q4_gemv(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n0 = ((wg.x + wg.y * nwg.x) * GEMV_ROWS + lid.y) * RPT;
  let lane = lid.x;
  let per_row = params.K / 32u;
  let last = params.N - 1u;
  let rows = vec4<u32>(min(n0, last), min(n0 + 1u, last), min(n0 + 2u, last), min(n0 + 3u, last));
  let at = rows * per_row;
  var acc = vec4<f32>(0.0);
#if GLU
  var acc_up = vec4<f32>(0.0);
#endif
  for (var c = lane; c < per_row; c += LANES) {
    var xs: array<vec4<f32>, 8>;
    var sx = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
      xs[i] = x[c * 8u + i];
      sx += xs[i];
    }
    let xsum = sx.x + sx.y + sx.z + sx.w;
    // w = code·step + min, so w·x summed = step·(code·x) + min·Σx.
    let g = (at + vec4<u32>(c)) / 2u;
    acc += rows4_dot(q[at.x + c], q[at.y + c], q[at.z + c], q[at.w + c], vec4<u32>(sm[g.x], sm[g.y], sm[g.z], sm[g.w]), xs, xsum);
#if GLU
    acc_up += rows4_dot(q_up[at.x + c], q_up[at.y + c], q_up[at.z + c], q_up[at.w + c], vec4<u32>(sm_up[g.x], sm_up[g.y], sm_up[g.z], sm_up[g.w]), xs, xsum);
#endif
  }
#if LORA
  let R = params.R;
  let brow = (rows + params.b_row0) * R;
  var t = vec4<f32>(0.0);
  for (var j = lane; j < R; j += LANES) {
    t = fma(vec4<f32>(lu[j]), vec4<f32>(lb[brow.x + j], lb[brow.y + j], lb[brow.z + j], lb[brow.w + j]), t);
  }
  acc = fma(vec4<f32>(params.s), t, acc);
#endif
  let base = lid.y * LANES;
  part[base + lane] = acc;
#if GLU
  part_up[base + lane] = acc_up;
#endif
  workgroupBarrier();
  for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      part[base + lane] += part[base + lane + stride];
#if GLU
      part_up[base + lane] += part_up[base + lane + stride];
#endif
    }
    workgroupBarrier();
  }
#if GLU
  if (lane < RPT && n0 + lane < params.N) {
    let gate = part[base][lane];
    y[params.off + n0 + lane] = gate * sigmoid(gate) * part_up[base][lane];
  }
#else
  if (lane < RPT && n0 + lane < params.N) { y[params.off + n0 + lane] = part[base][lane]; }
#endif
}

#elif OP == gemv

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;    // X [M, K], M ≤ 8
@group(0) @binding(2) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> sm: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // Y [M, ldy]
#if LORA
@group(0) @binding(5) var<storage, read> lu: array<f32>;         // U [M, R]
@group(0) @binding(6) var<storage, read> lb: array<f32>;         // B [out, R]
#endif

const MAX_M: u32 = 8u;
const LANES: u32 = 32u;
override GEMV_ROWS: u32 = 8u;  // W rows per workgroup, LANES threads each
var<workgroup> part: array<f32, MAX_M * LANES * GEMV_ROWS>;

// Each row of W is read by LANES threads, 16 contiguous bytes each per step (512 bytes per step), once.
// Deterministic tree reduction in workgroup memory. 2-D grid: row block = wg.x + wg.y · num_workgroups.x.
@compute @workgroup_size(LANES, GEMV_ROWS)
fn q4_gemv(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = (wg.x + wg.y * nwg.x) * GEMV_ROWS + lid.y;
  let M = params.M;
  let K = params.K;
  let lane = lid.x;
  var acc: array<f32, MAX_M>;
  for (var m = 0u; m < MAX_M; m++) { acc[m] = 0.0; }
  if (n < params.N) {
    let per_row = K / 32u;
    for (var c = lane; c < per_row; c += LANES) {
      let at = n * per_row + c;
      let codes = q[at];
      let sc = group_scale(sm[at / 2u]);
      for (var i = 0u; i < 4u; i++) {
        let w = dequant8(codes[i], sc);
        let xo = (c * 32u + 8u * i) / 4u;
        for (var m = 0u; m < M; m++) {
          let xr = m * (K / 4u) + xo;
          acc[m] += dot(w[0], x[xr]) + dot(w[1], x[xr + 1u]);
        }
      }
    }
  }
  let base = lid.y * LANES;
  for (var m = 0u; m < MAX_M; m++) { part[m * LANES * GEMV_ROWS + base + lane] = acc[m]; }
  workgroupBarrier();
  for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      for (var m = 0u; m < MAX_M; m++) {
        let at = m * LANES * GEMV_ROWS + base + lane;
        part[at] = part[at] + part[at + stride];
      }
    }
    workgroupBarrier();
  }
  if (n < params.N && lane < M) {
    let m = lane;
    var v = part[m * LANES * GEMV_ROWS + base];
#if LORA
    var t = 0.0;
    for (var r = 0u; r < params.R; r++) { t = fma(lu[m * params.R + r], lb[(params.b_row0 + n) * params.R + r], t); }
    v = fma(params.s, t, v);
#endif
    y[m * params.ldy + params.off + n] = v;
  }
}

#endif
