// Cross-entropy over the vocabulary, chunked over tokens and split over lm_head row blocks, fused with its
// backward (llm.c's fused classifier): the tokens×vocab logits never exist in full. cross_entropy.ts runs,
// per chunk of C tokens, logits_b = hidden_chunk · lm_head_bᵀ (matmul.wgsl) for each vocab block b, then:
//
//   ce_block_stats  (per block)  per row: m_b = max_j x_j, s_b = Σ_j exp(x_j − m_b), and x_target when the
//                                target lies in this block              → stats[row][b] = (m_b, s_b, x_t, has)
//   ce_row_loss     (per chunk)  per row: lse = M + log Σ_b s_b·exp(m_b − M), M = max_b m_b;
//                                losses[t] = lse − x_target (0 when t has no target); lse[t] = lse
//   ce_block_grad   (per block)  in place: x_j ← (softmax_j − [j = target]) · inv_count  (0 for rows
//                                without a target)
//
// then dhidden_chunk = Σ_b dlogits_b · lm_head_b (matmul, written), d(lm_head_b) += dlogits_bᵀ · hidden_chunk
// (optional), and one reduction of `losses` into the mean loss (reduce.wgsl). `copy_rows` moves rows
// between the full hidden/dhidden tensors and the chunk buffers (and places vocab blocks for generation).
//
// Label convention (Hugging Face causal LM): labels are unshifted; token t of a row predicts labels[t+1];
// the last position of each row (t % seq_len == seq_len − 1) has no target; label −100 (ignore_index) and
// any label outside [0, vocab) give zero loss and zero gradient (the TS side rejects out-of-range labels
// other than −100 before they get here). inv_count = 1 / (number of supervised targets in the whole
// batch), counted on the CPU when the batch is prepared, so that the fused gradient is already that of
// the mean loss.
//
// Gradient rule: activation grads are written (=): dlogits overwrite the logits, dhidden is written;
// parameter grads are accumulated (+=): d(lm_head). The forward saves lse per token.

struct Ce {
  rows: u32,        // tokens in this chunk
  cols: u32,        // columns (vocab entries) of this block
  col_offset: u32,  // vocab id of the block's first column
  token0: u32,      // global index of the chunk's first token
  seq_len: u32,     // positions per row of the batch (the shift stays inside a row)
  block: u32,       // this block's index
  num_blocks: u32,
  vocab: u32,
}

const IGNORE: i32 = -100;

fn chunk_row(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wg.y * nwg.x + wg.x;
}

#if KERNEL == stats

#include "reduce.wgsl"

@group(0) @binding(0) var<uniform> ce: Ce;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;

fn target_of(t: u32) -> i32 {
  if ((t % ce.seq_len) + 1u >= ce.seq_len) { return IGNORE; }
  return labels[t + 1u];
}

#if SOFTWARE
// CPU adapters (SwiftShader): one invocation per row, one pass with an online max (the running sum is
// rescaled when the max grows). The workgroup tree reduction below costs a dozen barriers per row there,
// and barriers are what is expensive on a CPU (380 ms per chunk of ~400 rows of a 259-word vocabulary, now
// a few ms).
override ROWS_WG: u32 = 64u;
@compute @workgroup_size(ROWS_WG)
fn ce_block_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.y * nwg.x * ROWS_WG + gid.x;
  if (row >= ce.rows) { return; }
  let base = row * ce.cols;
  var mx = REDUCE_LOWEST;
  var s = 0.0;
  for (var j = 0u; j < ce.cols; j++) {
    let x = logits[base + j];
    if (x > mx) {
      s = s * exp(mx - x);
      mx = x;
    }
    s += exp(x - mx);
  }
  {
#else
@compute @workgroup_size(REDUCE_WG)
fn ce_block_stats(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row = chunk_row(wg, nwg);
  if (row >= ce.rows) { return; } // uniform per workgroup
  let base = row * ce.cols;
  var mx = REDUCE_LOWEST;
  for (var j = lid; j < ce.cols; j += REDUCE_WG) { mx = max(mx, logits[base + j]); }
  mx = workgroup_max(mx, lid);
  var s = 0.0;
  for (var j = lid; j < ce.cols; j += REDUCE_WG) { s += exp(logits[base + j] - mx); }
  s = workgroup_sum(s, lid);
  if (lid == 0u) {
#endif
    let tgt = target_of(ce.token0 + row);
    let has = tgt >= i32(ce.col_offset) && tgt < i32(ce.col_offset + ce.cols);
    let at = (row * ce.num_blocks + ce.block) * 4u;
    stats[at] = mx;
    stats[at + 1u] = s;
    var xt = 0.0;
    if (has) { xt = logits[base + u32(tgt) - ce.col_offset]; }
    stats[at + 2u] = xt;
    stats[at + 3u] = select(0.0, 1.0, has);
  }
}

#elif KERNEL == loss

@group(0) @binding(0) var<uniform> ce: Ce;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> losses: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;

fn target_of(t: u32) -> i32 {
  if ((t % ce.seq_len) + 1u >= ce.seq_len) { return IGNORE; }
  return labels[t + 1u];
}

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn ce_row_loss(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= ce.rows) { return; }
  let first = row * ce.num_blocks * 4u;
  var mx = stats[first];
  for (var b = 1u; b < ce.num_blocks; b++) { mx = max(mx, stats[first + b * 4u]); }
  var s = 0.0;
  var xt = 0.0;
  var has = 0.0;
  for (var b = 0u; b < ce.num_blocks; b++) {
    let at = first + b * 4u;
    s += stats[at + 1u] * exp(stats[at] - mx);
    xt += stats[at + 2u];
    has += stats[at + 3u];
  }
  let lse = mx + log(s);
  let t = ce.token0 + row;
  let tgt = target_of(t);
  let supervised = tgt >= 0 && tgt < i32(ce.vocab) && has > 0.5;
  losses[t] = select(0.0, lse - xt, supervised);
  lse_out[t] = lse;
}

#elif KERNEL == grad

struct Batch {
  inv_count: f32,   // 1 / supervised targets in the batch (0 when there are none)
  _pad0: f32,
  _pad1: f32,
  _pad2: f32,
}

@group(0) @binding(0) var<uniform> ce: Ce;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> logits: array<f32>;

fn target_of(t: u32) -> i32 {
  if ((t % ce.seq_len) + 1u >= ce.seq_len) { return IGNORE; }
  return labels[t + 1u];
}

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn ce_block_grad(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row = chunk_row(wg, nwg);
  if (row >= ce.rows) { return; }
  let t = ce.token0 + row;
  let tgt = target_of(t);
  let base = row * ce.cols;
  if (tgt < 0 || tgt >= i32(ce.vocab)) {
    for (var j = lid; j < ce.cols; j += WG) { logits[base + j] = 0.0; }
    return;
  }
  let l = lse[t];
  let local = tgt - i32(ce.col_offset); // may lie outside this block
  for (var j = lid; j < ce.cols; j += WG) {
    let p = exp(logits[base + j] - l);
    logits[base + j] = (p - select(0.0, 1.0, i32(j) == local)) * batch.inv_count;
  }
}

#elif KERNEL == copy

struct Copy {
  rows: u32,
  cols: u32,
  src_offset: u32,
  src_stride: u32,
  dst_offset: u32,
  dst_stride: u32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> cp: Copy;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

override WG: u32 = 256u;

// dst[dst_offset + r·dst_stride + j] = src[src_offset + r·src_stride + j] for r < rows, j < cols.
@compute @workgroup_size(WG)
fn copy_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = cp.rows * cp.cols;
  for (var i = gid.x; i < n; i += nwg.x * WG) {
    let r = i / cp.cols;
    let j = i - r * cp.cols;
    dst[cp.dst_offset + r * cp.dst_stride + j] = src[cp.src_offset + r * cp.src_stride + j];
  }
}

#endif
