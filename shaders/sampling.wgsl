// The decode head: last-position logits (an f32 GEMV over the lm_head) and token sampling on the GPU, so a
// generated token costs one command buffer and a 4-byte readback (the chosen id).
//
// Semantics (Hugging Face transformers' sampling, with one fixed order for ties):
//   adjusted logit  a_i = l_i' / T, l_i' = the repetition penalty applied to a seen id (divided by the
//                   penalty if > 0, else multiplied: RepetitionPenaltyLogitsProcessor); greedy: T = 1.
//   rank order      value descending, then id ascending. Greedy takes the first (torch.argmax's lowest id).
//   top-k           TopKLogitsWarper: keeps every token whose value is >= the k-th largest value (ties at
//                   the k-th value all stay, so more than k may stay). k = 0 or k >= vocab: off.
//   top-p           TopPLogitsWarper over the softmax of the kept tokens: walking in rank order, a token goes
//                   once the mass ranked above it is >= top_p; the first always stays. (HF sorts ascending and
//                   drops cumsum <= 1 - top_p: the same set; inside a tie group straddling the boundary the
//                   lower ids stay.)
//   draw            u = hash(seed, step) in [0, 1); the first kept token in rank order whose cumulative
//                   probability exceeds u · (kept mass).
//
// Entry points:
//   head_logits     logits[col0 + r] = x · w[r, :] for the rows r of one lm_head block. A workgroup owns
//                   HEAD_ROWS rows; LANES consecutive invocations share a row, each reading every LANES-th
//                   vec4 (coalesced), combined by a fixed tree in workgroup memory.
//   sample_chunks   one workgroup per CHUNK logits: the chunk's max and sum of exp(a - max), and its `rounds`
//                   best tokens in rank order as candidates (rounds rounds of a workgroup argmax).
//   sample_select   one workgroup: merges the chunks' candidate lists into the global rank-order prefix of
//                   `merge` tokens. The fast path: when that prefix decides the result exactly — greedy; top-k
//                   with k < KMAX whose boundary tie group is complete (each chunk lists k + 1 candidates, so
//                   a chunk's first unmerged candidate shows whether a token equal to the k-th value was left
//                   out); top-k off with a top-p nucleus that ends inside the prefix — it applies top-p,
//                   draws, writes the id, marks it seen and advances the step. Otherwise it sets state[1]
//                   and leaves the token to sample_general.
//   sample_general  one workgroup, a no-op unless state[1] is set: exact thresholds over the whole vocabulary
//                   by radix descents on the order-preserving u32 key of each adjusted logit (4 bits a pass,
//                   8 passes): the k-th largest value by counts (any k), the top-p cut and then the draw by
//                   masses, and the j-th id of the final tie group by a block scan.
// Every reduction has one fixed order (counts are exact integer atomics): results are deterministic.
// No gradients here (inference only).

struct Params {
  vocab: u32,
  n_chunks: u32,
  rounds: u32,     // candidates per chunk (0: none, the general path decides)
  merge: u32,      // length of the merged rank-order prefix
  inv_temp: f32,   // 1/temperature (1 for greedy)
  top_p: f32,      // >= 1: off
  penalty: f32,    // 1: off
  seed: u32,
  greedy: u32,
  rows: u32,       // head_logits: rows of this lm_head block
  hidden4: u32,    // head_logits: hidden / 4
  col0: u32,       // head_logits: first logit column of this block
  top_k: u32,      // 0: off; else 1 <= top_k < vocab
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;
@group(0) @binding(4) var<storage, read_write> seen: array<u32>;
@group(0) @binding(5) var<storage, read_write> cand_v: array<f32>;
@group(0) @binding(6) var<storage, read_write> cand_i: array<i32>;
@group(0) @binding(7) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read_write> out_id: array<i32>;
@group(0) @binding(9) var<storage, read_write> state: array<u32>;   // [0] step, [1] 1: general path pending, [2] general-path tokens

override LANES: u32 = 32u;
override HEAD_ROWS: u32 = 8u;
override WG: u32 = 256u;
override CHUNK: u32 = 2048u;
override KMAX: u32 = 256u;

// Below every real logit: empty slots and candidates already taken.
const NONE: f32 = -3.0e38;

// ---- head_logits ---------------------------------------------------------------------------------------

var<workgroup> head_red: array<f32, 256>;

@compute @workgroup_size(LANES * HEAD_ROWS)
fn head_logits(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let lane = lid % LANES;
  let rl = lid / LANES;
  let row = (wid.y * nwg.x + wid.x) * HEAD_ROWS + rl;
  var acc = 0.0;
  if (row < params.rows) {
    let base = row * params.hidden4;
    for (var j = lane; j < params.hidden4; j += LANES) {
      acc = acc + dot(x[j], w[base + j]);
    }
  }
  head_red[lid] = acc;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s = s / 2u) {
    if (lane < s) { head_red[lid] = head_red[lid] + head_red[lid + s]; }
    workgroupBarrier();
  }
  if (lane == 0u && row < params.rows) {
    logits[params.col0 + row] = head_red[lid];
  }
}

// ---- sampling: shared pieces ----------------------------------------------------------------------------

var<workgroup> vals: array<f32, CHUNK>;
var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<i32, WG>;
var<workgroup> top_v: array<f32, KMAX>;
var<workgroup> top_i: array<i32, KMAX>;
var<workgroup> glob: vec2<f32>;
var<workgroup> tie_left_out: atomic<u32>;

// (va, ia) ranks before (vb, ib): larger value, then smaller id (negative ids are empty and rank last).
fn before(va: f32, ia: i32, vb: f32, ib: i32) -> bool {
  if (ib < 0) { return ia >= 0; }
  if (ia < 0) { return false; }
  return va > vb || (va == vb && ia < ib);
}

// Tree argmax over red_v/red_i; the winner ends in slot 0. Called in uniform control flow.
fn reduce_best(lid: u32) {
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s && before(red_v[lid + s], red_i[lid + s], red_v[lid], red_i[lid])) {
      red_v[lid] = red_v[lid + s];
      red_i[lid] = red_i[lid + s];
    }
    workgroupBarrier();
  }
}

fn adjusted(i: u32) -> f32 {
  var l = logits[i];
  if (seen[i] != 0u) {
    l = select(l * params.penalty, l / params.penalty, l > 0.0);
  }
  return l * params.inv_temp;
}

// lowbias32 (Chris Wellons): a counter-based hash; u = top 24 bits / 2^24, mirrored in sampling.ts.
fn hash32(x0: u32) -> u32 {
  var h = x0;
  h = h ^ (h >> 16u);
  h = h * 0x7feb352du;
  h = h ^ (h >> 15u);
  h = h * 0x846ca68bu;
  h = h ^ (h >> 16u);
  return h;
}

fn uniform01(seed: u32, step: u32) -> f32 {
  let h = hash32(seed ^ hash32(step + 0x9e3779b9u));
  return f32(h >> 8u) / 16777216.0;
}

// Global max and normaliser of exp(a - max) from the chunk statistics (fixed order). Thread 0 only.
fn global_stats() -> vec2<f32> {
  var gm = NONE;
  for (var c = 0u; c < params.n_chunks; c++) { gm = max(gm, stats[c].x); }
  var z = 0.0;
  for (var c = 0u; c < params.n_chunks; c++) { z = z + stats[c].y * exp(stats[c].x - gm); }
  return vec2<f32>(gm, z);
}

fn finish(chosen: i32) {
  out_id[0] = chosen;
  if (chosen >= 0) { seen[u32(chosen)] = 1u; }
  state[0] = state[0] + 1u;
  state[1] = 0u;
}

// ---- sample_chunks -------------------------------------------------------------------------------------

@compute @workgroup_size(WG)
fn sample_chunks(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = wid.x;
  let start = c * CHUNK;
  var m = NONE;
  for (var j = lid; j < CHUNK; j += WG) {
    let i = start + j;
    var v = NONE;
    if (i < params.vocab) { v = adjusted(i); }
    vals[j] = v;
    m = max(m, v);
  }
  red_v[lid] = m;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { red_v[lid] = max(red_v[lid], red_v[lid + s]); }
    workgroupBarrier();
  }
  let cmax = red_v[0];
  workgroupBarrier();
  var sum = 0.0;
  for (var j = lid; j < CHUNK; j += WG) {
    if (start + j < params.vocab) { sum = sum + exp(vals[j] - cmax); }
  }
  red_v[lid] = sum;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { red_v[lid] = red_v[lid] + red_v[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { stats[c] = vec2<f32>(cmax, red_v[0]); }
  workgroupBarrier();
  for (var r = 0u; r < params.rounds; r++) {
    var bv = NONE;
    var bi = -1;
    for (var j = lid; j < CHUNK; j += WG) {
      let v = vals[j];
      if (start + j < params.vocab && v > NONE && (bi < 0 || v > bv)) {
        bv = v;
        bi = i32(j);
      }
    }
    red_v[lid] = bv;
    red_i[lid] = bi;
    workgroupBarrier();
    reduce_best(lid);
    if (lid == 0u) {
      let j = red_i[0];
      let at = c * params.rounds + r;
      if (j >= 0) {
        cand_v[at] = red_v[0];
        cand_i[at] = i32(start) + j;
        vals[u32(j)] = NONE;
      } else {
        cand_v[at] = NONE;
        cand_i[at] = -1;
      }
    }
    workgroupBarrier();
  }
}

// ---- sample_select (the fast path) ---------------------------------------------------------------------

@compute @workgroup_size(WG)
fn sample_select(@builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) {
    glob = global_stats();
    atomicStore(&tie_left_out, 0u);
  }
  var head = 0u;
  let rounds = params.rounds;
  let merge = min(params.merge, KMAX);
  for (var r = 0u; r < merge; r++) {
    var v = NONE;
    var id = -1;
    if (lid < params.n_chunks && head < rounds) {
      v = cand_v[lid * rounds + head];
      id = cand_i[lid * rounds + head];
    }
    red_v[lid] = v;
    red_i[lid] = id;
    workgroupBarrier();
    reduce_best(lid);
    let wv = red_v[0];
    let wi = red_i[0];
    if (wi >= 0 && wi == id) { head = head + 1u; }
    if (lid == 0u) {
      top_v[r] = wv;
      top_i[r] = wi;
    }
    workgroupBarrier();
  }
  // Top-k: is a token equal to the k-th value left out of the merged list? Each chunk listed k + 1
  // candidates and gave at most k to the merge, so its first unmerged candidate answers for it.
  if (params.top_k > 0u && rounds > 0u && lid < params.n_chunks && head < rounds) {
    let id = cand_i[lid * rounds + head];
    if (id >= 0 && cand_v[lid * rounds + head] == top_v[params.top_k - 1u]) { atomicStore(&tie_left_out, 1u); }
  }
  workgroupBarrier();
  if (lid != 0u) { return; }
  if (params.greedy != 0u) {
    finish(top_i[0]);
    return;
  }
  var n = 0u;
  while (n < merge && top_i[n] >= 0) { n = n + 1u; }
  // The merged list is the whole vocabulary's rank-order prefix of n tokens.
  let whole = n >= params.vocab;
  var general = rounds == 0u || atomicLoad(&tie_left_out) != 0u;
  // Unnormalised probabilities relative to a reference logit, and their normaliser.
  var ref_l = glob.x;
  var total = glob.y;
  if (params.top_k > 0u) {
    n = min(n, params.top_k);
    ref_l = top_v[0];
    total = 0.0;
    for (var i = 0u; i < n; i++) { total = total + exp(top_v[i] - ref_l); }
  }
  var keep = n;
  if (params.top_p < 1.0) {
    var above = 0.0;
    var cut = false;
    for (var i = 0u; i < n; i++) {
      if (i > 0u && above / total >= params.top_p) {
        keep = i;
        cut = true;
        break;
      }
      above = above + exp(top_v[i] - ref_l);
    }
    // Top-k off and the nucleus runs past the list: only the whole vocabulary decides.
    if (!cut && params.top_k == 0u && !whole) { general = true; }
  } else if (params.top_k == 0u && !whole) {
    general = true;
  }
  if (general) {
    state[1] = 1u;
    return;
  }
  var kept = 0.0;
  for (var i = 0u; i < keep; i++) { kept = kept + exp(top_v[i] - ref_l); }
  let goal = uniform01(params.seed, state[0]) * kept;
  var acc = 0.0;
  var chosen = top_i[max(keep, 1u) - 1u];
  for (var i = 0u; i < keep; i++) {
    acc = acc + exp(top_v[i] - ref_l);
    if (acc > goal) {
      chosen = top_i[i];
      break;
    }
  }
  finish(chosen);
}

// ---- sample_general (any top-k, any nucleus, ties) -----------------------------------------------------

const DIGITS: u32 = 16u;

var<workgroup> part_m: array<f32, 2048>;        // 8 digits × WG partial masses (two halves per pass)
var<workgroup> bin_c: array<atomic<u32>, 16>;
var<workgroup> bin_m: array<f32, 16>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> g_pending: u32;
var<workgroup> g_key: u32;       // the chosen digits so far / the found key
var<workgroup> g_above: f32;     // mass (or count, as f32 bits) ranked above the current prefix
var<workgroup> g_found: i32;

// Order-preserving key: a < b (as floats) <=> key(a) < key(b) (as u32).
fn order_key(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn key_value(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// One radix pass over the tokens with key >= lo whose key shares the top (32 - shift - 4) bits with
// prefix: the count (bin_c) and the mass exp(a - gm) (bin_m) of each next 4-bit digit. Uniform control flow.
fn radix_pass(lid: u32, lo: u32, prefix: u32, shift: u32, gm: f32) {
  var cnt: array<u32, 16>;
  var mass: array<f32, 16>;
  let hi_mask = select(~((1u << (shift + 4u)) - 1u), 0u, shift >= 28u);
  for (var i = lid; i < params.vocab; i += WG) {
    let a = adjusted(i);
    let k = order_key(a);
    if (k >= lo && (k & hi_mask) == (prefix & hi_mask)) {
      let d = (k >> shift) & 15u;
      cnt[d] = cnt[d] + 1u;
      mass[d] = mass[d] + exp(a - gm);
    }
  }
  if (lid < DIGITS) { atomicStore(&bin_c[lid], 0u); }
  workgroupBarrier();
  for (var d = 0u; d < DIGITS; d++) {
    if (cnt[d] != 0u) { atomicAdd(&bin_c[d], cnt[d]); }
  }
  for (var half = 0u; half < 2u; half++) {
    for (var d = 0u; d < 8u; d++) { part_m[d * WG + lid] = mass[half * 8u + d]; }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
      if (lid < s) {
        for (var d = 0u; d < 8u; d++) { part_m[d * WG + lid] = part_m[d * WG + lid] + part_m[d * WG + lid + s]; }
      }
      workgroupBarrier();
    }
    if (lid < 8u) { bin_m[half * 8u + lid] = part_m[lid * WG]; }
    workgroupBarrier();
  }
}

// The largest key K with count(key >= K) >= k (the k-th largest adjusted logit).
fn kth_key(lid: u32, k: u32, gm: f32) -> u32 {
  if (lid == 0u) {
    g_key = 0u;
    g_above = 0.0;
  }
  var above = 0u;   // tokens with a larger prefix (thread 0's copy)
  for (var level = 0u; level < 8u; level++) {
    let shift = 28u - 4u * level;
    let prefix = workgroupUniformLoad(&g_key);
    radix_pass(lid, 0u, prefix, shift, gm);
    if (lid == 0u) {
      var d = DIGITS;
      var pick = 0u;
      while (d > 0u) {
        d = d - 1u;
        let c = atomicLoad(&bin_c[d]);
        pick = d;
        if (above + c >= k) { break; }
        above = above + c;
      }
      g_key = prefix | (pick << shift);
    }
  }
  return workgroupUniformLoad(&g_key);
}

// The tie group (key) where the rank-order cumulative mass of tokens with key >= lo crosses tau, and the
// mass ranked above that group (g_above). strict: the group with above + its mass > tau (the draw);
// else >= tau (the top-p cut: the last group whose first token has above < tau). If the mass never
// crosses (rounding), the last group.
fn crossing_key(lid: u32, lo: u32, tau: f32, strict: bool, gm: f32) -> u32 {
  if (lid == 0u) {
    g_key = 0u;
    g_above = 0.0;
  }
  for (var level = 0u; level < 8u; level++) {
    let shift = 28u - 4u * level;
    let prefix = workgroupUniformLoad(&g_key);
    radix_pass(lid, lo, prefix, shift, gm);
    if (lid == 0u) {
      var above = g_above;
      var d = DIGITS;
      var pick = 16u;
      var pick_above = above;
      while (d > 0u) {
        d = d - 1u;
        if (atomicLoad(&bin_c[d]) == 0u) { continue; }
        pick = d;
        pick_above = above;
        let after = above + bin_m[d];
        if ((strict && after > tau) || (!strict && after >= tau)) { break; }
        above = after;
      }
      g_key = prefix | (select(pick, 0u, pick == 16u) << shift);
      g_above = pick_above;
    }
  }
  return workgroupUniformLoad(&g_key);
}

// The id of the j-th token (ids ascending) whose key is `key`; -1 if there are not that many.
fn jth_with_key(lid: u32, key: u32, j: u32) -> i32 {
  let per = (params.vocab + WG - 1u) / WG;
  let i0 = min(lid * per, params.vocab);
  let i1 = min(i0 + per, params.vocab);
  var n = 0u;
  for (var i = i0; i < i1; i++) { if (order_key(adjusted(i)) == key) { n = n + 1u; } }
  red_u[lid] = n;
  if (lid == 0u) { g_found = -1; }
  workgroupBarrier();
  if (lid == 0u) {
    var run = 0u;
    for (var t = 0u; t < WG; t++) {
      let c = red_u[t];
      red_u[t] = run;
      run = run + c;
    }
  }
  workgroupBarrier();
  let first = red_u[lid];
  if (j >= first && j < first + n) {
    var seen_here = first;
    for (var i = i0; i < i1; i++) {
      if (order_key(adjusted(i)) == key) {
        if (seen_here == j) { g_found = i32(i); }
        seen_here = seen_here + 1u;
      }
    }
  }
  return workgroupUniformLoad(&g_found);
}

// The mass exp(a - gm) of the tokens with key >= lo (fixed tree order).
fn mass_from(lid: u32, lo: u32, gm: f32) -> f32 {
  var m = 0.0;
  for (var i = lid; i < params.vocab; i += WG) {
    let a = adjusted(i);
    if (order_key(a) >= lo) { m = m + exp(a - gm); }
  }
  part_m[lid] = m;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { part_m[lid] = part_m[lid] + part_m[lid + s]; }
    workgroupBarrier();
  }
  let r = part_m[0];
  workgroupBarrier();
  return r;
}

// Tokens with `key`: how many there are.
fn count_key(lid: u32, key: u32) -> u32 {
  var n = 0u;
  for (var i = lid; i < params.vocab; i += WG) { if (order_key(adjusted(i)) == key) { n = n + 1u; } }
  red_u[lid] = n;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { red_u[lid] = red_u[lid] + red_u[lid + s]; }
    workgroupBarrier();
  }
  let r = red_u[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn sample_general(@builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { g_pending = state[1]; }
  if (workgroupUniformLoad(&g_pending) == 0u) { return; } // the fast path chose: one cheap dispatch
  if (lid == 0u) { glob = global_stats(); }
  workgroupBarrier();
  let gm = glob.x;
  // The kept set S = {key >= lo}: the top-k threshold, or everything.
  var lo = 0u;
  var total = glob.y;
  if (params.top_k > 0u) {
    lo = kth_key(lid, params.top_k, gm);
    total = mass_from(lid, lo, gm);
  }
  // Top-p: the cut's tie group (key kp, mass above it) and how many of its tokens (ids ascending) stay.
  var kp = lo;
  var tie_keep = 0xffffffffu;
  var kept = total;
  if (params.top_p < 1.0) {
    kp = crossing_key(lid, lo, params.top_p * total, false, gm);
    let above = workgroupUniformLoad(&g_above);
    let c = count_key(lid, kp);
    let p = exp(key_value(kp) - gm);
    var acc = above;
    var n = 0u;
    while (n < c && (n == 0u || acc < params.top_p * total)) {
      acc = acc + p;
      n = n + 1u;
    }
    tie_keep = n;
    kept = acc;
  }
  // The draw: the tie group where the cumulative mass of the kept tokens passes u · kept, then the id.
  let goal = uniform01(params.seed, state[0]) * kept;
  let kd = crossing_key(lid, kp, goal, true, gm);
  let above_d = workgroupUniformLoad(&g_above);
  var limit = count_key(lid, kd);
  if (kd == kp) { limit = min(limit, tie_keep); }
  let p = exp(key_value(kd) - gm);
  var j = 0u;
  var acc = above_d + p;
  while (j + 1u < limit && !(acc > goal)) {
    j = j + 1u;
    acc = acc + p;
  }
  let chosen = jth_with_key(lid, kd, j);
  if (lid == 0u) {
    state[2] = state[2] + 1u;
    finish(chosen);
  }
}
