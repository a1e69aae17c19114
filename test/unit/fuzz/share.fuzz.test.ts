/**
 * Adapter imports from strangers: zip archives (mutated, and bombs), PEFT adapters inside them, and GGUF
 * LoRA files either import or fail with our typed error naming the file.
 */
import { readFileSync } from 'node:fs';
import { zipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { bytesSource } from '../../../src/formats/bytes.ts';
import { SafetensorsError } from '../../../src/formats/safetensors.ts';
import { fileSource } from '../../../src/node/files.ts';
import { ModelConfigError, parseModelConfig } from '../../../src/engine/model/config.ts';
import { PeftError, readPeftAdapter } from '../../../src/engine/model/peft.ts';
import { exportAdapterZip, importAdapterZip } from '../../../src/engine/share/adapter-zip.ts';
import { readZip, ZipError } from '../../../src/engine/share/zip.ts';
import { GgufError, loraToGguf, readGguf } from '../../../src/engine/share/gguf.ts';
import { fixturesDir } from '../../helpers/fixtures.ts';
import { fuzz, fuzzAsync, isOurs, mutatedBytes } from './harness.ts';

const spec = parseModelConfig(readFileSync(fixturesDir('llama', 'config.json'), 'utf8'));

async function fixtureAdapter() {
  const dir = fixturesDir('llama', 'adapter_init');
  return readPeftAdapter(readFileSync(`${dir}/adapter_config.json`, 'utf8'), await fileSource(`${dir}/adapter_model.safetensors`), spec);
}

describe('fuzz: adapter imports', () => {
  it('mutated adapter zips: import, or ZipError/PeftError/SafetensorsError naming the archive', async () => {
    const a = await fixtureAdapter();
    const zip = exportAdapterZip({ spec, config: a.config, tensors: a.tensors, training: { dataset: { rows: 3 }, hyperParameters: { lr: 1e-3 }, steps: 2, finalLoss: 1 }, chat: { chatTemplate: '{{ messages }}', stopTokenIds: [2], stopStrings: [] } });
    const r = await fuzzAsync({
      name: 'adapter zip (byte mutations)',
      cases: 600,
      arbitrary: mutatedBytes(zip),
      run: (bytes) => importAdapterZip(bytesSource(bytes, 'adapter.zip'), spec, { maxEntryBytes: 1 << 22, maxTotalBytes: 1 << 23 }),
      clearError: isOurs([ZipError, PeftError, SafetensorsError, ModelConfigError], ['adapter.zip']),
    });
    expect(r.crashes).toBe(0);
  }, 30_000);

  it('zip bombs are refused before inflating: declared sizes over the caps, and entries that inflate past their declaration', async () => {
    const zeros = new Uint8Array(16 << 20); // 16 MiB of zeros deflate to ~16 KiB
    const bomb = zipSync({ 'adapter_model.safetensors': zeros }, { level: 6 });
    expect(bomb.length).toBeLessThan(1 << 20);
    const before = process.memoryUsage().arrayBuffers;
    await expect(readZip(bytesSource(bomb, 'bomb.zip'), { maxEntries: 8, maxEntryBytes: 1 << 20, maxTotalBytes: 1 << 21 })).rejects.toThrow(/bomb.zip: 'adapter_model.safetensors' declares 16.0 MiB uncompressed, over the 1.0 MiB cap per file/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 << 20);
    // An entry that lies about its size (declares 1 KiB, inflates to 16 MiB) is stopped at its declaration.
    const liar = bomb.slice();
    const dv = new DataView(liar.buffer);
    for (let i = liar.length - 22; i >= 0; i--) {
      if (dv.getUint32(i, true) === 0x02014b50) {
        dv.setUint32(i + 24, 1024, true);
        break;
      }
    }
    await expect(readZip(bytesSource(liar, 'liar.zip'))).rejects.toThrow(/liar.zip: 'adapter_model.safetensors': inflates to more than the 1024 bytes it declares \(a zip bomb\?\); stopped/);
    // Too many entries.
    const many = zipSync(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`f${i}`, new Uint8Array(1)])));
    await expect(readZip(bytesSource(many, 'many.zip'))).rejects.toThrow(/many.zip: 300 entries; at most 256 are accepted/);
    console.log('zip bombs: 3 kinds refused (declared size over cap, size lie, entry count)');
  }, 30_000);

  it('mutated GGUF LoRA files: read, or GgufError naming the file', async () => {
    const a = await fixtureAdapter();
    const gguf = loraToGguf(spec, a.config, a.tensors);
    const r = fuzz({
      name: 'gguf (byte mutations)',
      cases: 1500,
      arbitrary: mutatedBytes(gguf),
      run: (bytes) => {
        const g = readGguf(bytes, 'lora.gguf');
        for (const t of g.tensors.values()) expect(t.data.length).toBe(t.shape.reduce((x, y) => x * y, 1));
      },
      clearError: isOurs([GgufError], ['lora.gguf']),
    });
    expect(r.crashes).toBe(0);
  }, 30_000);
});
