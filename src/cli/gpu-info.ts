import type { CliCommand } from './main.ts';
import { createNodeGpuContext } from '../node/gpu.ts';
import { formatBytes } from '../engine/gpu/errors.ts';

export const gpuInfoCommand: CliCommand = {
  summary: 'show the WebGPU adapter Dawn finds, its features and the limits WebTune gets',
  usage: 'Usage: npm run cli -- gpu-info\n\nPrints the adapter, the optional features (shader-f16, subgroups, subgroup matrices, timestamps) and limits.',
  async run() {
    const ctx = await createNodeGpuContext();
    const { adapter, features, limits } = ctx.summary();
    console.log(`adapter: ${adapter.vendor} ${adapter.architecture} ${adapter.device} ${adapter.description}`.trim());
    console.log(`shader-f16: ${features.shaderF16}  subgroups: ${features.subgroups} (${features.subgroupMinSize}..${features.subgroupMaxSize})  timestamp-query: ${features.timestampQuery}`);
    const configs = features.subgroupMatrixConfigs.map((c) => `${c.componentType}→${c.resultComponentType} ${c.M}×${c.N}×${c.K}`);
    console.log(`subgroup matrices: ${features.subgroupMatrix ? configs.join(', ') || 'feature present, no configs' : 'no'}`);
    for (const [k, v] of Object.entries(limits)) console.log(`${k}: ${k.includes('Size') && v > 65536 ? formatBytes(v) : v}`);
    ctx.destroy();
    return 0;
  },
};
