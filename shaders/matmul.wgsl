// Tiled f32 matrix multiply: C = alpha · op(A) · op(B)  (+ C when ACCUMULATE), batched over workgroup_id.z.
//
//   op(A) is M×K: A is stored [M, K] row-major, or [K, M] when TRANS_A.
//   op(B) is K×N: B is stored [K, N] row-major, or [N, K] when TRANS_B.
//
// The three products a linear layer needs: forward Y = X·Wᵀ (TRANS_B), input gradient dX = dY·W (plain),
// weight gradient dW = dYᵀ·X (TRANS_A, ACCUMULATE across micro-batches).
//
// Each workgroup computes a TILE_M×TILE_N block of C, each thread a 4×4 sub-block held in registers; A and
// B are staged through workgroup memory TILE_K columns at a time. Edges of ragged shapes load zeros and
// skip stores, so any M, N, K works. Shapes are uniforms: one pipeline serves every sequence length.
// There is no backward entry point: the backward of a matmul is two more matmuls of this same kernel.

struct Params {
  M: u32,
  N: u32,
  K: u32,
  alpha: f32,
  // Element strides between consecutive matrices of a batch (0 broadcasts one matrix to the batch).
  batch_stride_a: u32,
  batch_stride_b: u32,
  batch_stride_c: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const THREAD_M: u32 = 4u;
const THREAD_N: u32 = 4u;
override TILE_M: u32 = 64u;
override TILE_N: u32 = 64u;
override TILE_K: u32 = 16u;

// Stored k-major so the inner loop reads 4 consecutive rows (A) or columns (B) for one k.
var<workgroup> tile_a: array<f32, TILE_K * TILE_M>;
var<workgroup> tile_b: array<f32, TILE_K * TILE_N>;

fn load_a(batch_base: u32, m: u32, k: u32) -> f32 {
  if (m >= params.M || k >= params.K) { return 0.0; }
#if TRANS_A
  return a[batch_base + k * params.M + m];
#else
  return a[batch_base + m * params.K + k];
#endif
}

fn load_b(batch_base: u32, k: u32, n: u32) -> f32 {
  if (k >= params.K || n >= params.N) { return 0.0; }
#if TRANS_B
  return b[batch_base + n * params.K + k];
#else
  return b[batch_base + k * params.N + n];
#endif
}

@compute @workgroup_size(TILE_N / THREAD_N, TILE_M / THREAD_M)
fn matmul(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let threads = (TILE_N / THREAD_N) * (TILE_M / THREAD_M);
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
  let base_a = wg.z * params.batch_stride_a;
  let base_b = wg.z * params.batch_stride_b;
  let base_c = wg.z * params.batch_stride_c;

  var acc: array<array<f32, THREAD_N>, THREAD_M>;
  for (var i = 0u; i < THREAD_M; i++) {
    for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = 0.0; }
  }

  for (var k0 = 0u; k0 < params.K; k0 += TILE_K) {
    // Cooperative loads; consecutive threads take consecutive addresses of the stored layout.
    for (var idx = tid; idx < TILE_M * TILE_K; idx += threads) {
#if TRANS_A
      let mm = idx % TILE_M;
      let kk = idx / TILE_M;
#else
      let kk = idx % TILE_K;
      let mm = idx / TILE_K;
#endif
      tile_a[kk * TILE_M + mm] = load_a(base_a, row0 + mm, k0 + kk);
    }
    for (var idx = tid; idx < TILE_N * TILE_K; idx += threads) {
#if TRANS_B
      let kk = idx % TILE_K;
      let nn = idx / TILE_K;
#else
      let nn = idx % TILE_N;
      let kk = idx / TILE_N;
#endif
      tile_b[kk * TILE_N + nn] = load_b(base_b, k0 + kk, col0 + nn);
    }
    workgroupBarrier();

    for (var kk = 0u; kk < TILE_K; kk++) {
      var ra: array<f32, THREAD_M>;
      var rb: array<f32, THREAD_N>;
      for (var i = 0u; i < THREAD_M; i++) { ra[i] = tile_a[kk * TILE_M + lid.y * THREAD_M + i]; }
      for (var j = 0u; j < THREAD_N; j++) { rb[j] = tile_b[kk * TILE_N + lid.x * THREAD_N + j]; }
      for (var i = 0u; i < THREAD_M; i++) {
        for (var j = 0u; j < THREAD_N; j++) { acc[i][j] = fma(ra[i], rb[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < THREAD_M; i++) {
    let m = row0 + lid.y * THREAD_M + i;
    if (m >= params.M) { continue; }
    for (var j = 0u; j < THREAD_N; j++) {
      let n = col0 + lid.x * THREAD_N + j;
      if (n >= params.N) { continue; }
      let at = base_c + m * params.N + n;
#if ACCUMULATE
      c[at] = c[at] + params.alpha * acc[i][j];
#else
      c[at] = params.alpha * acc[i][j];
#endif
    }
  }
}
