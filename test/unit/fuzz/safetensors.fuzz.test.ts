/**
 * safetensors from strangers: mutated files and hostile headers either open (and then every tensor reads
 * and converts within the file) or fail with SafetensorsError naming the file.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bytesSource } from '../../../src/formats/bytes.ts';
import { SafetensorsError, SafetensorsFile, nonFiniteValues, writeSafetensors, type SafetensorsDType } from '../../../src/formats/safetensors.ts';
import { fuzzAsync, hostileJsonValue, isOurs, mutatedBytes } from './harness.ts';

const NAME = 'model.safetensors';
const clear = isOurs([SafetensorsError], [NAME]);

function sample(): Uint8Array {
  return writeSafetensors(
    [
      { name: 'a.weight', dtype: 'F32', shape: [3, 4], data: new Float32Array(12).map((_, i) => i / 7) },
      { name: 'b.weight', dtype: 'BF16', shape: [5], data: new Uint16Array([0x3f80, 0x4000, 0xbf80, 0, 0x7f7f]) },
      { name: 'c.bias', dtype: 'F16', shape: [2, 1], data: new Uint16Array([0x3c00, 0xc000]) },
      { name: 'd.ids', dtype: 'I64', shape: [1], data: new BigInt64Array([7n]) },
    ],
    { format: 'pt' },
  );
}

/** Opens and reads every tensor: all of it must be in bounds and convertible. */
async function openAll(bytes: Uint8Array): Promise<void> {
  const f = await SafetensorsFile.open(bytesSource(bytes, NAME), 1 << 20);
  for (const name of f.names) {
    const e = f.entry(name);
    expect(f.dataOffset + e.end).toBeLessThanOrEqual(bytes.length);
    const raw = await f.bytes(name);
    expect(raw.length).toBe(e.end - e.begin);
    if (['F32', 'F16', 'BF16', 'F64'].includes(e.dtype)) {
      expect((await f.float32(name)).length).toBe(e.shape.reduce((a, b) => a * b, 1));
      nonFiniteValues(raw, e.dtype as SafetensorsDType);
    }
  }
}

function withHeader(header: unknown, dataBytes: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

describe('fuzz: safetensors', () => {
  it('mutated files: open and read, or a clear SafetensorsError', async () => {
    const r = await fuzzAsync({ name: 'safetensors (byte mutations)', cases: 1500, arbitrary: mutatedBytes(sample()), run: openAll, clearError: clear });
    expect(r.crashes).toBe(0);
    expect(r.rejected).toBeGreaterThan(0);
  });

  it('hostile headers: any JSON in the header', async () => {
    const entry = fc.record(
      { dtype: fc.oneof(fc.constantFrom('F32', 'F16', 'BF16', 'I8', 'U8', 'BOOL', 'F8', 'f32'), hostileJsonValue()), shape: fc.oneof(fc.array(fc.oneof(fc.nat({ max: 6 }), hostileJsonValue()), { maxLength: 3 }), hostileJsonValue()), data_offsets: fc.oneof(fc.tuple(fc.nat({ max: 40 }), fc.nat({ max: 40 })), hostileJsonValue()) },
      { requiredKeys: [] },
    );
    const header = fc.dictionary(fc.oneof(fc.constantFrom('__metadata__', '__proto__', 'constructor', 'x'), fc.string({ maxLength: 6 })), fc.oneof(entry, hostileJsonValue()), { maxKeys: 5 });
    const r = await fuzzAsync({ name: 'safetensors (hostile headers)', cases: 1500, arbitrary: fc.tuple(header, fc.nat({ max: 48 })), run: ([h, n]) => openAll(withHeader(h, n)), clearError: clear });
    expect(r.crashes).toBe(0);
  });

  it('the named hostile cases each get their own message', async () => {
    const good = sample();
    const open = (b: Uint8Array, max?: number) => SafetensorsFile.open(bytesSource(b, NAME), max);
    const setLen = (n: bigint) => {
      const b = good.slice();
      new DataView(b.buffer).setBigUint64(0, n, true);
      return b;
    };
    await expect(open(setLen(BigInt(good.length)))).rejects.toThrow(`${NAME}: header length ${good.length} runs past the end of the file`);
    await expect(open(setLen(2n ** 63n))).rejects.toThrow(/exceeds the 100000000-byte limit/);
    await expect(open(good, 64)).rejects.toThrow(/exceeds the 64-byte limit/);
    await expect(open(withHeader({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12))).rejects.toThrow(/tensor 'b' overlaps the tensor before it/);
    await expect(open(withHeader({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 4))).rejects.toThrow(/truncated: tensors need 8 bytes of data but the file has 4/);
    await expect(open(withHeader({ a: { dtype: 'F16', shape: [3], data_offsets: [0, 8] } }, 8))).rejects.toThrow(/tensor 'a': 8 bytes of data for shape \[3\] F16, which needs 6/);
    await expect(open(withHeader({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, 8))).rejects.toThrow(/tensor 'a': .*shape/);
  });

  it('finds NaN and ∞ in weights, naming the tensor', async () => {
    const f32 = new Float32Array([1, Number.NaN, 2, Number.POSITIVE_INFINITY]);
    const bytes = writeSafetensors([
      { name: 'ok', dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) },
      { name: 'layers.3.mlp.up_proj.weight', dtype: 'F32', shape: [4], data: f32 },
      { name: 'half', dtype: 'BF16', shape: [3], data: new Uint16Array([0x3f80, 0x7fc0, 0xff80]) },
    ]);
    const f = await SafetensorsFile.open(bytesSource(bytes, NAME));
    expect(nonFiniteValues(await f.bytes('ok'), 'F32')).toEqual({ count: 0, first: -1 });
    expect(nonFiniteValues(await f.bytes('layers.3.mlp.up_proj.weight'), 'F32')).toEqual({ count: 2, first: 1 });
    expect(nonFiniteValues(await f.bytes('half'), 'BF16')).toEqual({ count: 2, first: 1 });
    await expect(f.checkFinite('layers.3.mlp.up_proj.weight')).rejects.toThrow(`${NAME}: tensor 'layers.3.mlp.up_proj.weight' holds 2 values that are NaN or infinite (the first at index 1)`);
    await expect(f.checkFinite('ok')).resolves.toBeUndefined();
  });
});
