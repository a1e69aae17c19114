import type { GpuContext, KernelDispatch } from '../gpu/context.ts';
import { prepareMatmul } from '../kernels/matmul.ts';
import type { BaseWeights } from './base-weights.ts';
import type { LoraRuntime } from './transformer.ts';

/**
 * Merges the adapter into an f32 base in place: W += s·B·A for every LoRA target (PEFT's
 * merge_and_unload). A 4-bit base is merged while exporting instead (dequantized rows), never in place.
 */
export async function prepareMergeLora(ctx: GpuContext, weights: BaseWeights, lora: LoraRuntime): Promise<KernelDispatch[]> {
  const { layout } = lora;
  const out: KernelDispatch[] = [];
  const view = (flat: typeof lora.params, name: string) => {
    const s = layout.optimizer.slot(name);
    return ctx.view(flat, name, s.shape, s.offset);
  };
  for (const g of layout.groups) {
    const A = view(lora.params, g.aName);
    for (const m of g.members) {
      const p = weights.layers[g.layer]!.proj[m.kind as keyof (typeof weights.layers)[number]['proj']];
      if (p.kind !== 'f32') throw new Error(`merge: layers.${g.layer}.${m.kind} is 4-bit; merge into an f32 copy while exporting`);
      out.push(await prepareMatmul(ctx, view(lora.params, m.bName), A, p.w, { M: p.out, N: p.in, K: layout.rank }, { accumulate: true, alpha: layout.scale }));
    }
  }
  return out;
}
