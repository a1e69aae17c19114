// The decode head: last-position logits (an f32 GEMV over the lm_head) and token sampling on the GPU, so a
// generated token costs one command buffer and a 4-byte readback (the chosen id).
//
//   head_logits     logits[col0 + r] = x · w[r, :] for the rows r of one lm_head block. A workgroup owns
//                   HEAD_ROWS rows; LANES consecutive invocations share a row, each reading every LANES-th
//                   vec4 (coalesced), combined by a fixed tree in workgroup memory.
//   sample_chunks   one workgroup per CHUNK logits: applies the repetition penalty (HF: a seen id's logit
//                   is divided by the penalty if > 0, else multiplied) and the temperature (÷T; greedy: 1),
//                   writes the chunk's max and Σexp(l − max), and its k best (value desc, then id asc) as
//                   candidates, by k rounds of a workgroup argmax over the chunk kept in workgroup memory.
//   sample_select   one workgroup: merges the chunks' sorted candidate lists (k rounds of an argmax over
//                   the list heads) into the global top k, then thread 0 applies top-p (HF TopP: a token
//                   goes when the mass of the tokens ranked above it is >= top_p; the first always stays),
//                   draws u = hash(seed, step) in [0, 1) and picks the first kept token whose cumulative
//                   probability exceeds u · (kept mass). Greedy takes the first candidate. It writes the
//                   id, marks it seen (penalty of later steps) and advances the step counter.
//
// Probabilities: with top-k on, a softmax over the k kept tokens (HF masks the rest to −inf first);
// with top-k off (k = KMAX candidates), the softmax over the whole vocabulary (global max and sum from
// the chunk statistics), so top-p is exact as long as the nucleus fits in KMAX tokens.
// Every reduction has one fixed order: results are deterministic. No gradients here (inference only).

struct Params {
  vocab: u32,
  n_chunks: u32,
  k: u32,          // candidates per chunk and in the merged list (top_k, or KMAX when top-k is off)
  top_k_on: u32,   // 1: probabilities over the kept k only
  inv_temp: f32,   // 1/temperature (1 for greedy)
  top_p: f32,      // >= 1: off
  penalty: f32,    // 1: off
  seed: u32,
  greedy: u32,
  rows: u32,       // head_logits: rows of this lm_head block
  hidden4: u32,    // head_logits: hidden / 4
  col0: u32,       // head_logits: first logit column of this block
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
@group(0) @binding(9) var<storage, read_write> state: array<u32>;

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

// ---- sampling ------------------------------------------------------------------------------------------

var<workgroup> vals: array<f32, CHUNK>;
var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<i32, WG>;
var<workgroup> top_v: array<f32, KMAX>;
var<workgroup> top_i: array<i32, KMAX>;
var<workgroup> glob: vec2<f32>;

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
  for (var r = 0u; r < params.k; r++) {
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
      let at = c * params.k + r;
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

@compute @workgroup_size(WG)
fn sample_select(@builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) {
    var gm = NONE;
    for (var c = 0u; c < params.n_chunks; c++) { gm = max(gm, stats[c].x); }
    var z = 0.0;
    for (var c = 0u; c < params.n_chunks; c++) { z = z + stats[c].y * exp(stats[c].x - gm); }
    glob = vec2<f32>(gm, z);
  }
  var head = 0u;
  let k = params.k;
  for (var r = 0u; r < k; r++) {
    var v = NONE;
    var id = -1;
    if (lid < params.n_chunks && head < k) {
      v = cand_v[lid * k + head];
      id = cand_i[lid * k + head];
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
  if (lid != 0u) { return; }
  var chosen = top_i[0];
  if (params.greedy == 0u) {
    var n = 0u;
    while (n < k && top_i[n] >= 0) { n = n + 1u; }
    // Unnormalised probabilities relative to a reference logit, and their normaliser.
    var ref_l = glob.x;
    var total = glob.y;
    if (params.top_k_on != 0u) {
      ref_l = top_v[0];
      total = 0.0;
      for (var i = 0u; i < n; i++) { total = total + exp(top_v[i] - ref_l); }
    }
    var keep = n;
    if (params.top_p < 1.0) {
      var above = 0.0;
      for (var i = 0u; i < n; i++) {
        if (i > 0u && above / total >= params.top_p) {
          keep = i;
          break;
        }
        above = above + exp(top_v[i] - ref_l);
      }
    }
    var kept = 0.0;
    for (var i = 0u; i < keep; i++) { kept = kept + exp(top_v[i] - ref_l); }
    let goal = uniform01(params.seed, state[0]) * kept;
    var acc = 0.0;
    chosen = top_i[max(keep, 1u) - 1u];
    for (var i = 0u; i < keep; i++) {
      acc = acc + exp(top_v[i] - ref_l);
      if (acc > goal) {
        chosen = top_i[i];
        break;
      }
    }
  }
  out_id[0] = chosen;
  if (chosen >= 0) { seen[u32(chosen)] = 1u; }
  state[0] = state[0] + 1u;
}
