// SwiGLU of the LLaMA MLP: h = silu(gate) · up, silu(g) = g · σ(g).
//
//   forward:   h = silu(g) · u
//   backward:  dgate = dh · u · σ(g) · (1 + g · (1 − σ(g))),  dup = dh · silu(g)   (recomputed from the
//              saved gate/up; both are activation grads: WRITTEN, =)
//
// Gradient rule (llm.c): parameter grads are accumulated (+=), activation grads are written (=); this
// family has no parameters.
//
// Layouts (define FUSED): separate tensors gate, up [tokens, inter] (and dgate, dup), or one fused
// [tokens, 2·inter] tensor per token row `gate | up` (the output of one matmul with the concatenated
// weights [W_gate; W_up]) with dgu in the same layout. VEC4 (a define, used when inter % 4 == 0) makes the
// arrays vec4<f32>; params.units counts vec4s of one row then. Grid: group = wg.y * num_workgroups.x + wg.x.

#if VEC4
alias V = vec4<f32>;
#else
alias V = f32;
#endif

struct Params {
  tokens: u32,
  units: u32,   // inter in units of V
  n: u32,       // tokens · units
  _pad: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

#if FUSED
// forward: gu, h                     backward: dh, gu, dgu
@group(0) @binding(1) var<storage, read> f_gu: array<V>;
@group(0) @binding(2) var<storage, read_write> f_h: array<V>;
@group(0) @binding(1) var<storage, read> b_dh: array<V>;
@group(0) @binding(2) var<storage, read> b_gu: array<V>;
@group(0) @binding(3) var<storage, read_write> b_dgu: array<V>;
#else
// forward: gate, up, h               backward: dh, gate, up, dgate, dup
@group(0) @binding(1) var<storage, read> f_gate: array<V>;
@group(0) @binding(2) var<storage, read> f_up: array<V>;
@group(0) @binding(3) var<storage, read_write> f_h: array<V>;
@group(0) @binding(1) var<storage, read> b_dh: array<V>;
@group(0) @binding(2) var<storage, read> b_gate: array<V>;
@group(0) @binding(3) var<storage, read> b_up: array<V>;
@group(0) @binding(4) var<storage, read_write> b_dgate: array<V>;
@group(0) @binding(5) var<storage, read_write> b_dup: array<V>;
#endif

fn sigmoid(g: V) -> V { return V(1.0) / (V(1.0) + exp(-g)); }

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * WG + lid;
  if (i >= params.n) { return; }
#if FUSED
  let t = i / params.units;
  let j = i - t * params.units;
  let g = f_gu[2u * t * params.units + j];
  let u = f_gu[(2u * t + 1u) * params.units + j];
#else
  let g = f_gate[i];
  let u = f_up[i];
#endif
  f_h[i] = g * sigmoid(g) * u;
}

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.y * nwg.x + wg.x) * WG + lid;
  if (i >= params.n) { return; }
#if FUSED
  let t = i / params.units;
  let j = i - t * params.units;
  let gi = 2u * t * params.units + j;
  let ui = gi + params.units;
  let g = b_gu[gi];
  let u = b_gu[ui];
#else
  let g = b_gate[i];
  let u = b_up[i];
#endif
  let dh = b_dh[i];
  let s = sigmoid(g);
  let dg = dh * u * s * (V(1.0) + g * (V(1.0) - s));
  let du = dh * g * s;
#if FUSED
  b_dgu[gi] = dg;
  b_dgu[ui] = du;
#else
  b_dgate[i] = dg;
  b_dup[i] = du;
#endif
}
