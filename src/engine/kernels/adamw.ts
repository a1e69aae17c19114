import adamwWgsl from '../../../shaders/adamw.wgsl';
import type { GpuContext, KernelDispatch, UniformField } from '../gpu/context.ts';
import { numel, shapeString, type Tensor } from '../gpu/tensor.ts';
import { prepareReduceAll, type PreparedReduction } from './reduce.ts';

export const ADAMW_SHADER = { name: 'adamw.wgsl', code: adamwWgsl };

const WG = 256;
/** Grid-stride kernels use at most this many workgroups (plenty to saturate memory bandwidth). */
const MAX_WORKGROUPS = 8192;

export interface ParamSpec {
  readonly name: string;
  readonly shape: readonly number[];
}

/** Where one named parameter lives in the flat optimizer buffers. */
export interface ParamSlot extends ParamSpec {
  /** Element offset in params/grads (and m/v when they are resident). */
  readonly offset: number;
  readonly length: number;
}

/**
 * The flat layout of every trainable tensor (LoRA A/B of each layer): one f32 buffer each for params,
 * grads, m and v, with a table of (offset, length) per name. Offsets are aligned to 64 elements (256
 * bytes, WebGPU's minStorageBufferOffsetAlignment), so any one parameter can be bound on its own as a
 * buffer sub-range (`binding()`) by the kernels that use it. The gaps between slots hold zeros in every
 * buffer, which the optimizer leaves at zero (zero grad → zero update), so kernels may run over `total`.
 */
export class OptimizerLayout {
  static readonly ALIGN = 64;
  readonly slots: readonly ParamSlot[];
  readonly total: number;
  private readonly byName: ReadonlyMap<string, ParamSlot>;

  constructor(params: readonly ParamSpec[]) {
    const slots: ParamSlot[] = [];
    let at = 0;
    for (const p of params) {
      const length = numel(p.shape);
      if (length < 1) throw new Error(`OptimizerLayout: parameter '${p.name}' ${shapeString(p.shape)} is empty`);
      slots.push({ name: p.name, shape: [...p.shape], offset: at, length });
      at += Math.ceil(length / OptimizerLayout.ALIGN) * OptimizerLayout.ALIGN;
    }
    this.slots = slots;
    this.total = Math.max(at, OptimizerLayout.ALIGN);
    this.byName = new Map(slots.map((s) => [s.name, s]));
    if (this.byName.size !== slots.length) throw new Error('OptimizerLayout: duplicate parameter names');
  }

  slot(name: string): ParamSlot {
    const s = this.byName.get(name);
    if (!s) throw new Error(`OptimizerLayout: no parameter named '${name}'`);
    return s;
  }

  /** A binding of one parameter's elements inside a flat buffer (params or grads). */
  binding(flat: Tensor, name: string): GPUBufferBinding {
    const s = this.slot(name);
    return { buffer: flat.buffer, offset: s.offset * 4, size: s.length * 4 };
  }

  /** Host values by name → one flat array (gaps zero). Missing names are left zero. */
  pack(values: ReadonlyMap<string, Float32Array>): Float32Array {
    const flat = new Float32Array(this.total);
    for (const [name, v] of values) {
      const s = this.slot(name);
      if (v.length !== s.length) throw new Error(`OptimizerLayout.pack: '${name}' has ${v.length} values, slot holds ${s.length}`);
      flat.set(v, s.offset);
    }
    return flat;
  }

  /** One flat array → views by name. */
  unpack(flat: Float32Array): Map<string, Float32Array> {
    return new Map(this.slots.map((s) => [s.name, flat.subarray(s.offset, s.offset + s.length)]));
  }
}

/** The flat f32 buffers of an optimizer. m and v are null when the moments live off the GPU (streamed). */
export interface OptimizerState {
  readonly layout: OptimizerLayout;
  readonly params: Tensor;
  readonly grads: Tensor;
  readonly m: Tensor | null;
  readonly v: Tensor | null;
}

/** Allocates the flat buffers, all zero (upload initial params with ctx.write(state.params, layout.pack(...))). */
export function createOptimizerState(ctx: GpuContext, layout: OptimizerLayout, { residentMoments = true } = {}): OptimizerState {
  const mk = (what: string) => {
    const t = ctx.tensor(`optimizer ${what}`, [layout.total]);
    ctx.fill32(t, 0);
    return t;
  };
  return { layout, params: mk('params'), grads: mk('grads'), m: residentMoments ? mk('m') : null, v: residentMoments ? mk('v') : null };
}

export function releaseOptimizerState(ctx: GpuContext, s: OptimizerState): void {
  for (const t of [s.params, s.grads, s.m, s.v]) if (t) ctx.release(t);
}

/** torch.optim.AdamW hyperparameters plus clip_grad_norm_'s max_norm (0 or undefined: no clipping). */
export interface AdamWConfig {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm?: number;
}

export interface UpdateRange {
  /** Element range of params/grads to update (default: the whole layout). */
  offset?: number;
  length?: number;
  /** Moments for this range, read at stateOffset + (i − offset); default the state's resident m/v at offset. */
  moments?: { m: Tensor; v: Tensor; stateOffset?: number };
  /** Zero the grads of the range after using them (fuses zero-grad into the update). */
  zeroGrad?: boolean;
}

function checkF32(what: string, t: Tensor, needElems: number): void {
  if (t.dtype !== 'f32') throw new Error(`adamw: ${what} '${t.label}' must be f32, is ${t.dtype}`);
  if (t.byteSize / 4 < needElems) throw new Error(`adamw: ${what} '${t.label}' ${shapeString(t.shape)} holds ${t.byteSize / 4} elements, needs ${needElems}`);
}

function workgroupsFor(length: number): [number, number, number] {
  return [Math.max(1, Math.min(MAX_WORKGROUPS, Math.ceil(length / WG))), 1, 1];
}

/**
 * AdamW + global grad-norm clip over an OptimizerState. A step is
 *   `setStep(t)` (CPU: writes the step uniform, before submitting),
 *   `normDispatches` (Σg² → sqrt into the GPU scalar `gradNorm`),
 *   one or more update dispatches (`prepareUpdate`, the whole layout or sub-ranges with streamed moments).
 * `stepDispatches()` is norm + a whole-layout update. `gradNorm` ([1] f32) keeps the last step's norm
 * (before clipping) until the next step's norm pass; read it back lazily for logging.
 */
export class AdamW {
  private readonly stepUniforms: GPUBuffer;
  private constructor(
    private readonly ctx: GpuContext,
    readonly state: OptimizerState,
    readonly config: AdamWConfig,
    readonly gradNorm: Tensor,
    private readonly norm: PreparedReduction,
    private readonly guard: Tensor,
  ) {
    this.stepUniforms = ctx.uniforms('adamw step', AdamW.stepFields(config, 1, config.lr));
  }

  /**
   * `guard`: f32 values that must all be finite for a step to update anything (the trainer passes the
   * step's micro-batch losses); the grad norm is always checked. A non-finite step leaves params, m and v
   * unchanged (see adamw.wgsl); `AdamW.isFiniteStep` is the same test on the CPU.
   */
  static async create(ctx: GpuContext, state: OptimizerState, config: AdamWConfig, opts: { guard?: Tensor } = {}): Promise<AdamW> {
    const total = state.layout.total;
    checkF32('params', state.params, total);
    checkF32('grads', state.grads, total);
    const gradNorm = ctx.tensor('grad norm', [1]);
    ctx.fill32(gradNorm, 0);
    const norm = await prepareReduceAll(ctx, state.grads, gradNorm, { op: 'norm2', length: total });
    if (opts.guard) checkF32('guard', opts.guard, 1);
    return new AdamW(ctx, state, config, gradNorm, norm, opts.guard ?? gradNorm);
  }

  /** The kernel's skip test on read-back values: the grad norm and every guard value finite. */
  static isFiniteStep(gradNorm: number, guard: ArrayLike<number> = []): boolean {
    if (!Number.isFinite(gradNorm)) return false;
    for (let i = 0; i < guard.length; i++) if (!Number.isFinite(guard[i]!)) return false;
    return true;
  }

  /** The uniform fields for step t (1-based, as torch counts after its increment) at learning rate lr. */
  static stepFields(c: AdamWConfig, t: number, lr: number): UniformField[] {
    const clip = c.maxGradNorm !== undefined && c.maxGradNorm > 0 && Number.isFinite(c.maxGradNorm);
    return [
      ['f32', 1 - lr * c.weightDecay],
      ['f32', lr / (1 - c.beta1 ** t)],
      ['f32', Math.sqrt(1 - c.beta2 ** t)],
      ['f32', 1 - c.beta1],
      ['f32', c.beta2],
      ['f32', 1 - c.beta2],
      ['f32', c.eps],
      ['f32', clip ? c.maxGradNorm! : 0],
      ['u32', clip ? 1 : 0],
    ];
  }

  get normDispatches(): readonly KernelDispatch[] {
    return this.norm.dispatches;
  }

  /** Sets step t (1-based) and its learning rate (a schedule's value) for the next submitted step. */
  setStep(t: number, lr = this.config.lr): void {
    if (!(t >= 1)) throw new Error(`AdamW.setStep: step ${t} must be ≥ 1`);
    this.ctx.writeUniforms(this.stepUniforms, AdamW.stepFields(this.config, t, lr));
  }

  /** The update over a range (default all of it). Each prepared range owns a small uniform buffer. */
  async prepareUpdate(r: UpdateRange = {}): Promise<KernelDispatch> {
    const { ctx, state } = this;
    const offset = r.offset ?? 0;
    const length = r.length ?? state.layout.total - offset;
    if (offset < 0 || length < 0 || offset + length > state.layout.total) throw new Error(`adamw: range [${offset}, ${offset + length}) is outside the layout (${state.layout.total})`);
    const m = r.moments?.m ?? state.m;
    const v = r.moments?.v ?? state.v;
    const stateOffset = r.moments ? (r.moments.stateOffset ?? 0) : offset;
    if (!m || !v) throw new Error('adamw: the moments are not resident: pass moments for the range');
    checkF32('m', m, stateOffset + length);
    checkF32('v', v, stateOffset + length);
    const pipeline = await ctx.pipeline({ shader: ADAMW_SHADER, entryPoint: 'adamw_update', defines: { ZERO_GRAD: !!r.zeroGrad }, constants: { WG } });
    const label = `adamw [${offset}, ${offset + length})${r.zeroGrad ? ' +zero_grad' : ''}`;
    const range = ctx.uniforms(`${label} range`, [
      ['u32', offset],
      ['u32', length],
      ['u32', stateOffset],
      ['u32', 0],
    ]);
    return {
      label,
      pipeline,
      bindGroup: ctx.bindGroup(label, pipeline, [this.stepUniforms, range, state.params, state.grads, m, v, this.gradNorm, { buffer: this.guard.buffer, offset: this.guard.byteOffset ?? 0, size: this.guard.byteSize }]),
      workgroups: workgroupsFor(length),
    };
  }

  /** grads[offset, offset+length) ← 0 (default: all). */
  async prepareZeroGrad(offset = 0, length = this.state.layout.total - offset): Promise<KernelDispatch> {
    return prepareZeroGrad(this.ctx, this.state.grads, offset, length);
  }

  /** Norm + whole-layout update with resident moments: the usual step. */
  async stepDispatches(opts: { zeroGrad?: boolean } = {}): Promise<KernelDispatch[]> {
    return [...this.norm.dispatches, await this.prepareUpdate({ zeroGrad: !!opts.zeroGrad })];
  }

  release(): void {
    this.norm.release();
    this.ctx.release(this.gradNorm);
  }
}

/** grads[offset, offset+length) ← 0. */
export async function prepareZeroGrad(ctx: GpuContext, grads: Tensor, offset: number, length: number): Promise<KernelDispatch> {
  checkF32('grads', grads, offset + length);
  const pipeline = await ctx.pipeline({ shader: ADAMW_SHADER, entryPoint: 'zero_grad', defines: { ZERO_ONLY: true }, constants: { WG } });
  const label = `zero_grad [${offset}, ${offset + length})`;
  const range = ctx.uniforms(`${label} range`, [
    ['u32', offset],
    ['u32', length],
    ['u32', 0],
    ['u32', 0],
  ]);
  return { label, pipeline, bindGroup: ctx.bindGroup(label, pipeline, [range, grads]), workgroups: workgroupsFor(length) };
}
