import { KernelError } from './errors.ts';
import { preprocess, type Defines } from './preprocess.ts';

/** A WGSL file as the kernel modules import it: its file name (for messages and keys) and its text. */
export interface ShaderSource {
  readonly name: string;
  readonly code: string;
}

/**
 * What makes one compiled pipeline: the file, the entry point, structural defines (preprocessor) and
 * tunable `override` constants. Shapes never belong here: they go in uniforms, so a new sequence length
 * reuses the pipeline.
 */
export interface PipelineSpec {
  shader: ShaderSource;
  entryPoint: string;
  defines?: Defines;
  constants?: Readonly<Record<string, number>>;
}

function keyPart(obj: Readonly<Record<string, unknown>> | undefined): string {
  if (!obj) return '';
  return Object.keys(obj)
    .sort()
    .map((k) => `${k}=${String(obj[k])}`)
    .join(',');
}

/** The cache key, also the pipeline's debug label: `file:entry[defines]{constants}`. */
export function pipelineKey(spec: PipelineSpec): string {
  return `${spec.shader.name}:${spec.entryPoint}[${keyPart(spec.defines)}]{${keyPart(spec.constants)}}`;
}

export class PipelineCache {
  private pipelines = new Map<string, Promise<GPUComputePipeline>>();
  private includes = new Map<string, string>();

  constructor(
    private readonly device: GPUDevice,
    /** Defines every shader sees, describing the device (e.g. SUBGROUPS, F16). */
    private readonly deviceDefines: Defines,
  ) {}

  /** Makes a file available to `#include "name"`. */
  registerInclude(source: ShaderSource): void {
    this.includes.set(source.name, source.code);
  }

  get size(): number {
    return this.pipelines.size;
  }

  /** The WGSL text after preprocessing, as it is compiled. */
  expand(spec: PipelineSpec): string {
    const defines = { ...this.deviceDefines, ...spec.defines };
    return preprocess(spec.shader.code, defines, spec.shader.name, (n) => this.includes.get(n));
  }

  get(spec: PipelineSpec): Promise<GPUComputePipeline> {
    const key = pipelineKey(spec);
    let p = this.pipelines.get(key);
    if (!p) {
      p = this.compile(key, spec);
      this.pipelines.set(key, p);
      // A failed compile is not cached, so a fixed shader (hot reload) or a retry compiles again.
      p.catch(() => this.pipelines.delete(key));
    }
    return p;
  }

  private async compile(key: string, spec: PipelineSpec): Promise<GPUComputePipeline> {
    let code: string;
    try {
      code = this.expand(spec);
    } catch (e) {
      throw new KernelError(key, (e as Error).message);
    }
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ label: key, code });
    const info = await module.getCompilationInfo();
    const scopeError = await this.device.popErrorScope();
    const errors = info.messages.filter((m) => m.type === 'error');
    if (errors.length || scopeError) {
      const lines = code.split('\n');
      const detail = errors
        .map((m) => `${spec.shader.name}:${m.lineNum}:${m.linePos}: ${m.message}\n    ${lines[m.lineNum - 1]?.trim() ?? ''}`)
        .join('\n');
      throw new KernelError(key, `WGSL compilation failed\n${detail || scopeError?.message}`);
    }
    try {
      return await this.device.createComputePipelineAsync({
        label: key,
        layout: 'auto',
        compute: { module, entryPoint: spec.entryPoint, constants: spec.constants ? { ...spec.constants } : {} },
      });
    } catch (e) {
      throw new KernelError(key, `pipeline creation failed: ${(e as Error).message}`);
    }
  }
}
