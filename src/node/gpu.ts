/**
 * WebGPU in Node through Dawn (the `webgpu` package): the same engine code as the browser's worker.
 * Not imported by the app bundle.
 */
import { existsSync, readdirSync } from 'node:fs';
import { GpuContext, type GpuContextOptions } from '../engine/gpu/context.ts';
import { GpuUnavailableError } from '../engine/gpu/errors.ts';

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
/** A GPU the kernel exposes: an NVIDIA device node or a DRM render node. */
function hasGpuDevice(): boolean {
  const dev = (d: string, prefix: string) => existsSync(d) && readdirSync(d).some((f) => f.startsWith(prefix));
  return dev('/dev', 'nvidia') || dev('/dev/dri', 'renderD');
}

/**
 * On a machine without a GPU (CI, the dev containers) point the Vulkan loader at SwiftShader, the CPU
 * Vulkan implementation that Debian's chromium ships: Dawn rejects Mesa's CPU driver (lavapipe), which may
 * be installed too. Set WEBTUNE_GPU=swiftshader to force it. Must run before Dawn creates its instance.
 */
export function configureVulkanFallback(): string {
  process.env.XDG_RUNTIME_DIR ??= '/tmp';
  if (process.env.VK_ICD_FILENAMES || process.env.VK_DRIVER_FILES) return 'configured by the environment';
  if (hasGpuDevice() && process.env.WEBTUNE_GPU !== 'swiftshader') return 'system Vulkan drivers';
  if (existsSync(SWIFTSHADER_ICD)) {
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
    return 'SwiftShader (CPU)';
  }
  return 'none found';
}

let gpuPromise: Promise<GPU> | null = null;

/** Dawn's GPU object, created once per process (with unsafe APIs allowed for subgroup matrices). */
export function nodeGpu(): Promise<GPU> {
  gpuPromise ??= (async () => {
    configureVulkanFallback();
    let mod: typeof import('webgpu');
    try {
      mod = await import('webgpu');
    } catch (e) {
      throw new GpuUnavailableError(`cannot load the 'webgpu' package (Dawn for Node): ${(e as Error).message}. Run npm install.`);
    }
    Object.assign(globalThis, mod.globals);
    return mod.create(['enable-dawn-features=allow_unsafe_apis']);
  })();
  return gpuPromise;
}

export async function createNodeGpuContext(options: GpuContextOptions = {}): Promise<GpuContext> {
  const driver = configureVulkanFallback();
  const gpu = await nodeGpu();
  try {
    return await GpuContext.create(gpu, options);
  } catch (e) {
    if (e instanceof GpuUnavailableError) {
      throw new GpuUnavailableError(
        `${e.message} Vulkan driver: ${driver}. Install one: 'apt-get install chromium libvulkan1' provides SwiftShader ` +
          `(${SWIFTSHADER_ICD}), or set VK_ICD_FILENAMES to your GPU's Vulkan ICD.`,
      );
    }
    throw e;
  }
}
