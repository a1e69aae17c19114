import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bytesSource, urlSource } from '../../src/formats/bytes.ts';
import { SafetensorsFile, toFloat32, writeSafetensors } from '../../src/formats/safetensors.ts';
import { fileSource } from '../../src/node/files.ts';
import { FIXTURE_FAMILIES, fixturesDir } from '../helpers/fixtures.ts';

function header(obj: unknown): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(obj));
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}
function withData(h: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(h.length + n);
  out.set(h);
  return out;
}

describe('safetensors reader', () => {
  for (const family of FIXTURE_FAMILIES) {
    it(`reads the ${family} fixture model and case`, async () => {
      const model = await SafetensorsFile.open(await fileSource(fixturesDir(family, 'model.safetensors')));
      expect(model.names.length).toBeGreaterThan(10);
      for (const name of model.names) {
        const e = model.entry(name);
        const data = await model.float32(name);
        expect(data.length).toBe(e.shape.reduce((a, b) => a * b, 1));
      }
      const c = await SafetensorsFile.open(await fileSource(fixturesDir(family, 'case.safetensors')));
      expect(c.names).toContain('base_logits');
    });
  }

  it('round-trips what it writes, with metadata', async () => {
    const a = new Float32Array([1, -2, 3.5, 0]);
    const b = new Int32Array([7, 8, 9]);
    const bytes = writeSafetensors(
      [
        { name: 'a', dtype: 'F32', shape: [2, 2], data: a },
        { name: 'b', dtype: 'I32', shape: [3], data: b },
      ],
      { format: 'pt' },
    );
    expect(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8).toBe(0); // data starts 8-aligned
    const f = await SafetensorsFile.open(bytesSource(bytes));
    expect(f.metadata).toEqual({ format: 'pt' });
    expect([...(await f.float32('a'))]).toEqual([...a]);
    expect([...(await f.float32('b'))]).toEqual([7, 8, 9]);
  });

  it('converts F16 and BF16', () => {
    const f16 = new Uint16Array([0x3c00, 0xc000, 0x3555, 0x0001, 0x7c00]);
    const out = toFloat32(new Uint8Array(f16.buffer), 'F16');
    expect(out[0]).toBe(1);
    expect(out[1]).toBe(-2);
    expect(out[2]).toBeCloseTo(0.33325, 4);
    expect(out[3]).toBe(2 ** -24);
    expect(out[4]).toBe(Infinity);
    const bf = new Uint16Array([0x3f80, 0xc040]);
    expect([...toFloat32(new Uint8Array(bf.buffer), 'BF16')]).toEqual([1, -3]);
  });

  const bad: [string, Uint8Array, RegExp][] = [
    ['a file shorter than 8 bytes', new Uint8Array(4), /too short/],
    ['a header length beyond the file', (() => { const h = header({}); new DataView(h.buffer).setBigUint64(0, 1000n, true); return h; })(), /runs past the end/],
    ['a gigantic header length', (() => { const h = header({}); new DataView(h.buffer).setBigUint64(0, 2n ** 40n, true); return h; })(), /exceeds/],
    ['non-JSON', (() => { const h = header({}); h.set(new TextEncoder().encode('{x'), 8); return h; })(), /not valid UTF-8 JSON/],
    ['an unknown dtype', withData(header({ t: { dtype: 'Q9', shape: [1], data_offsets: [0, 4] } }), 4), /tensor 't': unknown dtype/],
    ['a size that does not match the shape', withData(header({ t: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }), 4), /needs 8/],
    ['overlapping tensors', withData(header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }), 8), /overlaps/],
    ['a gap', withData(header({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }), 8), /gap before tensor 'a'/],
    ['a truncated file', withData(header({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }), 10), /truncated/],
    ['trailing bytes', withData(header({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }), 12), /after the last tensor/],
    ['a negative shape', withData(header({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }), 4), /non-negative/],
  ];
  for (const [what, bytes, message] of bad) {
    it(`rejects ${what}, naming the file`, async () => {
      await expect(SafetensorsFile.open(bytesSource(bytes, 'weights.safetensors'))).rejects.toThrow(message);
      await expect(SafetensorsFile.open(bytesSource(bytes, 'weights.safetensors'))).rejects.toThrow(/weights\.safetensors/);
    });
  }

  it('reads the fixture adapter keys PEFT wrote', async () => {
    const f = await SafetensorsFile.open(bytesSource(readFileSync(fixturesDir('llama', 'adapter_init', 'adapter_model.safetensors'))));
    expect(f.names.some((n) => n.endsWith('lora_A.weight'))).toBe(true);
  });
});

describe('urlSource (Range requests)', () => {
  it('streams a safetensors file tensor by tensor through Range reads', async () => {
    const bytes = writeSafetensors([{ name: 'w', dtype: 'F32', shape: [3], data: new Float32Array([1, 2, 3]) }]);
    const ranges: string[] = [];
    const fakeFetch = (async (_url: string, init?: RequestInit) => {
      const range = (init?.headers as Record<string, string> | undefined)?.Range;
      if (init?.method === 'HEAD') return new Response(null, { status: 200, headers: { 'content-length': String(bytes.length) } });
      const [a, b] = /bytes=(\d+)-(\d+)/.exec(range!)!.slice(1).map(Number) as [number, number];
      ranges.push(range!);
      return new Response(bytes.slice(a, b + 1), { status: 206 });
    }) as typeof fetch;
    const f = await SafetensorsFile.open(await urlSource('https://example.invalid/model.safetensors', { fetch: fakeFetch }));
    expect([...(await f.float32('w'))]).toEqual([1, 2, 3]);
    expect(ranges.length).toBe(3); // length, header, one tensor: never the whole file
  });

  it('rejects a server that ignores Range, naming the URL', async () => {
    const fakeFetch = (async () => new Response(new Uint8Array(100), { status: 200 })) as unknown as typeof fetch;
    const src = await urlSource('https://example.invalid/x', { size: 100, fetch: fakeFetch });
    await expect(src.read(10, 5)).rejects.toThrow(/example\.invalid\/x.*partial/);
  });
});
