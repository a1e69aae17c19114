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
// attention_backward_dq loops over key blocks for one query block; attention_backward_dkv loops, for one
// key block, over the query heads of its group and the query blocks at or after it.
//
// Work split: a workgroup owns a block of rows (BLOCK_Q query rows, or BLOCK_K key rows in dkv); each row
// has a team of LANES consecutive invocations. For scores a lane takes every LANES-th key (query) of the
// tile and computes full dot products from workgroup memory; for the output a lane owns the vec4 columns
// lane, lane + LANES, ... (HEAD_DIM / 4 / LANES of them, at most MAX_V4 = 8). Scores of one tile are exchanged
// through workgroup memory; the seq×seq matrix never exists. Extra memory is lse and delta: linear in seq.
// Rows whose tiles read across the key dimension (k in forward/dq, q/dout in dkv) are padded by one vec4
// to avoid bank conflicts.
//
// SUBGROUPS && SG_TEAM: the forward takes the row max over a team with subgroupShuffleXor (one barrier less
// per key tile). Needs LANES <= the subgroup size and subgroups made of consecutive invocation indices,
// which the TS module checks/assumes (true for the Vulkan, D3D12 and Metal backends of Dawn).

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
override BLOCK_Q: u32 = 16u;
override BLOCK_K: u32 = 16u;
override LANES: u32 = 16u;
// Decode: invocations per workgroup (a multiple of HEAD_DIM / 4).
override DECODE_THREADS: u32 = 64u;

const MAX_V4: u32 = 8u;
const NEG: f32 = -1.0e30;
const LSE_MASKED: f32 = 1.0e30;

// Workgroup tiles. Strides: ROW = HEAD_DIM/4 vec4 (broadcast reads), PROW = ROW + 1 (padded).
var<workgroup> tq: array<vec4<f32>, BLOCK_Q * (HEAD_DIM / 4u + 1u)>;
var<workgroup> tdo: array<vec4<f32>, BLOCK_Q * (HEAD_DIM / 4u + 1u)>;
var<workgroup> tk: array<vec4<f32>, BLOCK_K * (HEAD_DIM / 4u + 1u)>;
var<workgroup> tv: array<vec4<f32>, BLOCK_K * (HEAD_DIM / 4u + 1u)>;
var<workgroup> sa: array<f32, (BLOCK_Q + 1u) * (BLOCK_K + 1u)>;
var<workgroup> sb: array<f32, (BLOCK_Q + 1u) * (BLOCK_K + 1u)>;
var<workgroup> trow: array<vec2<f32>, BLOCK_Q>; // dkv: (lse, delta) of the query tile
#if DOCS
var<workgroup> qdoc: array<i32, BLOCK_Q>;
var<workgroup> kdoc: array<i32, BLOCK_K>;
#endif

fn row4() -> u32 { return HEAD_DIM / 4u; }
fn prow4() -> u32 { return HEAD_DIM / 4u + 1u; }
fn per_lane() -> u32 { return HEAD_DIM / 4u / LANES; }
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

// ---- forward -----------------------------------------------------------------------------------------

@compute @workgroup_size(BLOCK_Q * LANES)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let threads = BLOCK_Q * LANES;
  let R = row4();
  let P = prow4();
  let seq = params.seq;
  let q0 = wg.x * BLOCK_Q;
  let h = wg.y;
  let hk = h / group_size();
  let row_base = wg.z * seq;
  let r = tid / LANES;
  let lane = tid % LANES;

  for (var idx = tid; idx < BLOCK_Q * R; idx += threads) {
    let i = idx / R;
    var x = vec4<f32>(0.0);
    if (q0 + i < seq) { x = q[q_index(row_base + q0 + i, h) + idx % R]; }
    tq[i * R + idx % R] = x;
  }
#if DOCS
  for (var i = tid; i < BLOCK_Q; i += threads) { qdoc[i] = query_doc(load_doc(row_base, q0 + i)); }
#endif

  var m = NEG;
  var l = 0.0;
  var acc: array<vec4<f32>, MAX_V4>; // zero-initialised
  let k_end = min(q0 + BLOCK_Q, seq);
  let SS = BLOCK_K + 1u;

  for (var k0 = 0u; k0 < k_end; k0 += BLOCK_K) {
    workgroupBarrier();
    for (var idx = tid; idx < BLOCK_K * R; idx += threads) {
      let j = idx / R;
      let c = idx % R;
      var xk = vec4<f32>(0.0);
      var xv = vec4<f32>(0.0);
      if (k0 + j < seq) {
        let at = kv_index(row_base + k0 + j, hk) + c;
        xk = k[at];
        xv = v[at];
      }
      tk[j * P + c] = xk;
      tv[j * R + c] = xv;
    }
#if DOCS
    for (var j = tid; j < BLOCK_K; j += threads) { kdoc[j] = load_doc(row_base, k0 + j); }
#endif
    workgroupBarrier();

    // Scores of my row for keys lane, lane + LANES, ...; my part of the row max.
    var mloc = NEG;
    for (var j = lane; j < BLOCK_K; j += LANES) {
      var s = NEG;
      if (allowed(q0 + r, k0 + j, r, j)) {
        var d = 0.0;
        for (var c = 0u; c < R; c++) { d += dot(tq[r * R + c], tk[j * P + c]); }
        s = d * params.scale;
      }
      sa[r * SS + j] = s;
      mloc = max(mloc, s);
    }
#if SUBGROUPS && SG_TEAM
    for (var off = 1u; off < LANES; off <<= 1u) { mloc = max(mloc, subgroupShuffleXor(mloc, off)); }
    let m_new = max(m, mloc);
#else
    workgroupBarrier();
    var m_new = m;
    for (var j = 0u; j < BLOCK_K; j++) { m_new = max(m_new, sa[r * SS + j]); }
#endif
    for (var j = lane; j < BLOCK_K; j += LANES) {
      let s = sa[r * SS + j];
      sb[r * SS + j] = select(0.0, exp(s - m_new), s > 0.5 * NEG);
    }
    workgroupBarrier();

    let alpha = exp(m - m_new);
    l *= alpha;
    for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; } acc[c] *= alpha; }
    for (var j = 0u; j < BLOCK_K; j++) {
      let p = sb[r * SS + j];
      l += p;
      for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; } acc[c] = fma(vec4<f32>(p), tv[j * R + lane + c * LANES], acc[c]); }
    }
    m = m_new;
  }

  if (q0 + r < seq) {
    let t = row_base + q0 + r;
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let base = q_index(t, h);
    for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; } o[base + lane + c * LANES] = acc[c] * inv; }
    if (lane == 0u) { lse[h * params.tokens + t] = select(LSE_MASKED, m + log(l), l > 0.0); }
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
@compute @workgroup_size(BLOCK_Q * LANES)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let threads = BLOCK_Q * LANES;
  let R = row4();
  let P = prow4();
  let seq = params.seq;
  let q0 = wg.x * BLOCK_Q;
  let h = wg.y;
  let hk = h / group_size();
  let row_base = wg.z * seq;
  let r = tid / LANES;
  let lane = tid % LANES;

  for (var idx = tid; idx < BLOCK_Q * R; idx += threads) {
    let i = idx / R;
    var xq = vec4<f32>(0.0);
    var xd = vec4<f32>(0.0);
    if (q0 + i < seq) {
      let at = q_index(row_base + q0 + i, h) + idx % R;
      xq = q[at];
      xd = dout[at];
    }
    tq[idx] = xq;
    tdo[idx] = xd;
  }
#if DOCS
  for (var i = tid; i < BLOCK_Q; i += threads) { qdoc[i] = query_doc(load_doc(row_base, q0 + i)); }
#endif
  var my_lse = 0.0;
  var my_delta = 0.0;
  if (q0 + r < seq) {
    my_lse = lse[h * params.tokens + row_base + q0 + r];
    my_delta = delta[h * params.tokens + row_base + q0 + r];
  }

  var acc: array<vec4<f32>, MAX_V4>; // zero-initialised
  let k_end = min(q0 + BLOCK_Q, seq);
  let SS = BLOCK_K + 1u;

  for (var k0 = 0u; k0 < k_end; k0 += BLOCK_K) {
    workgroupBarrier();
    for (var idx = tid; idx < BLOCK_K * R; idx += threads) {
      let j = idx / R;
      let c = idx % R;
      var xk = vec4<f32>(0.0);
      var xv = vec4<f32>(0.0);
      if (k0 + j < seq) {
        let at = kv_index(row_base + k0 + j, hk) + c;
        xk = k[at];
        xv = v[at];
      }
      tk[j * P + c] = xk;
      tv[j * P + c] = xv;
    }
#if DOCS
    for (var j = tid; j < BLOCK_K; j += threads) { kdoc[j] = load_doc(row_base, k0 + j); }
#endif
    workgroupBarrier();

    for (var j = lane; j < BLOCK_K; j += LANES) {
      var ds = 0.0;
      if (allowed(q0 + r, k0 + j, r, j)) {
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < R; c++) {
          s += dot(tq[r * R + c], tk[j * P + c]);
          dp += dot(tdo[r * R + c], tv[j * P + c]);
        }
        let p = exp(s * params.scale - my_lse);
        ds = p * (dp - my_delta);
      }
      sa[r * SS + j] = ds;
    }
    workgroupBarrier();

    for (var j = 0u; j < BLOCK_K; j++) {
      let ds = vec4<f32>(sa[r * SS + j]);
      for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; } acc[c] = fma(ds, tk[j * P + lane + c * LANES], acc[c]); }
    }
  }

  if (q0 + r < seq) {
    let base = q_index(row_base + q0 + r, h);
    for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; } dq[base + lane + c * LANES] = acc[c] * params.scale; }
  }
}

// For one key block of one kv head: dv_j = Σ_{h in group} Σ_i P_ij dout_i,  dk_j = scale · Σ Σ dS_ij q_i.
@compute @workgroup_size(BLOCK_K * LANES)
fn attention_backward_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let threads = BLOCK_K * LANES;
  let R = row4();
  let P = prow4();
  let seq = params.seq;
  let k0 = wg.x * BLOCK_K;
  let hk = wg.y;
  let row_base = wg.z * seq;
  let r = tid / LANES; // my key row in the tile
  let lane = tid % LANES;
  let G = group_size();

  for (var idx = tid; idx < BLOCK_K * R; idx += threads) {
    let j = idx / R;
    var xk = vec4<f32>(0.0);
    var xv = vec4<f32>(0.0);
    if (k0 + j < seq) {
      let at = kv_index(row_base + k0 + j, hk) + idx % R;
      xk = k[at];
      xv = v[at];
    }
    tk[idx] = xk;
    tv[idx] = xv;
  }
#if DOCS
  for (var j = tid; j < BLOCK_K; j += threads) { kdoc[j] = load_doc(row_base, k0 + j); }
#endif

  var ak: array<vec4<f32>, MAX_V4>; // zero-initialised
  var av: array<vec4<f32>, MAX_V4>;
  let SS = BLOCK_Q + 1u;

  for (var g = 0u; g < G; g++) {
    let h = hk * G + g;
    for (var q0 = k0; q0 < seq; q0 += BLOCK_Q) {
      workgroupBarrier();
      for (var idx = tid; idx < BLOCK_Q * R; idx += threads) {
        let i = idx / R;
        let c = idx % R;
        var xq = vec4<f32>(0.0);
        var xd = vec4<f32>(0.0);
        if (q0 + i < seq) {
          let at = q_index(row_base + q0 + i, h) + c;
          xq = q[at];
          xd = dout[at];
        }
        tq[i * P + c] = xq;
        tdo[i * P + c] = xd;
      }
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
      workgroupBarrier();

      for (var i = lane; i < BLOCK_Q; i += LANES) {
        var p = 0.0;
        var ds = 0.0;
        if (allowed(q0 + i, k0 + r, i, r)) {
          var s = 0.0;
          var dp = 0.0;
          for (var c = 0u; c < R; c++) {
            s += dot(tq[i * P + c], tk[r * R + c]);
            dp += dot(tdo[i * P + c], tv[r * R + c]);
          }
          let rowv = trow[i];
          p = exp(s * params.scale - rowv.x);
          ds = p * (dp - rowv.y);
        }
        sa[r * SS + i] = p;
        sb[r * SS + i] = ds;
      }
      workgroupBarrier();

      for (var i = 0u; i < BLOCK_Q; i++) {
        let p = vec4<f32>(sa[r * SS + i]);
        let ds = vec4<f32>(sb[r * SS + i]);
        for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; }
          let col = i * P + lane + c * LANES;
          av[c] = fma(p, tdo[col], av[c]);
          ak[c] = fma(ds, tq[col], ak[c]);
        }
      }
    }
  }

  if (k0 + r < seq) {
    let base = kv_index(row_base + k0 + r, hk);
    for (var c = 0u; c < MAX_V4; c++) { if (c >= per_lane()) { break; }
      dk[base + lane + c * LANES] = ak[c] * params.scale;
      dv[base + lane + c * LANES] = av[c];
    }
  }
}

// ---- decode ------------------------------------------------------------------------------------------
//
// n_new query tokens (q [n_new, n_q_heads, HEAD_DIM]) against a cache whose first kv_len rows are valid (the
// new tokens' keys already written at kv_len - n_new ...). Query t sees keys 0 .. kv_len - n_new + t.
// Split-K: workgroup (split, h, t) reduces one contiguous slice of those keys to a partial result
// part[(t, h, split)] = (Σ_j e^{s_j - m} v_j as HEAD_DIM/4 vec4, then vec4(m, l, 0, 0)); the combine pass
// merges the n_split partials. kv_len and n_new are uniforms: a new token rewrites them, nothing else.

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
  let chunk = (n_keys + params.n_split - 1u) / params.n_split;
  let j_begin = min(split * chunk, n_keys);
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
  var mx = NEG;
  for (var s = 0u; s < params.n_split; s++) { mx = max(mx, part[base + s * (R + 1u) + R].x); }
  var total = 0.0;
  for (var s = 0u; s < params.n_split; s++) {
    let ml = part[base + s * (R + 1u) + R];
    total += ml.y * exp(ml.x - mx);
  }
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var c = tid; c < R; c += 64u) {
    var sum = vec4<f32>(0.0);
    for (var s = 0u; s < params.n_split; s++) {
      let w = exp(part[base + s * (R + 1u) + R].x - mx);
      sum = fma(vec4<f32>(w), part[base + s * (R + 1u) + c], sum);
    }
    o[q_index(t, h) + c] = sum * inv;
  }
}
