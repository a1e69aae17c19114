// Token embedding: gather rows of a [vocab, hidden] f32 table by i32 token id, and its backward.
//
//   forward:   out[t, :] = table[ids[t], :]
//   backward:  dtable[r, :] += Σ_{t : ids[t] = r} dout[t, :]   (parameter grad: ACCUMULATED, +=)
//
// Gradient rule (llm.c): parameter grads are accumulated (+=), activation grads are written (=).
//
// Split tables: the table may be spread over several buffers of consecutive rows (vocab 92544-151936 ×
// 2048 f32 is 0.76-1.24 GB, beyond one binding on many adapters). Each dispatch serves rows
// [row_offset, row_offset + row_count) held in its own buffer, whose row 0 is table row row_offset:
// the forward writes only the tokens whose ids fall in its range, the backward accumulates only those.
//
// Out-of-range ids (id < 0 or id ≥ vocab) are never clamped: the forward writes zeros for them in the
// dispatch that has zero_invalid set (the TS module sets it on the chunk with row_offset 0, so exactly one
// dispatch writes them), and the backward ignores them. Callers that want an error instead validate on
// the CPU (validateTokenIds in the TS module) before upload.
//
// Backward without float atomics and without sorting: workgroup g owns rows [g·R, (g+1)·R) of the chunk
// (R = rows_per_group) and scans the whole id list in chunks of WG tokens; a workgroup prefix sum
// compacts the matching tokens in token order, then the workgroup adds their dout rows into its rows,
// thread j always handling the same columns. So every dtable element receives its terms in increasing
// token order, from one thread: deterministic, race-free.
//
// VEC4 (a define, used when hidden % 4 == 0) makes the row arrays vec4<f32>; hidden_units counts vec4s.
// Grid: group = wg.y * num_workgroups.x + wg.x.

#if VEC4
alias V = vec4<f32>;
#else
alias V = f32;
#endif

struct Params {
  tokens: u32,
  hidden_units: u32,
  row_offset: u32,
  row_count: u32,
  vocab: u32,
  zero_invalid: u32,
  rows_per_group: u32,
  _pad: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
// forward: table, out
@group(0) @binding(2) var<storage, read> table: array<V>;
@group(0) @binding(3) var<storage, read_write> out: array<V>;
// backward: dout, dtable
@group(0) @binding(2) var<storage, read> dout: array<V>;
@group(0) @binding(3) var<storage, read_write> dtable: array<V>;

@compute @workgroup_size(WG)
fn embedding_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wg.y * nwg.x + wg.x;
  if (t >= params.tokens) { return; }
  let id = ids[t];
  let local = id - i32(params.row_offset);
  let hu = params.hidden_units;
  if (local >= 0 && local < i32(params.row_count)) {
    let src = u32(local) * hu;
    for (var u = lid; u < hu; u += WG) { out[t * hu + u] = table[src + u]; }
  } else if (params.zero_invalid != 0u && (id < 0 || id >= i32(params.vocab))) {
    for (var u = lid; u < hu; u += WG) { out[t * hu + u] = V(0.0); }
  }
}

var<workgroup> scan: array<u32, WG>;
var<workgroup> match_token: array<u32, WG>;
var<workgroup> match_row: array<u32, WG>;
// "Some token of this chunk hits this group's rows": most chunks hit nothing (a group owns a few dozen of
// ~100k rows), and they skip the prefix sum's barriers. Three slots used round-robin so that a slot is
// reset (chunk i resets slot (i+1) % 3) only after every thread has read it (at chunk i-2, before the
// barriers of chunk i-1).
var<workgroup> chunk_hit: array<u32, 3>;

@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = wg.y * nwg.x + wg.x;
  let r0 = g * params.rows_per_group;
  let r1 = min(r0 + params.rows_per_group, params.row_count);
  let hu = params.hidden_units;
  if (lid < 3u) { chunk_hit[lid] = 0u; }
  workgroupBarrier();
  var chunk = 0u;
  for (var base = 0u; base < params.tokens; base += WG) {
    let t = base + lid;
    let slot = chunk % 3u;
    if (lid == 0u) { chunk_hit[(chunk + 1u) % 3u] = 0u; }
    chunk += 1u;
    var hit = 0u;
    var row = 0u;
    if (t < params.tokens && r0 < r1) {
      let local = ids[t] - i32(params.row_offset);
      if (local >= i32(r0) && local < i32(r1)) {
        hit = 1u;
        row = u32(local);
      }
    }
    if (hit == 1u) { chunk_hit[slot] = 1u; }
    if (workgroupUniformLoad(&chunk_hit[slot]) == 0u) { continue; }
    // Inclusive prefix sum of the hit flags (Hillis–Steele): rank among this chunk's hits.
    scan[lid] = hit;
    workgroupBarrier();
    for (var off = 1u; off < WG; off = off * 2u) {
      var v = 0u;
      if (lid >= off) { v = scan[lid - off]; }
      workgroupBarrier();
      scan[lid] = scan[lid] + v;
      workgroupBarrier();
    }
    if (hit == 1u) {
      let rank = scan[lid] - 1u;
      match_token[rank] = t;
      match_row[rank] = row;
    }
    let count = workgroupUniformLoad(&scan[WG - 1u]);   // also a barrier: the matches are visible
    for (var m = 0u; m < count; m++) {
      let src = match_token[m] * hu;
      let dst = match_row[m] * hu;
      for (var u = lid; u < hu; u += WG) { dtable[dst + u] = dtable[dst + u] + dout[src + u]; }
    }
    workgroupBarrier();   // the next chunk reuses scan and the match lists
  }
}
