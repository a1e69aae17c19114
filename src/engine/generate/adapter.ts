/** A PEFT LoRA adapter on the GPU for generation (unmerged: the base weights are not copied or changed). */
import type { ByteSource } from '../../formats/bytes.ts';
import type { GpuContext } from '../gpu/context.ts';
import { createOptimizerState, releaseOptimizerState } from '../kernels/adamw.ts';
import type { ModelSpec } from '../model/config.ts';
import { LoraLayout } from '../model/lora-layout.ts';
import { readPeftAdapter } from '../model/peft.ts';
import type { LoraRuntime } from '../model/transformer.ts';

/**
 * Reads adapter_config.json + adapter_model.safetensors (as reference-run reads adapter_init) into the flat
 * parameter buffer the transformer and the generator view per matrix. Returns the runtime and its release.
 */
export async function loadLoraAdapter(ctx: GpuContext, spec: ModelSpec, configJson: string, safetensors: ByteSource): Promise<{ lora: LoraRuntime; release(): void }> {
  const adapter = await readPeftAdapter(configJson, safetensors, spec);
  const layout = new LoraLayout(spec, adapter.config);
  // No optimizer moments: generation only reads the parameters.
  const state = createOptimizerState(ctx, layout.optimizer, { residentMoments: false });
  ctx.write(state.params, layout.packPeft(adapter.tensors));
  return { lora: { layout, params: state.params, grads: state.grads }, release: () => releaseOptimizerState(ctx, state) };
}
