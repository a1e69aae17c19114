// Tiled flash attention (f32): causal, grouped-query, with document masks; forward, backward and KV-cache decode.
//
// Layouts (all f32 unless noted, head_dim = HEAD_DIM, a multiple of 4; tensors are read as vec4):
//   q, o, dout, dq   [tokens, n_q_heads, HEAD_DIM]      tokens = batch·seq, batch rows one after another
//   k, v, dk, dv     [tokens, n_kv_heads, HEAD_DIM]     query head h uses kv head h / (n_q_heads / n_kv_heads)
//   lse, delta       [n_q_heads, tokens]                 lse = log Σ_j exp(scale·q·k_j) over the allowed keys
//   doc (DOCS only)  [tokens] i32                        document id per token (packing); -1 = padding;
//                                                        -(d+2): padding whose query sees document d
//                                                        while no query sees it as a key (transformers'
//                                                        right padding under an attention_mask)
//   doc_span (DOCS)  [tokens] vec2<u32>                  x: the first key position (in the row) the token
//                                                        sees as a query (seq: none); y: one past the last
//                                                        query position that sees it as a key (0: none).
//                                                        attention.ts's documentSpans computes them. The
//                                                        tiles start (forward, dq) or stop (dkv) there:
//                                                        packed rows of short documents skip the key
//                                                        (query) blocks no token of the tile can see.
//   k/v cache        [max_tokens, n_kv_heads, HEAD_DIM]  decode only; keys 0..kv_len-1 are valid
//
// Mask: query position i may see key position j of the same batch row iff j <= i (causal) and, with DOCS,
// doc[i] >= 0 and doc[j] == doc[i]. A query that sees nothing (a padding token) gets o = 0 and
// lse = LSE_MASKED (a huge positive stand-in for +inf, so exp(s - lse) = 0 and its gradients are zero).
// No NaN arises from fully masked rows or tiles: masked probabilities are set to 0 by select, never by
// exp(-inf).
//
// Gradient rule (llm.c): q, k and v are activations, so dq, dk and dv are WRITTEN (=), not accumulated;
// dk and dv are summed over the query heads of each group inside the kernel (no float atomics, one fixed
// summation order: the results are deterministic). There are no parameters here.
//
// Backward (FlashAttention-2, recompute from lse): attention_delta computes delta = rowsum(dout ∘ o);
// attention_backward_dq (register-blocked like the forward) loops over key blocks for one query block;
// attention_backward_dkv loops, for one key block, over the query heads of its group and the query blocks
// at or after it.
//
// Work split: every tiled entry point is register-blocked. An invocation computes a 4×4 block of scores
// (4 query rows × 4 keys in forward/dq, 4 keys × 4 queries in dkv) from operands staged DC head_dim
// columns at a time, the probabilities (or dS) go through workgroup memory, and it accumulates 4 output
// rows × (HEAD_DIM/4 / team) vec4 columns from rows staged KC at a time. The seq×seq matrix never exists;
// extra memory is lse and delta: linear in seq. Every loop that indexes a register array has a constant
// bound (RB_MAXC, with a break): the NVIDIA driver keeps arrays indexed under override-bounded loops in
// local memory (measured 2× slower).
//
// SUBGROUPS && SG_TEAM: the forward takes the row max and sum over a team with subgroupShuffleXor. Needs
// BLOCK_K/4 <= the subgroup size and subgroups made of consecutive invocation indices, which the TS
// module checks/assumes (true for the Vulkan, D3D12 and Metal backends of Dawn).

#if SUBGROUPS
enable subgroups;
#endif

struct Params {
  seq: u32,        // tokens per batch row (forward/backward); unused by decode
  batch: u32,
  n_q_heads: u32,
  n_kv_heads: u32,
  scale: f32,      // usually 1/sqrt(HEAD_DIM)
  tokens: u32,     // batch·seq
  kv_len: u32,     // decode: valid cache length (including the n_new new tokens)
  n_new: u32,      // decode: query tokens, at positions kv_len - n_new .. kv_len - 1
  n_split: u32,    // decode: partial results per (query, head)
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
#if DOCS
@group(0) @binding(4) var<storage, read> doc: array<i32>;
@group(0) @binding(13) var<storage, read> doc_span: array<vec2<u32>>;
#endif
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
@group(0) @binding(7) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;
@group(0) @binding(9) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dv: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> part: array<vec4<f32>>;

override HEAD_DIM: u32 = 64u;
// Tiles of forward, dq and dkv (multiples of 4): BLOCK_Q query rows × BLOCK_K keys per step.
override BLOCK_Q: u32 = 16u;
override BLOCK_K: u32 = 16u;
// head_dim columns of Q/K (dO/V) staged per step; rows (keys of V or K, queries of dO/Q) staged per step.
override DC: u32 = 16u;
override KC: u32 = 16u;
// dkv: vec4 of its one staging region (attention.ts: the larger of its two phases' needs, see dkv below).
override DKV_STAGE: u32 = 1u;
// Decode: invocations per workgroup (a multiple of HEAD_DIM / 4).
override DECODE_THREADS: u32 = 64u;
// Decode: fewest keys per split. Splits are sized by the valid length (not the cache), so a short context
// runs few workgroups and a long one many; splits past the keys return at once and are not combined.
override DECODE_MIN_CHUNK: u32 = 32u;

// Most vec4 output columns per invocation (HEAD_DIM/4 / team size); register arrays are this long.
const RB_MAXC: u32 = 8u;
const NEG: f32 = -1.0e30;
const LSE_MASKED: f32 = 1.0e30;

var<workgroup> trow: array<vec2<f32>, BLOCK_Q>; // dkv: (lse, delta) of the query tile
#if DOCS
var<workgroup> qdoc: array<i32, BLOCK_Q>;
var<workgroup> kdoc: array<i32, BLOCK_K>;
var<workgroup> span_bound: u32;
#endif

// The first key block the query tile [q0, q0 + BLOCK_Q) of a row can see (forward, dq): workgroup-uniform.
fn first_key_block(q0: u32, row_base: u32, tid: u32) -> u32 {
#if DOCS
  if (tid == 0u) {
    var lo = params.seq;
    for (var i = 0u; i < BLOCK_Q; i++) {
      if (q0 + i < params.seq) { lo = min(lo, doc_span[row_base + q0 + i].x); }
    }
    span_bound = lo;
  }
  return (workgroupUniformLoad(&span_bound) / BLOCK_K) * BLOCK_K;
#else
  return 0u;
#endif
}

// One past the last query position that sees a key of the tile [k0, k0 + BLOCK_K) (dkv): workgroup-uniform.
// KEY_SPANS: the spans are bound here too (a 10th storage buffer for dkv; adapters with fewer run to the end).
fn query_stop(k0: u32, row_base: u32, tid: u32) -> u32 {
#if DOCS && KEY_SPANS
  if (tid == 0u) {
    var hi = 0u;
    for (var j = 0u; j < BLOCK_K; j++) {
      if (k0 + j < params.seq) { hi = max(hi, doc_span[row_base + k0 + j].y); }
    }
    span_bound = hi;
  }
  return min(params.seq, workgroupUniformLoad(&span_bound));
#else
  return params.seq;
#endif
}

fn row4() -> u32 { return HEAD_DIM / 4u; }
fn group_size() -> u32 { return params.n_q_heads / params.n_kv_heads; }
fn q_index(t: u32, h: u32) -> u32 { return (t * params.n_q_heads + h) * row4(); }
fn kv_index(t: u32, hk: u32) -> u32 { return (t * params.n_kv_heads + hk) * row4(); }

// qi/kj: positions in the batch row; ti/tj: indices in the query/key tile (for the document ids).
fn allowed(qi: u32, kj: u32, ti: u32, tj: u32) -> bool {
  if (kj > qi || qi >= params.seq) { return false; }
#if DOCS
  let d = qdoc[ti];
  return d >= 0 && d == kdoc[tj];
#else
  return true;
#endif
}

// The document a token attends within as a query: its own id, or d for a -(d+2) padding token.
fn query_doc(d: i32) -> i32 {
  return select(d, -(d + 2), d < -1);
}

fn load_doc(row_base: u32, pos: u32) -> i32 {
#if DOCS
  if (pos < params.seq) { return doc[row_base + pos]; }
#endif
  return -1;
}

// ---- forward ----------------------------------------------------------------------------------------
//
// A (BLOCK_Q/4) × (BLOCK_K/4) workgroup; invocation (x, y) owns query rows 4y..4y+3 of the tile, the
// scores of those rows for keys x + i·BLOCK_K/4 (i < 4): a 4×4 block of S held in registers as four vec4
// (one per row, components = the 4 keys), and output vec4 columns x, x + BLOCK_K/4, ... of its 4 rows.
// Rows are unrolled by hand (s0..s3, acc0..acc3) and every loop that indexes a register array has a
// constant bound (with a break on the override-derived count): the NVIDIA driver otherwise keeps such
// arrays in local memory, which cost 2× here. Q and K are staged DC columns of head_dim at a time (rows
// padded by one vec4: conflict-free reads); P goes to workgroup memory key-major (4 rows per vec4); V is
// staged KC keys at a time. The row max over the BLOCK_K/4 invocations of a row team is exchanged by
// subgroupShuffleXor (SUBGROUPS && SG_TEAM) or through workgroup memory; the row sum l stays a
// per-invocation partial until the end. Query tiles run last-first (longest causal rows start first).

// Workgroup tiles: staged chunks (rows padded by one vec4: conflict-free reads), staged rows, P/dS.
var<workgroup> fq: array<vec4<f32>, BLOCK_Q * (DC / 4u + 1u)>;
var<workgroup> fk: array<vec4<f32>, BLOCK_K * (DC / 4u + 1u)>;
var<workgroup> fv: array<vec4<f32>, KC * (HEAD_DIM / 4u)>;
var<workgroup> fp: array<vec4<f32>, BLOCK_K * (BLOCK_Q / 4u + 1u)>;
var<workgroup> fred: array<vec4<f32>, (BLOCK_Q / 4u) * (BLOCK_K / 4u)>;

fn team_max4(x: vec4<f32>, ly: u32, lx: u32) -> vec4<f32> {
  let WX = BLOCK_K / 4u;
  var y = x;
#if SUBGROUPS && SG_TEAM
  for (var off = 1u; off < WX; off <<= 1u) { y = max(y, subgroupShuffleXor(y, off)); }
#else
  fred[ly * WX + lx] = x;
  workgroupBarrier();
  for (var t = 0u; t < WX; t++) { y = max(y, fred[ly * WX + t]); }
  workgroupBarrier();
#endif
  return y;
}

fn team_sum4(x: vec4<f32>, ly: u32, lx: u32) -> vec4<f32> {
  let WX = BLOCK_K / 4u;
#if SUBGROUPS && SG_TEAM
  var y = x;
  for (var off = 1u; off < WX; off <<= 1u) { y += subgroupShuffleXor(y, off); }
  return y;
#else
  workgroupBarrier();
  fred[ly * WX + lx] = x;
  workgroupBarrier();
  var y = vec4<f32>(0.0);
  for (var t = 0u; t < WX; t++) { y += fred[ly * WX + t]; }
  return y;
#endif
}

// Scaled scores of one row for my 4 keys, NEG where masked.
fn mask_row(s: vec4<f32>, qi: u32, ti: u32, k0: u32, lx: u32) -> vec4<f32> {
  let WX = BLOCK_K / 4u;
  var r = vec4<f32>(NEG);
  for (var jj = 0u; jj < 4u; jj++) {
    let tj = lx + jj * WX;
    if (allowed(qi, k0 + tj, ti, tj)) { r[jj] = s[jj] * params.scale; }
  }
  return r;
}

fn probs_row(s: vec4<f32>, m: f32) -> vec4<f32> {
  return select(vec4<f32>(0.0), exp(s - vec4<f32>(m)), s > vec4<f32>(0.5 * NEG));
}

@compute @workgroup_size(BLOCK_K / 4u, BLOCK_Q / 4u)
fn attention_forward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let WX = BLOCK_K / 4u;
  let threads = WX * (BLOCK_Q / 4u);
  let R = row4();
  let D4 = DC / 4u;
  let DQ = D4 + 1u;
  let PQ = BLOCK_Q / 4u + 1u;
  let seq = params.seq;
  let q0 = (nwg.x - 1u - wg.x) * BLOCK_Q;
  let h = wg.y;
  let hk = h / group_size();
  let row_base = wg.z * seq;
  let i0 = lid.y * 4u;
  let lx = lid.x;
  let ncol = R / WX;

#if DOCS
  for (var i = tid; i < BLOCK_Q; i += threads) { qdoc[i] = query_doc(load_doc(row_base, q0 + i)); }
#endif

  var m = vec4<f32>(NEG);
  var l = vec4<f32>(0.0);
  var acc0: array<vec4<f32>, RB_MAXC>;
  var acc1: array<vec4<f32>, RB_MAXC>;
  var acc2: array<vec4<f32>, RB_MAXC>;
  var acc3: array<vec4<f32>, RB_MAXC>;
  let k_end = min(q0 + BLOCK_Q, seq);

  for (var k0 = first_key_block(q0, row_base, tid); k0 < k_end; k0 += BLOCK_K) {
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var dc0 = 0u; dc0 < R; dc0 += D4) {
      workgroupBarrier();
      for (var idx = tid; idx < BLOCK_Q * D4; idx += threads) {
        let i = idx / D4;
        let c = idx % D4;
        var x = vec4<f32>(0.0);
        if (q0 + i < seq) { x = q[q_index(row_base + q0 + i, h) + dc0 + c]; }
        fq[i * DQ + c] = x;
      }
      for (var idx = tid; idx < BLOCK_K * D4; idx += threads) {
        let j = idx / D4;
        let c = idx % D4;
        var x = vec4<f32>(0.0);
        if (k0 + j < seq) { x = k[kv_index(row_base + k0 + j, hk) + dc0 + c]; }
        fk[j * DQ + c] = x;
      }
#if DOCS
      if (dc0 == 0u) {
        for (var j = tid; j < BLOCK_K; j += threads) { kdoc[j] = load_doc(row_base, k0 + j); }
      }
#endif
      workgroupBarrier();
      for (var c = 0u; c < D4; c++) {
        let a0 = fq[(i0 + 0u) * DQ + c];
        let a1 = fq[(i0 + 1u) * DQ + c];
        let a2 = fq[(i0 + 2u) * DQ + c];
        let a3 = fq[(i0 + 3u) * DQ + c];
        let b0 = fk[(lx + 0u * WX) * DQ + c];
        let b1 = fk[(lx + 1u * WX) * DQ + c];
        let b2 = fk[(lx + 2u * WX) * DQ + c];
        let b3 = fk[(lx + 3u * WX) * DQ + c];
        s0 += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        s1 += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        s2 += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        s3 += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
      }
    }

    s0 = mask_row(s0, q0 + i0, i0, k0, lx);
    s1 = mask_row(s1, q0 + i0 + 1u, i0 + 1u, k0, lx);
    s2 = mask_row(s2, q0 + i0 + 2u, i0 + 2u, k0, lx);
    s3 = mask_row(s3, q0 + i0 + 3u, i0 + 3u, k0, lx);
    let mloc = vec4<f32>(
      max(max(s0.x, s0.y), max(s0.z, s0.w)),
      max(max(s1.x, s1.y), max(s1.z, s1.w)),
      max(max(s2.x, s2.y), max(s2.z, s2.w)),
      max(max(s3.x, s3.y), max(s3.z, s3.w)),
    );
    let m_new = max(m, team_max4(mloc, lid.y, lx));
    let alpha = exp(m - m_new);
    m = m_new;
    let p0 = probs_row(s0, m_new.x);
    let p1 = probs_row(s1, m_new.y);
    let p2 = probs_row(s2, m_new.z);
    let p3 = probs_row(s3, m_new.w);
    l = l * alpha + vec4<f32>(dot(p0, vec4<f32>(1.0)), dot(p1, vec4<f32>(1.0)), dot(p2, vec4<f32>(1.0)), dot(p3, vec4<f32>(1.0)));
    for (var c = 0u; c < RB_MAXC; c++) {
      if (c >= ncol) { break; }
      acc0[c] *= alpha.x;
      acc1[c] *= alpha.y;
      acc2[c] *= alpha.z;
      acc3[c] *= alpha.w;
    }
    fp[(lx + 0u * WX) * PQ + lid.y] = vec4<f32>(p0.x, p1.x, p2.x, p3.x);
    fp[(lx + 1u * WX) * PQ + lid.y] = vec4<f32>(p0.y, p1.y, p2.y, p3.y);
    fp[(lx + 2u * WX) * PQ + lid.y] = vec4<f32>(p0.z, p1.z, p2.z, p3.z);
    fp[(lx + 3u * WX) * PQ + lid.y] = vec4<f32>(p0.w, p1.w, p2.w, p3.w);

    for (var kc0 = 0u; kc0 < BLOCK_K; kc0 += KC) {
      workgroupBarrier();
      for (var idx = tid; idx < KC * R; idx += threads) {
        let j = idx / R;
        let c = idx % R;
        var x = vec4<f32>(0.0);
        if (k0 + kc0 + j < seq) { x = v[kv_index(row_base + k0 + kc0 + j, hk) + c]; }
        fv[idx] = x;
      }
      workgroupBarrier();
      for (var j = 0u; j < KC; j++) {
        let pv = fp[(kc0 + j) * PQ + lid.y];
        for (var c = 0u; c < RB_MAXC; c++) {
          if (c >= ncol) { break; }
          let vv = fv[j * R + lx + c * WX];
          acc0[c] = fma(vec4<f32>(pv.x), vv, acc0[c]);
          acc1[c] = fma(vec4<f32>(pv.y), vv, acc1[c]);
          acc2[c] = fma(vec4<f32>(pv.z), vv, acc2[c]);
          acc3[c] = fma(vec4<f32>(pv.w), vv, acc3[c]);
        }
      }
    }
  }

  l = team_sum4(l, lid.y, lx);
  let inv = select(vec4<f32>(0.0), vec4<f32>(1.0) / l, l > vec4<f32>(0.0));
  let t0 = row_base + q0 + i0;
  let ok = vec4<bool>(q0 + i0 < seq, q0 + i0 + 1u < seq, q0 + i0 + 2u < seq, q0 + i0 + 3u < seq);
  for (var c = 0u; c < RB_MAXC; c++) {
    if (c >= ncol) { break; }
    let col = lx + c * WX;
    if (ok.x) { o[q_index(t0, h) + col] = acc0[c] * inv.x; }
    if (ok.y) { o[q_index(t0 + 1u, h) + col] = acc1[c] * inv.y; }
    if (ok.z) { o[q_index(t0 + 2u, h) + col] = acc2[c] * inv.z; }
    if (ok.w) { o[q_index(t0 + 3u, h) + col] = acc3[c] * inv.w; }
  }
  if (lx == 0u) {
    let lse4 = select(vec4<f32>(LSE_MASKED), m + log(l), l > vec4<f32>(0.0));
    if (ok.x) { lse[h * params.tokens + t0] = lse4.x; }
    if (ok.y) { lse[h * params.tokens + t0 + 1u] = lse4.y; }
    if (ok.z) { lse[h * params.tokens + t0 + 2u] = lse4.z; }
    if (ok.w) { lse[h * params.tokens + t0 + 3u] = lse4.w; }
  }
}

// ---- CPU adapters (SwiftShader) -------------------------------------------------------------------------
//
// One invocation per (query token, head) for the forward and dq, per (key token, kv head) for dk/dv:
// plain loops over the keys (queries) the mask allows, reading q/k/v straight from the buffers: no
// workgroup memory and no barriers, which a CPU pays for at every workgroup switch (the tiled kernels
// above ran 78 ms forward and 160 ms dk/dv for 432 tokens of the demo model on SwiftShader). Same mask,
// same lse convention (LSE_MASKED for a query that sees nothing), dq/dk/dv written; each sum runs in one
// fixed order, so the results are deterministic too.

const SW_MAX_R: u32 = 64u; // head_dim / 4 ≤ 64 (attention.ts checks head_dim ≤ 256)

fn sw_dot(qb: u32, kb: u32) -> f32 {
  var s = vec4<f32>(0.0);
  for (var c = 0u; c < row4(); c++) { s = fma(q[qb + c], k[kb + c], s); }
  return s.x + s.y + s.z + s.w;
}

fn sw_dot_dout_v(qb: u32, kb: u32) -> f32 {
  var s = vec4<f32>(0.0);
  for (var c = 0u; c < row4(); c++) { s = fma(dout[qb + c], v[kb + c], s); }
  return s.x + s.y + s.z + s.w;
}

// (token, head) of invocation gid over tokens × heads (a 2-D grid of 64-wide workgroups).
fn sw_item(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.y * nwg.x * 64u + gid.x; }

// The query a forward / dq invocation owns: token t (position qi in its batch row, which starts at token
// row_base), head h and its kv head hk, the document it attends within (qd), and its q / o / dq row (qb).
struct SwQuery {
  t: u32,
  h: u32,
  hk: u32,
  row_base: u32,
  qi: u32,
  qd: i32,
  qb: u32,
  first: u32,  // the first key position it can see
}

fn sw_query(idx: u32) -> SwQuery {
  var q: SwQuery;
  q.t = idx / params.n_q_heads;
  q.h = idx % params.n_q_heads;
  q.hk = q.h / group_size();
  q.row_base = (q.t / params.seq) * params.seq;
  q.qi = q.t - q.row_base;
  q.qd = query_doc(load_doc(q.row_base, q.qi));
  q.qb = q_index(q.t, q.h);
#if DOCS
  q.first = doc_span[q.t].x;
#else
  q.first = 0u;
#endif
  return q;
}

// Whether the query sees key position j ≤ qi of its row (the causal bound is the callers' loop).
fn sw_sees(q: SwQuery, j: u32) -> bool {
#if DOCS
  return q.qd >= 0 && load_doc(q.row_base, j) == q.qd;
#else
  return true;
#endif
}

@compute @workgroup_size(64)
fn attention_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = sw_item(gid, nwg);
  if (idx >= params.tokens * params.n_q_heads) { return; }
  let q = sw_query(idx);
  let qb = q.qb;
  var acc: array<vec4<f32>, SW_MAX_R>;
  var m = NEG;
  var l = 0.0;
  for (var j = q.first; j <= q.qi; j++) {
    if (!sw_sees(q, j)) { continue; }
    let kb = kv_index(q.row_base + j, q.hk);
    let s = sw_dot(qb, kb) * params.scale;
    if (s > m) {
      let a = exp(m - s);
      l *= a;
      for (var c = 0u; c < row4(); c++) { acc[c] *= a; }
      m = s;
    }
    let p = exp(s - m);
    l += p;
    for (var c = 0u; c < row4(); c++) { acc[c] = fma(vec4<f32>(p), v[kb + c], acc[c]); }
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var c = 0u; c < row4(); c++) { o[qb + c] = acc[c] * inv; }
  lse[q.h * params.tokens + q.t] = select(LSE_MASKED, m + log(l), l > 0.0);
}

// dq_i = scale · Σ_j P_ij (dP_ij − delta_i) k_j over the keys query i sees.
@compute @workgroup_size(64)
fn attention_backward_dq_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = sw_item(gid, nwg);
  if (idx >= params.tokens * params.n_q_heads) { return; }
  let q = sw_query(idx);
  let qb = q.qb;
  let lse_i = lse[q.h * params.tokens + q.t];
  let delta_i = delta[q.h * params.tokens + q.t];
  var acc: array<vec4<f32>, SW_MAX_R>;
  for (var j = q.first; j <= q.qi; j++) {
    if (!sw_sees(q, j)) { continue; }
    let kb = kv_index(q.row_base + j, q.hk);
    let p = exp(sw_dot(qb, kb) * params.scale - lse_i);
    let ds = p * (sw_dot_dout_v(qb, kb) - delta_i);
    for (var c = 0u; c < row4(); c++) { acc[c] = fma(vec4<f32>(ds), k[kb + c], acc[c]); }
  }
  for (var c = 0u; c < row4(); c++) { dq[qb + c] = acc[c] * params.scale; }
}

// dv_j = Σ_i P_ij dout_i and dk_j = scale · Σ_i dS_ij q_i over the queries of the group's heads that see key j.
@compute @workgroup_size(64)
fn attention_backward_dkv_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = sw_item(gid, nwg);
  if (idx >= params.tokens * params.n_kv_heads) { return; }
  let t = idx / params.n_kv_heads;
  let hk = idx % params.n_kv_heads;
  let row_base = (t / params.seq) * params.seq;
  let kj = t - row_base;
  let kd = load_doc(row_base, kj);
  let kb = kv_index(t, hk);
  let g = group_size();
  var acc_k: array<vec4<f32>, SW_MAX_R>;
  var acc_v: array<vec4<f32>, SW_MAX_R>;
  for (var h = hk * g; h < hk * g + g; h++) {
#if DOCS && KEY_SPANS
    let stop = min(params.seq, doc_span[t].y);
#else
    let stop = params.seq;
#endif
    for (var i = kj; i < stop; i++) {
#if DOCS
      let qd = query_doc(load_doc(row_base, i));
      if (qd < 0 || qd != kd) { continue; }
#endif
      let ti = row_base + i;
      let qb = q_index(ti, h);
      let p = exp(sw_dot(qb, kb) * params.scale - lse[h * params.tokens + ti]);
      let ds = p * (sw_dot_dout_v(qb, kb) - delta[h * params.tokens + ti]);
      for (var c = 0u; c < row4(); c++) {
        acc_v[c] = fma(vec4<f32>(p), dout[qb + c], acc_v[c]);
        acc_k[c] = fma(vec4<f32>(ds), q[qb + c], acc_k[c]);
      }
    }
  }
  for (var c = 0u; c < row4(); c++) {
    dk[kb + c] = acc_k[c] * params.scale;
    dv[kb + c] = acc_v[c];
  }
}

// ---- backward ----------------------------------------------------------------------------------------

// delta[h, t] = Σ_d dout[t, h, d] · o[t, h, d]; one invocation per (t, h).
@compute @workgroup_size(64)
fn attention_delta(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = params.tokens * params.n_q_heads;
  let idx = gid.x + gid.y * 65535u * 64u;
  if (idx >= n) { return; }
  let t = idx / params.n_q_heads;
  let h = idx % params.n_q_heads;
  let base = q_index(t, h);
  var s = vec4<f32>(0.0);
  for (var c = 0u; c < row4(); c++) { s = fma(dout[base + c], o[base + c], s); }
  delta[h * params.tokens + t] = s.x + s.y + s.z + s.w;
}

// dq_i = scale · Σ_j P_ij (dP_ij − delta_i) k_j, P_ij = exp(scale·q_i·k_j − lse_i), dP_ij = dout_i·v_j.
// Register-blocked like the forward (same tiles and invocation layout): each invocation computes 4×4
// blocks of S = Q·Kᵀ and dP = dO·Vᵀ from Q, K, dO, V staged DC columns at a time, writes dS key-major to
// workgroup memory, and accumulates dq for its 4 rows and vec4 columns x, x + BLOCK_K/4, ... from K
// staged KC keys at a time. No reductions across invocations.
var<workgroup> fdo: array<vec4<f32>, BLOCK_Q * (DC / 4u + 1u)>;
var<workgroup> fvc: array<vec4<f32>, BLOCK_K * (DC / 4u + 1u)>;

fn dots4(a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
}

// dS of one row for my 4 keys (0 where masked).
fn ds_row(s: vec4<f32>, dp: vec4<f32>, lse_i: f32, delta_i: f32, qi: u32, ti: u32, k0: u32, lx: u32) -> vec4<f32> {
  let WX = BLOCK_K / 4u;
  let p = exp(s * params.scale - vec4<f32>(lse_i));
  let ds = p * (dp - vec4<f32>(delta_i));
  var r = vec4<f32>(0.0);
  for (var jj = 0u; jj < 4u; jj++) {
    let tj = lx + jj * WX;
    if (allowed(qi, k0 + tj, ti, tj)) { r[jj] = ds[jj]; }
  }
  return r;
}

@compute @workgroup_size(BLOCK_K / 4u, BLOCK_Q / 4u)
fn attention_backward_dq(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let WX = BLOCK_K / 4u;
  let threads = WX * (BLOCK_Q / 4u);
  let R = row4();
  let D4 = DC / 4u;
  let DQ = D4 + 1u;
  let PQ = BLOCK_Q / 4u + 1u;
  let seq = params.seq;
  let q0 = (nwg.x - 1u - wg.x) * BLOCK_Q;
  let h = wg.y;
  let hk = h / group_size();
  let row_base = wg.z * seq;
  let i0 = lid.y * 4u;
  let lx = lid.x;
  let ncol = R / WX;

#if DOCS
  for (var i = tid; i < BLOCK_Q; i += threads) { qdoc[i] = query_doc(load_doc(row_base, q0 + i)); }
#endif
  var lse4 = vec4<f32>(0.0);
  var delta4 = vec4<f32>(0.0);
  for (var ii = 0u; ii < 4u; ii++) {
    if (q0 + i0 + ii < seq) {
      let at = h * params.tokens + row_base + q0 + i0 + ii;
      lse4[ii] = lse[at];
      delta4[ii] = delta[at];
    }
  }

  var acc0: array<vec4<f32>, RB_MAXC>;
  var acc1: array<vec4<f32>, RB_MAXC>;
  var acc2: array<vec4<f32>, RB_MAXC>;
  var acc3: array<vec4<f32>, RB_MAXC>;
  let k_end = min(q0 + BLOCK_Q, seq);

  for (var k0 = first_key_block(q0, row_base, tid); k0 < k_end; k0 += BLOCK_K) {
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    var e0 = vec4<f32>(0.0);
    var e1 = vec4<f32>(0.0);
    var e2 = vec4<f32>(0.0);
    var e3 = vec4<f32>(0.0);
    for (var dc0 = 0u; dc0 < R; dc0 += D4) {
      workgroupBarrier();
      for (var idx = tid; idx < BLOCK_Q * D4; idx += threads) {
        let i = idx / D4;
        let c = idx % D4;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        if (q0 + i < seq) {
          let at = q_index(row_base + q0 + i, h) + dc0 + c;
          x = q[at];
          y = dout[at];
        }
        fq[i * DQ + c] = x;
        fdo[i * DQ + c] = y;
      }
      for (var idx = tid; idx < BLOCK_K * D4; idx += threads) {
        let j = idx / D4;
        let c = idx % D4;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        if (k0 + j < seq) {
          let at = kv_index(row_base + k0 + j, hk) + dc0 + c;
          x = k[at];
          y = v[at];
        }
        fk[j * DQ + c] = x;
        fvc[j * DQ + c] = y;
      }
#if DOCS
      if (dc0 == 0u) {
        for (var j = tid; j < BLOCK_K; j += threads) { kdoc[j] = load_doc(row_base, k0 + j); }
      }
#endif
      workgroupBarrier();
      for (var c = 0u; c < D4; c++) {
        let b0 = fk[(lx + 0u * WX) * DQ + c];
        let b1 = fk[(lx + 1u * WX) * DQ + c];
        let b2 = fk[(lx + 2u * WX) * DQ + c];
        let b3 = fk[(lx + 3u * WX) * DQ + c];
        s0 += dots4(fq[(i0 + 0u) * DQ + c], b0, b1, b2, b3);
        s1 += dots4(fq[(i0 + 1u) * DQ + c], b0, b1, b2, b3);
        s2 += dots4(fq[(i0 + 2u) * DQ + c], b0, b1, b2, b3);
        s3 += dots4(fq[(i0 + 3u) * DQ + c], b0, b1, b2, b3);
        let w0 = fvc[(lx + 0u * WX) * DQ + c];
        let w1 = fvc[(lx + 1u * WX) * DQ + c];
        let w2 = fvc[(lx + 2u * WX) * DQ + c];
        let w3 = fvc[(lx + 3u * WX) * DQ + c];
        e0 += dots4(fdo[(i0 + 0u) * DQ + c], w0, w1, w2, w3);
        e1 += dots4(fdo[(i0 + 1u) * DQ + c], w0, w1, w2, w3);
        e2 += dots4(fdo[(i0 + 2u) * DQ + c], w0, w1, w2, w3);
        e3 += dots4(fdo[(i0 + 3u) * DQ + c], w0, w1, w2, w3);
      }
    }

    let d0 = ds_row(s0, e0, lse4.x, delta4.x, q0 + i0, i0, k0, lx);
    let d1 = ds_row(s1, e1, lse4.y, delta4.y, q0 + i0 + 1u, i0 + 1u, k0, lx);
    let d2 = ds_row(s2, e2, lse4.z, delta4.z, q0 + i0 + 2u, i0 + 2u, k0, lx);
    let d3 = ds_row(s3, e3, lse4.w, delta4.w, q0 + i0 + 3u, i0 + 3u, k0, lx);
    fp[(lx + 0u * WX) * PQ + lid.y] = vec4<f32>(d0.x, d1.x, d2.x, d3.x);
    fp[(lx + 1u * WX) * PQ + lid.y] = vec4<f32>(d0.y, d1.y, d2.y, d3.y);
    fp[(lx + 2u * WX) * PQ + lid.y] = vec4<f32>(d0.z, d1.z, d2.z, d3.z);
    fp[(lx + 3u * WX) * PQ + lid.y] = vec4<f32>(d0.w, d1.w, d2.w, d3.w);

    // dq += dS·K, K staged KC keys (all head_dim columns) at a time.
    for (var kc0 = 0u; kc0 < BLOCK_K; kc0 += KC) {
      workgroupBarrier();
      for (var idx = tid; idx < KC * R; idx += threads) {
        let j = idx / R;
        let c = idx % R;
        var x = vec4<f32>(0.0);
        if (k0 + kc0 + j < seq) { x = k[kv_index(row_base + k0 + kc0 + j, hk) + c]; }
        fv[idx] = x;
      }
      workgroupBarrier();
      for (var j = 0u; j < KC; j++) {
        let dv4 = fp[(kc0 + j) * PQ + lid.y];
        for (var c = 0u; c < RB_MAXC; c++) {
          if (c >= ncol) { break; }
          let kk = fv[j * R + lx + c * WX];
          acc0[c] = fma(vec4<f32>(dv4.x), kk, acc0[c]);
          acc1[c] = fma(vec4<f32>(dv4.y), kk, acc1[c]);
          acc2[c] = fma(vec4<f32>(dv4.z), kk, acc2[c]);
          acc3[c] = fma(vec4<f32>(dv4.w), kk, acc3[c]);
        }
      }
    }
  }

  let t0 = row_base + q0 + i0;
  for (var c = 0u; c < RB_MAXC; c++) {
    if (c >= ncol) { break; }
    let col = lx + c * WX;
    if (q0 + i0 < seq) { dq[q_index(t0, h) + col] = acc0[c] * params.scale; }
    if (q0 + i0 + 1u < seq) { dq[q_index(t0 + 1u, h) + col] = acc1[c] * params.scale; }
    if (q0 + i0 + 2u < seq) { dq[q_index(t0 + 2u, h) + col] = acc2[c] * params.scale; }
    if (q0 + i0 + 3u < seq) { dq[q_index(t0 + 3u, h) + col] = acc3[c] * params.scale; }
  }
}

// For one key block of one kv head: dv_j = Σ_{h in group} Σ_i P_ij dout_i,  dk_j = scale · Σ Σ dS_ij q_i.
// Register-blocked: a (BLOCK_Q/4) × (BLOCK_K/4) workgroup; invocation (x, y) owns key rows 4y..4y+3 of the
// block and queries x + i·BLOCK_Q/4 (i < 4) of each query tile: 4×4 blocks of Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ
// from K, V, Q, dO staged DC columns at a time; Pᵀ and dSᵀ go to workgroup memory query-major (4 keys
// per vec4); dv and dk of its 4 keys (vec4 columns x, x + BLOCK_Q/4, ...) accumulate from dO and Q rows
// staged KC queries at a time. Query heads of the group and query tiles in a fixed order: deterministic.
// The two phases never stage at the same time (a barrier opens each staging round), so they share one
// region: Q | dO | K | V chunks (DC columns) in the first, dO | Q rows (KC queries) in the second. That
// leaves room for deeper chunks than two separate sets of arrays would (fewer staging rounds and barriers;
// attention.ts chooses the depths).
var<workgroup> dkv_stage: array<vec4<f32>, DKV_STAGE>;
var<workgroup> fpt: array<vec4<f32>, BLOCK_Q * (BLOCK_K / 4u + 1u)>;
var<workgroup> fdst: array<vec4<f32>, BLOCK_Q * (BLOCK_K / 4u + 1u)>;

struct PdS {
  p: vec4<f32>,
  ds: vec4<f32>,
}

// Pᵀ and dSᵀ of one key row (position kj, tile index tj) for my 4 queries (0 where masked).
fn pds_row(s: vec4<f32>, dp: vec4<f32>, lse4: vec4<f32>, delta4: vec4<f32>, q0: u32, lx: u32, kj: u32, tj: u32) -> PdS {
  let WX = BLOCK_Q / 4u;
  let p = exp(s * params.scale - lse4);
  let ds = p * (dp - delta4);
  var r: PdS;
  r.p = vec4<f32>(0.0);
  r.ds = vec4<f32>(0.0);
  for (var ii = 0u; ii < 4u; ii++) {
    let ti = lx + ii * WX;
    if (allowed(q0 + ti, kj, ti, tj)) {
      r.p[ii] = p[ii];
      r.ds[ii] = ds[ii];
    }
  }
  return r;
}

@compute @workgroup_size(BLOCK_Q / 4u, BLOCK_K / 4u)
fn attention_backward_dkv(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let WX = BLOCK_Q / 4u;
  let threads = WX * (BLOCK_K / 4u);
  let R = row4();
  let D4 = DC / 4u;
  let DQ = D4 + 1u;
  let PK = BLOCK_K / 4u + 1u;
  let seq = params.seq;
  let k0 = wg.x * BLOCK_K;
  let hk = wg.y;
  let row_base = wg.z * seq;
  let j0 = lid.y * 4u;
  let lx = lid.x;
  let ncol = R / WX;
  let G = group_size();
  // dkv_stage offsets: first phase Q, dO (BLOCK_Q rows each), K, V (BLOCK_K rows); second phase dO, Q (KC rows).
  let at_q = 0u;
  let at_do = BLOCK_Q * DQ;
  let at_k = 2u * BLOCK_Q * DQ;
  let at_v = at_k + BLOCK_K * DQ;
  let at_do2 = 0u;
  let at_q2 = KC * R;

#if DOCS
  for (var j = tid; j < BLOCK_K; j += threads) { kdoc[j] = load_doc(row_base, k0 + j); }
#endif
  let q_stop = query_stop(k0, row_base, tid);

  var ak0: array<vec4<f32>, RB_MAXC>;
  var ak1: array<vec4<f32>, RB_MAXC>;
  var ak2: array<vec4<f32>, RB_MAXC>;
  var ak3: array<vec4<f32>, RB_MAXC>;
  var av0: array<vec4<f32>, RB_MAXC>;
  var av1: array<vec4<f32>, RB_MAXC>;
  var av2: array<vec4<f32>, RB_MAXC>;
  var av3: array<vec4<f32>, RB_MAXC>;

  for (var g = 0u; g < G; g++) {
    let h = hk * G + g;
    for (var q0 = k0; q0 < q_stop; q0 += BLOCK_Q) {
      var s0 = vec4<f32>(0.0);
      var s1 = vec4<f32>(0.0);
      var s2 = vec4<f32>(0.0);
      var s3 = vec4<f32>(0.0);
      var e0 = vec4<f32>(0.0);
      var e1 = vec4<f32>(0.0);
      var e2 = vec4<f32>(0.0);
      var e3 = vec4<f32>(0.0);
      for (var dc0 = 0u; dc0 < R; dc0 += D4) {
        workgroupBarrier();
        for (var idx = tid; idx < BLOCK_Q * D4; idx += threads) {
          let i = idx / D4;
          let c = idx % D4;
          var x = vec4<f32>(0.0);
          var y = vec4<f32>(0.0);
          if (q0 + i < seq) {
            let at = q_index(row_base + q0 + i, h) + dc0 + c;
            x = q[at];
            y = dout[at];
          }
          dkv_stage[at_q + i * DQ + c] = x;
          dkv_stage[at_do + i * DQ + c] = y;
        }
        for (var idx = tid; idx < BLOCK_K * D4; idx += threads) {
          let j = idx / D4;
          let c = idx % D4;
          var x = vec4<f32>(0.0);
          var y = vec4<f32>(0.0);
          if (k0 + j < seq) {
            let at = kv_index(row_base + k0 + j, hk) + dc0 + c;
            x = k[at];
            y = v[at];
          }
          dkv_stage[at_k + j * DQ + c] = x;
          dkv_stage[at_v + j * DQ + c] = y;
        }
        if (dc0 == 0u) {
          for (var i = tid; i < BLOCK_Q; i += threads) {
            var x = vec2<f32>(0.0);
            if (q0 + i < seq) {
              let at = h * params.tokens + row_base + q0 + i;
              x = vec2<f32>(lse[at], delta[at]);
            }
            trow[i] = x;
#if DOCS
            qdoc[i] = query_doc(load_doc(row_base, q0 + i));
#endif
          }
        }
        workgroupBarrier();
        for (var c = 0u; c < D4; c++) {
          let b0 = dkv_stage[at_q + (lx + 0u * WX) * DQ + c];
          let b1 = dkv_stage[at_q + (lx + 1u * WX) * DQ + c];
          let b2 = dkv_stage[at_q + (lx + 2u * WX) * DQ + c];
          let b3 = dkv_stage[at_q + (lx + 3u * WX) * DQ + c];
          s0 += dots4(dkv_stage[at_k + (j0 + 0u) * DQ + c], b0, b1, b2, b3);
          s1 += dots4(dkv_stage[at_k + (j0 + 1u) * DQ + c], b0, b1, b2, b3);
          s2 += dots4(dkv_stage[at_k + (j0 + 2u) * DQ + c], b0, b1, b2, b3);
          s3 += dots4(dkv_stage[at_k + (j0 + 3u) * DQ + c], b0, b1, b2, b3);
          let w0 = dkv_stage[at_do + (lx + 0u * WX) * DQ + c];
          let w1 = dkv_stage[at_do + (lx + 1u * WX) * DQ + c];
          let w2 = dkv_stage[at_do + (lx + 2u * WX) * DQ + c];
          let w3 = dkv_stage[at_do + (lx + 3u * WX) * DQ + c];
          e0 += dots4(dkv_stage[at_v + (j0 + 0u) * DQ + c], w0, w1, w2, w3);
          e1 += dots4(dkv_stage[at_v + (j0 + 1u) * DQ + c], w0, w1, w2, w3);
          e2 += dots4(dkv_stage[at_v + (j0 + 2u) * DQ + c], w0, w1, w2, w3);
          e3 += dots4(dkv_stage[at_v + (j0 + 3u) * DQ + c], w0, w1, w2, w3);
        }
      }

      let r0 = trow[lx];
      let r1 = trow[lx + WX];
      let r2 = trow[lx + 2u * WX];
      let r3 = trow[lx + 3u * WX];
      let lse4 = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
      let delta4 = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
      let x0 = pds_row(s0, e0, lse4, delta4, q0, lx, k0 + j0, j0);
      let x1 = pds_row(s1, e1, lse4, delta4, q0, lx, k0 + j0 + 1u, j0 + 1u);
      let x2 = pds_row(s2, e2, lse4, delta4, q0, lx, k0 + j0 + 2u, j0 + 2u);
      let x3 = pds_row(s3, e3, lse4, delta4, q0, lx, k0 + j0 + 3u, j0 + 3u);
      fpt[(lx + 0u * WX) * PK + lid.y] = vec4<f32>(x0.p.x, x1.p.x, x2.p.x, x3.p.x);
      fpt[(lx + 1u * WX) * PK + lid.y] = vec4<f32>(x0.p.y, x1.p.y, x2.p.y, x3.p.y);
      fpt[(lx + 2u * WX) * PK + lid.y] = vec4<f32>(x0.p.z, x1.p.z, x2.p.z, x3.p.z);
      fpt[(lx + 3u * WX) * PK + lid.y] = vec4<f32>(x0.p.w, x1.p.w, x2.p.w, x3.p.w);
      fdst[(lx + 0u * WX) * PK + lid.y] = vec4<f32>(x0.ds.x, x1.ds.x, x2.ds.x, x3.ds.x);
      fdst[(lx + 1u * WX) * PK + lid.y] = vec4<f32>(x0.ds.y, x1.ds.y, x2.ds.y, x3.ds.y);
      fdst[(lx + 2u * WX) * PK + lid.y] = vec4<f32>(x0.ds.z, x1.ds.z, x2.ds.z, x3.ds.z);
      fdst[(lx + 3u * WX) * PK + lid.y] = vec4<f32>(x0.ds.w, x1.ds.w, x2.ds.w, x3.ds.w);

      // dv += Pᵀ·dO, dk += dSᵀ·Q with dO and Q rows staged KC queries at a time.
      for (var kc0 = 0u; kc0 < BLOCK_Q; kc0 += KC) {
        workgroupBarrier();
        for (var idx = tid; idx < KC * R; idx += threads) {
          let i = idx / R;
          let c = idx % R;
          var x = vec4<f32>(0.0);
          var y = vec4<f32>(0.0);
          if (q0 + kc0 + i < seq) {
            let at = q_index(row_base + q0 + kc0 + i, h) + c;
            x = dout[at];
            y = q[at];
          }
          dkv_stage[at_do2 + idx] = x;
          dkv_stage[at_q2 + idx] = y;
        }
        workgroupBarrier();
        for (var i = 0u; i < KC; i++) {
          let pv = fpt[(kc0 + i) * PK + lid.y];
          let dv4 = fdst[(kc0 + i) * PK + lid.y];
          for (var c = 0u; c < RB_MAXC; c++) {
            if (c >= ncol) { break; }
            let dov = dkv_stage[at_do2 + i * R + lx + c * WX];
            let qv = dkv_stage[at_q2 + i * R + lx + c * WX];
            av0[c] = fma(vec4<f32>(pv.x), dov, av0[c]);
            av1[c] = fma(vec4<f32>(pv.y), dov, av1[c]);
            av2[c] = fma(vec4<f32>(pv.z), dov, av2[c]);
            av3[c] = fma(vec4<f32>(pv.w), dov, av3[c]);
            ak0[c] = fma(vec4<f32>(dv4.x), qv, ak0[c]);
            ak1[c] = fma(vec4<f32>(dv4.y), qv, ak1[c]);
            ak2[c] = fma(vec4<f32>(dv4.z), qv, ak2[c]);
            ak3[c] = fma(vec4<f32>(dv4.w), qv, ak3[c]);
          }
        }
      }
    }
  }

  let t0 = row_base + k0 + j0;
  for (var c = 0u; c < RB_MAXC; c++) {
    if (c >= ncol) { break; }
    let col = lx + c * WX;
    if (k0 + j0 < seq) { dk[kv_index(t0, hk) + col] = ak0[c] * params.scale; dv[kv_index(t0, hk) + col] = av0[c]; }
    if (k0 + j0 + 1u < seq) { dk[kv_index(t0 + 1u, hk) + col] = ak1[c] * params.scale; dv[kv_index(t0 + 1u, hk) + col] = av1[c]; }
    if (k0 + j0 + 2u < seq) { dk[kv_index(t0 + 2u, hk) + col] = ak2[c] * params.scale; dv[kv_index(t0 + 2u, hk) + col] = av2[c]; }
    if (k0 + j0 + 3u < seq) { dk[kv_index(t0 + 3u, hk) + col] = ak3[c] * params.scale; dv[kv_index(t0 + 3u, hk) + col] = av3[c]; }
  }
}

// ---- decode ------------------------------------------------------------------------------------------
//
// n_new query tokens (q [n_new, n_q_heads, HEAD_DIM]) against a cache whose first kv_len rows are valid (the
// new tokens' keys already written at kv_len - n_new ...). Query t sees keys 0 .. kv_len - n_new + t.
// Split-K: workgroup (split, h, t) reduces one contiguous slice of those keys to a partial result
// part[(t, h, split)] = (Σ_j e^{s_j - m} v_j as HEAD_DIM/4 vec4, then vec4(m, l, 0, 0)); the combine pass
// merges the partials of the splits that hold keys. kv_len and n_new are uniforms: a new token rewrites
// them, nothing else.

// Keys per split for a query that sees n_keys keys (the partial and combine passes agree on it).
fn decode_chunk(n_keys: u32) -> u32 {
  return max(DECODE_MIN_CHUNK, (n_keys + params.n_split - 1u) / params.n_split);
}

var<workgroup> dec_q: array<vec4<f32>, HEAD_DIM / 4u>;
var<workgroup> dec_s: array<f32, DECODE_THREADS>;
var<workgroup> dec_p: array<f32, DECODE_THREADS>;
var<workgroup> dec_red: array<vec4<f32>, DECODE_THREADS>;

@compute @workgroup_size(DECODE_THREADS)
fn attention_decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let R = row4();
  let split = wg.x;
  let h = wg.y;
  let t = wg.z;
  if (t >= params.n_new) { return; }
  let hk = h / group_size();
  let n_keys = params.kv_len - params.n_new + t + 1u;
  let chunk = decode_chunk(n_keys);
  let j_begin = split * chunk;
  if (j_begin >= n_keys) { return; }
  let j_end = min(j_begin + chunk, n_keys);
  for (var c = tid; c < R; c += DECODE_THREADS) { dec_q[c] = q[q_index(t, h) + c]; }
  let c4 = tid % R;
  let slice = tid / R;
  let slices = DECODE_THREADS / R;

  var m = NEG;
  var l = 0.0;
  var acc = vec4<f32>(0.0);
  for (var j0 = j_begin; j0 < j_end; j0 += DECODE_THREADS) {
    workgroupBarrier();
    let j = j0 + tid;
    var s = NEG;
    if (j < j_end) {
      let base = kv_index(j, hk);
      var d = vec4<f32>(0.0);
      for (var c = 0u; c < R; c++) { d = fma(dec_q[c], k[base + c], d); }
      s = (d.x + d.y + d.z + d.w) * params.scale;
    }
    dec_s[tid] = s;
    workgroupBarrier();
    var m_new = m;
    for (var x = 0u; x < DECODE_THREADS; x++) { m_new = max(m_new, dec_s[x]); }
    dec_p[tid] = select(0.0, exp(s - m_new), j < j_end);
    workgroupBarrier();
    let alpha = exp(m - m_new);
    l *= alpha;
    acc *= alpha;
    let n_here = min(DECODE_THREADS, j_end - j0);
    for (var x = 0u; x < n_here; x++) { l += dec_p[x]; }
    for (var x = slice; x < n_here; x += slices) { acc = fma(vec4<f32>(dec_p[x]), v[kv_index(j0 + x, hk) + c4], acc); }
    m = m_new;
  }

  workgroupBarrier();
  dec_red[tid] = acc;
  workgroupBarrier();
  let base = ((t * params.n_q_heads + h) * params.n_split + split) * (R + 1u);
  if (slice == 0u) {
    var sum = vec4<f32>(0.0);
    for (var x = 0u; x < slices; x++) { sum += dec_red[x * R + c4]; }
    part[base + c4] = sum;
  }
  if (tid == 0u) { part[base + R] = vec4<f32>(m, l, 0.0, 0.0); }
}

@compute @workgroup_size(64)
fn attention_decode_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let R = row4();
  let h = wg.x;
  let t = wg.y;
  if (t >= params.n_new) { return; }
  let base = (t * params.n_q_heads + h) * params.n_split * (R + 1u);
  let n_keys = params.kv_len - params.n_new + t + 1u;
  let chunk = decode_chunk(n_keys);
  let n_parts = (n_keys + chunk - 1u) / chunk;
  var mx = NEG;
  for (var s = 0u; s < n_parts; s++) { mx = max(mx, part[base + s * (R + 1u) + R].x); }
  var total = 0.0;
  for (var s = 0u; s < n_parts; s++) {
    let ml = part[base + s * (R + 1u) + R];
    total += ml.y * exp(ml.x - mx);
  }
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var c = tid; c < R; c += 64u) {
    var sum = vec4<f32>(0.0);
    for (var s = 0u; s < n_parts; s++) {
      let w = exp(part[base + s * (R + 1u) + R].x - mx);
      sum = fma(vec4<f32>(w), part[base + s * (R + 1u) + c], sum);
    }
    o[q_index(t, h) + c] = sum * inv;
  }
}
