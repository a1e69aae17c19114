/**
 * Model math against the PyTorch + transformers + PEFT fixtures (../shared/reference): reference-run
 * computes every output of case.safetensors with our kernels (f32 base) and each is compared here.
 */
import { describe, expect, it } from 'vitest';
import { SafetensorsFile, toFloat32, toInt32 } from '../../src/formats/safetensors.ts';
import { bytesSource } from '../../src/formats/bytes.ts';
import { writeSafetensors } from '../../src/formats/safetensors.ts';
import { fileSource } from '../../src/node/files.ts';
import { directoryAccess } from '../../src/node/fixture-dir.ts';
import { referenceRun } from '../../src/engine/reference-run.ts';
import { FIXTURE_FAMILIES, fixturesDir } from '../helpers/fixtures.ts';
import { gpu } from '../helpers/gpu.ts';
import { expectClose } from '../helpers/numeric.ts';

const INPUTS = new Set(['input_ids', 'labels', 'attention_mask', 'packed_input_ids', 'packed_position_ids', 'greedy_prompt']);

function tolerance(key: string): number {
  if (key.startsWith('grad.') || key === 'adamw_losses') return 1e-3;
  return 1e-4; // logits and loss
}

describe('reference-run matches PyTorch/PEFT', () => {
  for (const family of FIXTURE_FAMILIES) {
    it(`${family}: every output of case.safetensors`, async () => {
      const ctx = await gpu();
      const dir = fixturesDir(family);
      // Through the same writer/reader as the CLI, so the written file is what is checked.
      const written = writeSafetensors(await referenceRun(ctx, directoryAccess(dir)), { format: 'pt' });
      const ours = await SafetensorsFile.open(bytesSource(written, `${family} result`));
      const ref = await SafetensorsFile.open(await fileSource(`${dir}/case.safetensors`));
      const expected = ref.names.filter((k) => !INPUTS.has(k));
      expect(ours.names.sort()).toEqual(expected.sort());
      for (const key of expected) {
        expect(ours.entry(key).shape, key).toEqual(ref.entry(key).shape);
        if (key === 'greedy_output') {
          expect([...toInt32(await ours.bytes(key), ours.entry(key).dtype)], key).toEqual([...toInt32(await ref.bytes(key), ref.entry(key).dtype)]);
          continue;
        }
        expectClose(toFloat32(await ours.bytes(key), ours.entry(key).dtype), await ref.float32(key), tolerance(key), `${family} ${key}`);
      }
    }, 600_000);
  }
});
