import { BufferPool } from './pool.ts';
import { PipelineCache, type PipelineSpec } from './pipelines.ts';
import { DeviceLostError, GpuOutOfMemoryError, GpuUnavailableError, KernelError } from './errors.ts';
import { DTYPE_BYTES, numel, type DType, type HostArray, type Tensor } from './tensor.ts';

export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

export interface GpuFeatures {
  shaderF16: boolean;
  subgroups: boolean;
  timestampQuery: boolean;
  /** chromium-experimental-subgroup-matrix (tensor cores through integer subgroup matrices). */
  subgroupMatrix: boolean;
  subgroupMatrixConfigs: SubgroupMatrixConfig[];
  subgroupMinSize: number;
  subgroupMaxSize: number;
  /**
   * A CPU implementation (SwiftShader, or the browser's fallback adapter): workgroup barriers cost far
   * more than arithmetic there, so kernels prefer their untiled variants.
   */
  software: boolean;
}

export interface GpuLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeWorkgroupSizeY: number;
  maxComputeWorkgroupsPerDimension: number;
  maxStorageBuffersPerShaderStage: number;
}

export interface AdapterDescription {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
}

/** A plain-data summary of the GPU, safe to send to the UI thread. */
export interface GpuSummary {
  adapter: AdapterDescription;
  features: GpuFeatures;
  limits: GpuLimits;
}

const LIMIT_NAMES: (keyof GpuLimits)[] = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
];

export interface GpuContextOptions {
  powerPreference?: GPUPowerPreference;
  /** Leave out optional features (tests of the fallback paths). */
  disableFeatures?: string[];
}

/** One compute dispatch, prepared once and encoded as often as needed (a training step re-encodes the same ones). */
export interface KernelDispatch {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  readonly workgroups: readonly [number, number, number];
}

/** The binding of a tensor: the whole buffer, or for a view its byte range (rounded up to 16 bytes for vec4 arrays). */
export function tensorBinding(t: Tensor): GPUBufferBinding {
  if (t.byteOffset === undefined) return { buffer: t.buffer };
  return { buffer: t.buffer, offset: t.byteOffset, size: Math.min(Math.ceil(t.byteSize / 16) * 16, t.buffer.size - t.byteOffset) };
}

export type UniformField = readonly ['u32' | 'i32' | 'f32', number];

/**
 * The engine's handle on one GPUDevice: limits and features we were granted, the buffer pool, the
 * pipeline cache, and helpers to move tensors and run dispatches with errors that name the kernel.
 * It lives in the worker (or in Node); the UI only ever sees a GpuSummary.
 */
export class GpuContext {
  readonly pool: BufferPool;
  readonly pipelines: PipelineCache;
  readonly lost: Promise<DeviceLostError>;
  private lostError: DeviceLostError | null = null;
  private readonly lostListeners = new Set<(e: DeviceLostError) => void>();

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterDescription,
    readonly features: GpuFeatures,
    readonly limits: GpuLimits,
  ) {
    this.pool = new BufferPool(device);
    this.pipelines = new PipelineCache(device, { SUBGROUPS: features.subgroups, F16: features.shaderF16 });
    this.lost = device.lost.then((info) => {
      const err = new DeviceLostError(info.reason ?? 'unknown', info.message || 'no detail from the driver');
      this.lostError = err;
      for (const l of this.lostListeners) l(err);
      return err;
    });
  }

  static async create(gpu: GPU | undefined, options: GpuContextOptions = {}): Promise<GpuContext> {
    if (!gpu) {
      throw new GpuUnavailableError(
        'WebGPU is not available: navigator.gpu is missing. It needs a secure context (https or http://localhost) ' +
          'and a browser with WebGPU (Chrome/Edge 113+, or Firefox/Safari with WebGPU enabled).',
      );
    }
    const adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
    if (!adapter) throw new GpuUnavailableError('WebGPU is present but no GPU adapter was found (blocklisted driver or no GPU).');
    const skip = new Set(options.disableFeatures ?? []);
    const want = ['shader-f16', 'subgroups', 'timestamp-query', 'chromium-experimental-subgroup-matrix'].filter(
      (f) => adapter.features.has(f) && !skip.has(f),
    ) as GPUFeatureName[];
    const requiredLimits: Record<string, number> = {};
    for (const name of LIMIT_NAMES) {
      const v = (adapter.limits as unknown as Record<string, number>)[name];
      if (typeof v === 'number') requiredLimits[name] = v;
    }
    const device = await adapter.requestDevice({ label: 'webtune', requiredFeatures: want, requiredLimits });
    const info = adapter.info as GPUAdapterInfo & {
      subgroupMatrixConfigs?: SubgroupMatrixConfig[];
      subgroupMinSize?: number;
      subgroupMaxSize?: number;
    };
    const has = (f: string) => device.features.has(f);
    const features: GpuFeatures = {
      shaderF16: has('shader-f16'),
      subgroups: has('subgroups'),
      timestampQuery: has('timestamp-query'),
      subgroupMatrix: has('chromium-experimental-subgroup-matrix'),
      subgroupMatrixConfigs: has('chromium-experimental-subgroup-matrix')
        ? [...(info.subgroupMatrixConfigs ?? [])].map((c) => ({
            componentType: c.componentType,
            resultComponentType: c.resultComponentType,
            M: c.M,
            N: c.N,
            K: c.K,
          }))
        : [],
      subgroupMinSize: info.subgroupMinSize ?? 0,
      subgroupMaxSize: info.subgroupMaxSize ?? 0,
      software: (info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter === true || /swiftshader|llvmpipe|lavapipe/i.test(`${info.vendor} ${info.architecture} ${info.device} ${info.description}`),
    };
    const limits = {} as GpuLimits;
    for (const name of LIMIT_NAMES) limits[name] = (device.limits as unknown as Record<string, number>)[name] ?? 0;
    const description: AdapterDescription = {
      vendor: info.vendor ?? '',
      architecture: info.architecture ?? '',
      device: info.device ?? '',
      description: info.description ?? '',
    };
    return new GpuContext(device, description, features, limits);
  }

  summary(): GpuSummary {
    return { adapter: { ...this.adapter }, features: structuredClone(this.features), limits: { ...this.limits } };
  }

  /** Called once if the device is lost (driver reset, GPU taken away, destroy()). */
  onLost(listener: (e: DeviceLostError) => void): () => void {
    this.lostListeners.add(listener);
    if (this.lostError) listener(this.lostError);
    return () => this.lostListeners.delete(listener);
  }

  get isLost(): boolean {
    return this.lostError !== null;
  }

  private assertAlive(): void {
    if (this.lostError) throw this.lostError;
  }

  // ---- tensors ----------------------------------------------------------------------------------

  tensor(label: string, shape: readonly number[], dtype: Exclude<DType, 'q4'> = 'f32'): Tensor {
    this.assertAlive();
    const byteSize = numel(shape) * DTYPE_BYTES[dtype];
    return { label, shape: [...shape], dtype, byteSize, buffer: this.pool.alloc(label, byteSize) };
  }

  /** A tensor of raw bytes (packed quantized weights and other formats with their own layout). */
  rawTensor(label: string, shape: readonly number[], dtype: DType, byteSize: number): Tensor {
    this.assertAlive();
    return { label, shape: [...shape], dtype, byteSize, buffer: this.pool.alloc(label, byteSize) };
  }

  upload(label: string, shape: readonly number[], data: HostArray, dtype?: Exclude<DType, 'q4'>): Tensor {
    const dt = dtype ?? (data instanceof Int32Array ? 'i32' : data instanceof Uint32Array ? 'u32' : data instanceof Uint16Array ? 'f16' : 'f32');
    const t = this.tensor(label, shape, dt);
    if (data.byteLength !== t.byteSize) {
      this.release(t);
      throw new Error(`upload '${label}': ${data.byteLength} bytes of data for shape [${shape.join(', ')}] ${dt} (${t.byteSize} bytes)`);
    }
    this.write(t, data);
    return t;
  }

  write(t: Tensor, data: ArrayBufferView, byteOffset = 0): void {
    this.assertAlive();
    byteOffset += t.byteOffset ?? 0;
    // writeBuffer needs a multiple of 4 bytes; pad odd-sized tails (f16 data of odd length).
    if (data.byteLength % 4 === 0) {
      this.device.queue.writeBuffer(t.buffer, byteOffset, data.buffer, data.byteOffset, data.byteLength);
    } else {
      const padded = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
      padded.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      this.device.queue.writeBuffer(t.buffer, byteOffset, padded);
    }
  }

  release(t: Tensor): void {
    if (t.byteOffset !== undefined) throw new Error(`release '${t.label}': a view is released with the tensor it views`);
    this.pool.release(t.buffer);
  }

  /** A tensor viewing `elements` f32/i32 elements of `base` from element `offset` (256-byte aligned). */
  view(base: Tensor, label: string, shape: readonly number[], offsetElems: number): Tensor {
    const byteOffset = (base.byteOffset ?? 0) + offsetElems * 4;
    const byteSize = numel(shape) * 4;
    if (byteOffset % 256 !== 0) throw new Error(`view '${label}': byte offset ${byteOffset} is not a multiple of 256`);
    if (byteOffset + byteSize > (base.byteOffset ?? 0) + base.byteSize) throw new Error(`view '${label}' runs past the end of '${base.label}'`);
    return { label, buffer: base.buffer, shape: [...shape], dtype: base.dtype, byteSize, byteOffset };
  }

  /** Reads a tensor back to the CPU (never inside a training step: it waits for the queue). */
  async readBytes(t: Tensor, byteOffset = 0, byteLength = t.byteSize - byteOffset): Promise<ArrayBuffer> {
    this.assertAlive();
    byteOffset += t.byteOffset ?? 0;
    const size = Math.ceil(byteLength / 4) * 4;
    const staging = this.device.createBuffer({ label: `readback ${t.label}`, size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    try {
      const enc = this.device.createCommandEncoder({ label: `readback ${t.label}` });
      enc.copyBufferToBuffer(t.buffer, byteOffset, staging, 0, size);
      this.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      return staging.getMappedRange().slice(0, byteLength);
    } finally {
      staging.destroy();
    }
  }

  async read(t: Tensor): Promise<Float32Array>;
  async read(t: Tensor, as: 'i32'): Promise<Int32Array>;
  async read(t: Tensor, as: 'u32'): Promise<Uint32Array>;
  async read(t: Tensor, as?: 'i32' | 'u32'): Promise<Float32Array | Int32Array | Uint32Array> {
    const bytes = await this.readBytes(t);
    const type = as ?? (t.dtype === 'i32' ? 'i32' : t.dtype === 'u32' ? 'u32' : 'f32');
    if (t.dtype === 'f16' || t.dtype === 'q4') throw new Error(`read '${t.label}': ${t.dtype} tensors need a conversion kernel first`);
    return type === 'i32' ? new Int32Array(bytes) : type === 'u32' ? new Uint32Array(bytes) : new Float32Array(bytes);
  }

  /** Fills a tensor's bytes with one 32-bit pattern (tests poison outputs with NaN before a run). */
  fill32(t: Tensor, value: number, as: 'f32' | 'u32' = 'f32'): void {
    const words = Math.ceil(t.byteSize / 4);
    const data = as === 'f32' ? new Float32Array(words).fill(value) : new Uint32Array(words).fill(value);
    this.device.queue.writeBuffer(t.buffer, t.byteOffset ?? 0, data);
  }

  // ---- dispatches -------------------------------------------------------------------------------

  pipeline(spec: PipelineSpec): Promise<GPUComputePipeline> {
    this.assertAlive();
    return this.pipelines.get(spec);
  }

  /** A uniform buffer holding the given 32-bit fields in order (std140-style padding to 16 bytes). */
  uniforms(label: string, fields: readonly UniformField[]): GPUBuffer {
    const size = Math.max(16, Math.ceil((fields.length * 4) / 16) * 16);
    const buffer = this.device.createBuffer({ label, size, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    this.writeUniforms(buffer, fields);
    return buffer;
  }

  writeUniforms(buffer: GPUBuffer, fields: readonly UniformField[]): void {
    const data = new DataView(new ArrayBuffer(buffer.size));
    fields.forEach(([type, v], i) => {
      if (type === 'f32') data.setFloat32(i * 4, v, true);
      else if (type === 'i32') data.setInt32(i * 4, v, true);
      else data.setUint32(i * 4, v, true);
    });
    this.device.queue.writeBuffer(buffer, 0, data.buffer);
  }

  /** A bind group for group 0 of `pipeline`, resources bound at 0, 1, 2... in order. */
  bindGroup(label: string, pipeline: GPUComputePipeline, resources: readonly (GPUBuffer | Tensor | GPUBufferBinding)[]): GPUBindGroup {
    return this.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: resources.map((r, binding) => ({
        binding,
        resource: 'shape' in r ? tensorBinding(r) : 'buffer' in r ? r : { buffer: r },
      })),
    });
  }

  /** Records dispatches into one compute pass (WebGPU orders storage accesses between dispatches). */
  encode(encoder: GPUCommandEncoder, dispatches: readonly KernelDispatch[], passDescriptor?: GPUComputePassDescriptor): void {
    const pass = encoder.beginComputePass(passDescriptor);
    for (const d of dispatches) {
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
    }
    pass.end();
  }

  /**
   * Runs dispatches in one submit and waits for them; validation and out-of-memory errors come back as
   * exceptions naming the dispatches. For tests, tools and one-off work; the trainer records its own.
   */
  async run(dispatches: readonly KernelDispatch[], label = dispatches.map((d) => d.label).join(', ')): Promise<void> {
    this.assertAlive();
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('validation');
    const encoder = this.device.createCommandEncoder({ label });
    this.encode(encoder, dispatches, { label });
    this.device.queue.submit([encoder.finish()]);
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    if (oom) throw new GpuOutOfMemoryError(label, 0, this.pool.liveBytes);
    if (validation) throw new KernelError(label, validation.message);
    await this.device.queue.onSubmittedWorkDone();
    this.assertAlive();
  }

  /**
   * Runs `fn`, which allocates (a model load, a training step plan), under an 'out-of-memory' error scope:
   * a device that refuses a buffer, or the pool's budget, ends it with a GpuOutOfMemoryError naming `what`.
   * When it fails for any reason, the pool buffers it allocated are released again.
   */
  async allocating<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.assertAlive();
    const scope = this.pool.openScope();
    this.device.pushErrorScope('out-of-memory');
    let failure: { error: unknown } | null = null;
    let result: T | undefined;
    try {
      result = await fn();
    } catch (error) {
      failure = { error };
    }
    // A lost device resolves the pop with null; a mismatched stack (someone popped ours) is not ours to report.
    const oom = await this.device.popErrorScope().catch(() => null);
    if (!failure && !oom) {
      scope.commit();
      return result as T;
    }
    scope.rollback();
    const e = failure?.error;
    // The pool's refusal names a buffer ("optimizer params"); say what it was for (an explained error from
    // further down — a subclass — already does).
    if (e instanceof GpuOutOfMemoryError && e.constructor === GpuOutOfMemoryError) throw new GpuOutOfMemoryError(`${what}: ${e.what}`, e.requestedBytes, e.liveBytes, e.budgetBytes);
    if (e instanceof GpuOutOfMemoryError || !oom) throw failure!.error;
    throw new GpuOutOfMemoryError(`${what} (${oom.message || 'the device refused a buffer'})`, 0, this.pool.liveBytes, this.pool.budgetBytes);
  }

  destroy(): void {
    this.pool.trim();
    this.device.destroy();
  }
}
