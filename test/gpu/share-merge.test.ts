/**
 * Merged export against PyTorch/PEFT: base + adapter_after_5_steps (make_fixtures.py merges the adapter
 * as it stands after the 5 AdamW steps) → sharded f32 safetensors in memory → loaded back through
 * CheckpointIndex like any HF checkpoint → base-model logits vs the fixture's merged_logits.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bytesSource } from '../../src/formats/bytes.ts';
import { SafetensorsFile, toInt32 } from '../../src/formats/safetensors.ts';
import { fileSource } from '../../src/node/files.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { readPeftAdapter } from '../../src/engine/model/peft.ts';
import { CheckpointIndex } from '../../src/engine/model/weights.ts';
import { loadBaseWeights, releaseBaseWeights } from '../../src/engine/model/base-weights.ts';
import { Transformer } from '../../src/engine/model/transformer.ts';
import { batchFromMask } from '../../src/engine/reference-run.ts';
import { mergeExport } from '../../src/engine/share/merge-export.ts';
import { memorySinks } from '../../src/engine/share/sinks.ts';
import { fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { expectClose } from '../helpers/numeric.ts';

describe('merged export reproduces merged_logits', () => {
  for (const family of ['llama', 'qwen2', 'qwen3'] as const) {
    it(`${family}: sharded f32 merge → CheckpointIndex → logits`, async () => {
      const ctx = await gpu();
      const dir = fixturesDir(family);
      const configJson = readFileSync(`${dir}/config.json`, 'utf8');
      const spec = parseModelConfig(configJson);
      const base = await CheckpointIndex.open(spec, (n) => fileSource(`${dir}/${n}`), ['model.safetensors']);
      const ad = `${dir}/adapter_after_5_steps`;
      const adapter = await readPeftAdapter(readFileSync(`${ad}/adapter_config.json`, 'utf8'), await fileSource(`${ad}/adapter_model.safetensors`), spec);
      const out = memorySinks();
      const res = await mergeExport(base, adapter, out.open, {
        dtype: 'f32',
        maxShardBytes: 300_000, // several shards even for the tiny model
        configJson,
        generationConfigJson: readFileSync(`${dir}/generation_config.json`, 'utf8'),
        passThrough: new Map([['tokenizer_config.json', bytesSource(new TextEncoder().encode('{}'), 'tokenizer_config.json')]]),
      });
      expect(res.shards.length).toBeGreaterThan(1);
      expect([...out.files.keys()].sort()).toEqual([...res.shards, 'config.json', 'generation_config.json', 'model.safetensors.index.json', 'tokenizer_config.json'].sort());
      const merged = await CheckpointIndex.open(parseModelConfig(new TextDecoder().decode(out.files.get('config.json')!)), async (n) => {
        const f = out.files.get(n);
        if (!f) throw new Error(`no ${n}`);
        return bytesSource(f, n);
      }, [...out.files.keys()]);
      expect(merged.unusedTensors).toEqual([]);
      const weights = await loadBaseWeights(ctx, merged, { quantize: false });
      const caseFile = await SafetensorsFile.open(await fileSource(`${dir}/case.safetensors`));
      const ints = async (n: string) => toInt32(await caseFile.bytes(n), caseFile.entry(n).dtype, n);
      const [rows, seq] = caseFile.entry('input_ids').shape as [number, number];
      const plan = await new Transformer(ctx, weights, null).plan({ batch: rows, seq }, 'logits');
      plan.setBatch(batchFromMask(await ints('input_ids'), await ints('attention_mask'), seq));
      await ctx.run(plan.dispatches, 'merged logits');
      const logits = await ctx.read(plan.logits!);
      plan.release();
      releaseBaseWeights(ctx, weights);
      expectClose(logits, await caseFile.float32('merged_logits'), 1e-4, `${family} merged_logits`);
    }, 300_000);
  }
});
