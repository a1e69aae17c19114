// AdamW as torch.optim.AdamW (single-tensor path, float32), with torch.nn.utils.clip_grad_norm_'s global
// clip folded in, over flat f32 buffers (params, grads, m, v) that hold every trainable tensor at the
// offsets of an OptimizerLayout (see adamw.ts).
//
//   grad_norm      = sqrt(Σ g²) over all grads          (reduce.wgsl's two passes, written into `norm`)
//   clip           = min(1, max_norm / (grad_norm + 1e-6))   (1 when clipping is off)
//   g             ← clip · g
//   p             ← p · (1 − lr·wd)                     decoupled weight decay
//   m             ← m + (1 − β1)(g − m)                 (torch's lerp)
//   v             ← β2·v + (1 − β2)·g²
//   p             ← p − (lr / (1 − β1ᵗ)) · m / (sqrt(v) / sqrt(1 − β2ᵗ) + eps)
//
// The scalars that change per step (lr, bias corrections) are a uniform the TS module rewrites each step,
// so a schedule never recompiles. The clip factor is read from the GPU scalar `norm`: no readback.
//
// adamw_update works on the sub-range [offset, offset + length) of params/grads; m and v are read at
// state_offset + (i − offset), so a chunk of the moments streamed in from CPU/disk can be bound alone.
// With ZERO_GRAD the update also zeroes the grads it consumed (saves the separate zero_grad pass).
// zero_grad: g ← 0 over [offset, offset + length).
//
// Non-finite guard: when the grad norm or any value of `guard` (the step's micro-batch losses) is NaN or
// ±∞, the update is skipped on the GPU itself: params, m and v keep their values (only the consumed grads
// are zeroed with ZERO_GRAD), so a bad step needs no readback before the next one. The CPU learns of the
// skip from the losses and norm it reads back once per step anyway, and applies the same test.
//
// Gradient rule: this file consumes gradients; it writes parameters and optimizer state in place.
// Grads are scaled by the clip factor only as they are used (the grads buffer keeps the unclipped values
// unless ZERO_GRAD zeroes it).

struct Step {
  decay: f32,        // 1 − lr·wd
  step_size: f32,    // lr / (1 − β1ᵗ)
  bc2_sqrt: f32,     // sqrt(1 − β2ᵗ)
  // 1 − β1 and 1 − β2 are computed in float64 on the CPU, as torch does in Python (1 − 0.999f in f32
  // would be off by 1.3e-5 relative).
  one_minus_beta1: f32,
  beta2: f32,
  one_minus_beta2: f32,
  eps: f32,
  max_norm: f32,
  clip: u32,         // 0: no clipping
}

struct Range {
  offset: u32,
  length: u32,
  state_offset: u32,
  _pad: u32,
}

override WG: u32 = 256u;

#if ZERO_ONLY

@group(0) @binding(0) var<uniform> range: Range;
@group(0) @binding(1) var<storage, read_write> grads: array<f32>;

@compute @workgroup_size(WG)
fn zero_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let threads = nwg.x * WG;
  for (var i = gid.x; i < range.length; i += threads) { grads[range.offset + i] = 0.0; }
}

#else

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> range: Range;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;
@group(0) @binding(6) var<storage, read> norm: array<f32>;
@group(0) @binding(7) var<storage, read> guard: array<f32>;

// NaN and ±∞ have every exponent bit set (a bit test: `x != x` may be folded away by the compiler).
fn is_finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn step_is_finite() -> bool {
  var ok = is_finite(norm[0]);
  let n = arrayLength(&guard);
  for (var k = 0u; k < n; k++) { ok = ok && is_finite(guard[k]); }
  return ok;
}

@compute @workgroup_size(WG)
fn adamw_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let threads = nwg.x * WG;
  if (!step_is_finite()) {
#if ZERO_GRAD
    for (var i = gid.x; i < range.length; i += threads) { grads[range.offset + i] = 0.0; }
#endif
    return;
  }
  var clip = 1.0;
  if (step.clip != 0u) { clip = min(1.0, step.max_norm / (norm[0] + 1e-6)); }
  for (var i = gid.x; i < range.length; i += threads) {
    let pi = range.offset + i;
    let si = range.state_offset + i;
    let g = grads[pi] * clip;
    var p = params[pi] * step.decay;
    let mi = m[si] + step.one_minus_beta1 * (g - m[si]);
    let vi = step.beta2 * v[si] + step.one_minus_beta2 * g * g;
    p = p - step.step_size * (mi / (sqrt(vi) / step.bc2_sqrt + step.eps));
    params[pi] = p;
    m[si] = mi;
    v[si] = vi;
#if ZERO_GRAD
    grads[pi] = 0.0;
#endif
  }
}

#endif
