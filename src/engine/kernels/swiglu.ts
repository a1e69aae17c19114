import swigluWgsl from '../../../shaders/swiglu.wgsl';
import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { shapeString, type Tensor } from '../gpu/tensor.ts';
import { grid1d } from './grid.ts';

export const SWIGLU_SHADER = { name: 'swiglu.wgsl', code: swigluWgsl };

const WG = 256;

export interface SwigluShape {
  tokens: number;
  /** intermediate_size (columns of gate and of up). */
  inter: number;
}

/** gate and up: two tensors [tokens, inter], or one fused [tokens, 2·inter] tensor with rows `gate | up`. */
export type GateUp = { gate: Tensor; up: Tensor } | { fused: Tensor };
/** Gradients in the same layout as the inputs. */
export type DGateUp = { dgate: Tensor; dup: Tensor } | { dfused: Tensor };

function check(op: string, what: string, t: Tensor, need: number): void {
  if (t.dtype !== 'f32') throw new Error(`${op}: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  const have = t.byteSize / 4;
  if (have < need) throw new Error(`${op}: ${what} '${t.label}' ${shapeString(t.shape)} holds ${have} elements, needs ${need}`);
}

function setup(ctx: GpuContext, op: string, { tokens, inter }: SwigluShape, fused: boolean) {
  const vec4 = inter % 4 === 0;
  const units = vec4 ? inter / 4 : inter;
  const n = tokens * units;
  const label = `${op}${fused ? ' (fused gate|up)' : ''} ${tokens}×${inter}`;
  const params = ctx.uniforms(`${label} params`, [
    ['u32', tokens],
    ['u32', units],
    ['u32', n],
    ['u32', 0],
  ]);
  return { defines: { VEC4: vec4, FUSED: fused }, label, params, workgroups: grid1d(ctx, Math.ceil(n / WG), label) };
}

/** h = silu(gate)·up, h [tokens, inter]. */
export async function prepareSwigluForward(ctx: GpuContext, gu: GateUp, h: Tensor, shape: SwigluShape): Promise<KernelDispatch[]> {
  const op = 'swiglu_forward';
  const n = shape.tokens * shape.inter;
  const fused = 'fused' in gu;
  if (fused) check(op, 'gate|up', gu.fused, 2 * n);
  else {
    check(op, 'gate', gu.gate, n);
    check(op, 'up', gu.up, n);
  }
  check(op, 'h', h, n);
  const s = setup(ctx, op, shape, fused);
  const pipeline = await ctx.pipeline({ shader: SWIGLU_SHADER, entryPoint: op, defines: s.defines, constants: { WG } });
  const resources = fused ? [s.params, gu.fused, h] : [s.params, gu.gate, gu.up, h];
  return [{ label: s.label, pipeline, bindGroup: ctx.bindGroup(s.label, pipeline, resources), workgroups: s.workgroups }];
}

/** dgate, dup (written) from dh and the saved gate/up; the gradient layout must match the input layout. */
export async function prepareSwigluBackward(ctx: GpuContext, dh: Tensor, gu: GateUp, dgu: DGateUp, shape: SwigluShape): Promise<KernelDispatch[]> {
  const op = 'swiglu_backward';
  const n = shape.tokens * shape.inter;
  check(op, 'dh', dh, n);
  const s = setup(ctx, op, shape, 'fused' in gu);
  let resources: (GPUBuffer | Tensor)[];
  if ('fused' in gu) {
    if (!('dfused' in dgu)) throw new Error(`${op}: fused gate|up input needs a fused gradient tensor (dfused)`);
    check(op, 'gate|up', gu.fused, 2 * n);
    check(op, 'd(gate|up)', dgu.dfused, 2 * n);
    resources = [s.params, dh, gu.fused, dgu.dfused];
  } else {
    if (!('dgate' in dgu)) throw new Error(`${op}: separate gate/up inputs need separate gradients (dgate, dup)`);
    for (const [w, t] of [['gate', gu.gate], ['up', gu.up], ['dgate', dgu.dgate], ['dup', dgu.dup]] as const) check(op, w, t, n);
    resources = [s.params, dh, gu.gate, gu.up, dgu.dgate, dgu.dup];
  }
  const pipeline = await ctx.pipeline({ shader: SWIGLU_SHADER, entryPoint: op, defines: s.defines, constants: { WG } });
  return [{ label: s.label, pipeline, bindGroup: ctx.bindGroup(s.label, pipeline, resources), workgroups: s.workgroups }];
}

// ---- convenience wrappers (tools and tests: prepare, run once, wait) ----------------------------------

export async function swigluForward(ctx: GpuContext, gu: GateUp, h: Tensor, shape: SwigluShape): Promise<void> {
  await ctx.run(await prepareSwigluForward(ctx, gu, h, shape));
}

export async function swigluBackward(ctx: GpuContext, dh: Tensor, gu: GateUp, dgu: DGateUp, shape: SwigluShape): Promise<void> {
  await ctx.run(await prepareSwigluBackward(ctx, dh, gu, dgu, shape));
}
