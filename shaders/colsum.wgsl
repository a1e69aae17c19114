// Deterministic column sums of a [rows, units] quantity in two passes, without atomics: included by
// elementwise.wgsl (bias backward: Σ_t dy) and rmsnorm.wgsl (weight gradient: Σ_t dy·x·rstd). Not a
// kernel family of its own: the including file keeps its entry points and bindings and supplies
//   alias V                                  f32 or vec4<f32>
//   override COLS, LANES                     columns per workgroup, row lanes per column (COLS·LANES threads)
//   fn colsum_term(r: u32, c: u32) -> V      the summand of row r, column c
//   fn colsum_write_partial(chunk: u32, c: u32, v: V)    pass 1's output
//   fn colsum_read_partial(chunk: u32, c: u32) -> V      pass 2's input
//   fn colsum_finish(c: u32, v: V)           the column's total (e.g. accumulated into a parameter grad)
//
// Pass 1: workgroup (x = column block, y = row chunk) sums rows [y·chunk_rows, …) of its COLS columns;
// lane l of a column takes rows l, l + LANES, … in order and the lanes are combined in order. Pass 2: the
// same layout over the chunks. A fixed summation order everywhere: the same bits on every run.

var<workgroup> colsum_lanes: array<V, COLS * LANES>;

fn colsum_combine(lid: u32, s: V) -> V {
  let c_local = lid % COLS;
  colsum_lanes[lid] = s;   // lid = lane · COLS + c_local
  workgroupBarrier();
  var t = colsum_lanes[c_local];
  for (var l = 1u; l < LANES; l++) { t += colsum_lanes[l * COLS + c_local]; }
  return t;
}

fn colsum_partial(wg: vec3<u32>, lid: u32, rows: u32, units: u32, chunk_rows: u32) {
  let lane = lid / COLS;
  let c = wg.x * COLS + lid % COLS;
  let r0 = wg.y * chunk_rows;
  let r1 = min(r0 + chunk_rows, rows);
  var s = V(0.0);
  if (c < units) {
    for (var r = r0 + lane; r < r1; r += LANES) { s += colsum_term(r, c); }
  }
  let t = colsum_combine(lid, s);
  if (lane == 0u && c < units) { colsum_write_partial(wg.y, c, t); }
}

fn colsum_reduce(wg: vec3<u32>, lid: u32, units: u32, chunks: u32) {
  let lane = lid / COLS;
  let c = wg.x * COLS + lid % COLS;
  var s = V(0.0);
  if (c < units) {
    for (var k = lane; k < chunks; k += LANES) { s += colsum_read_partial(k, c); }
  }
  let t = colsum_combine(lid, s);
  if (lane == 0u && c < units) { colsum_finish(c, t); }
}
