import type { TrainConfig } from '../../engine/api.ts';
import type { TrainSettings } from './settings.ts';

/** Presets in the spirit of XTuner's configs. */
export const PRESETS: Record<string, { label: string; config: Partial<TrainConfig> }> = {
  // Sized for the offline demo model on a CPU adapter: 40 steps of 4 rows teach it the identity dataset
  // (loss 7.5 → 0.14, greedy "I am Nova, made by Ada. …"); the LoRA must carry everything the random base lacks.
  // 40 steps of 8 rows (4 × 2 accumulated): on the demo's identity data the greedy answer comes out clean
  // (with 4 rows per step the loss got as low but the answer stayed garbled); ~30 s of training in headless
  // Chromium on SwiftShader (2 CPU cores), 40 s in Node's Dawn, with the CPU-adapter kernels.
  quick: { label: 'Quick test (at most 40 steps)', config: { loraRank: 16, loraAlpha: 32, loraDropout: 0, lr: 2e-2, schedule: 'cosine', epochs: 20, maxSteps: 40, microBatch: 4, gradAccum: 2, warmupRatio: 0 } },
  qlora: { label: 'QLoRA all-linear r=64 (XTuner 1.8B)', config: { loraRank: 64, loraAlpha: 16, loraDropout: 0.1, lr: 2e-4, epochs: 3, microBatch: 1, gradAccum: 16, warmupRatio: 0.03 } },
  low: { label: 'Low memory (r=16, batch 1)', config: { loraRank: 16, loraAlpha: 32, loraDropout: 0.05, lr: 2e-4, epochs: 3, microBatch: 1, gradAccum: 16, warmupRatio: 0.03, optimizerOffload: 'cpu', lossChunkTokens: 256, keepAttention: false } },
};

/** The training config the Train form holds: the preset's values under the user's own changes. */
export function trainConfigOf(s: TrainSettings): Partial<TrainConfig> {
  return { ...(PRESETS[s.preset] ?? PRESETS.quick)!.config, ...s.config };
}
