/**
 * The fuzz suites' one property: a parser given hostile bytes either returns a result (checked by the
 * suite) or throws *our* clear error — one of the typed error classes, or an Error whose message names the
 * file/field — never a TypeError/RangeError from deep inside, never a hang (each case is timed).
 * Each suite prints how many cases it tried.
 */
import fc from 'fast-check';

export interface FuzzOptions<T> {
  name: string;
  cases: number;
  arbitrary: fc.Arbitrary<T>;
  /** Runs the parser; returns normally on success (after checking the result), throws otherwise. */
  run: (input: T) => unknown;
  /** Whether a thrown error is one of ours (a typed error, message naming the file/field). */
  clearError: (err: unknown) => boolean;
  /** A single case slower than this is a failure (a parser must not hang on any input). */
  maxCaseMs?: number;
}

export interface FuzzReport {
  cases: number;
  parsed: number;
  rejected: number;
  crashes: number;
}

/**
 * One finished case into the report: no error → parsed; our clear error → rejected; any other error is a
 * crash and fails the property; so does a case slower than maxCaseMs.
 */
function tally(o: Pick<FuzzOptions<unknown>, 'clearError' | 'maxCaseMs'>, report: FuzzReport, t0: number, failure: { err: unknown } | null): void {
  if (!failure) report.parsed++;
  else if (o.clearError(failure.err)) report.rejected++;
  else {
    report.crashes++;
    throw failure.err;
  }
  const maxMs = o.maxCaseMs ?? 2000;
  const ms = performance.now() - t0;
  if (ms > maxMs) throw new Error(`one case took ${ms.toFixed(0)} ms (limit ${maxMs})`);
}

function printReport(name: string, report: FuzzReport): void {
  console.log(`fuzz ${name}: ${report.cases} cases, ${report.parsed} parsed, ${report.rejected} rejected with a clear error, ${report.crashes} crashes`);
}

/** Synchronous parsers; async ones use fuzzAsync. */
export function fuzz<T>(o: FuzzOptions<T>): FuzzReport {
  const report: FuzzReport = { cases: 0, parsed: 0, rejected: 0, crashes: 0 };
  try {
    fc.assert(
      fc.property(o.arbitrary, (input) => {
        report.cases++;
        const t0 = performance.now();
        let failure: { err: unknown } | null = null;
        try {
          o.run(input);
        } catch (err) {
          failure = { err };
        }
        tally(o, report, t0, failure);
      }),
      { numRuns: o.cases },
    );
  } finally {
    printReport(o.name, report);
  }
  return report;
}

export async function fuzzAsync<T>(o: Omit<FuzzOptions<T>, 'run'> & { run: (input: T) => Promise<unknown> }): Promise<FuzzReport> {
  const report: FuzzReport = { cases: 0, parsed: 0, rejected: 0, crashes: 0 };
  try {
    await fc.assert(
      fc.asyncProperty(o.arbitrary, async (input) => {
        report.cases++;
        const t0 = performance.now();
        let failure: { err: unknown } | null = null;
        try {
          await o.run(input);
        } catch (err) {
          failure = { err };
        }
        tally(o, report, t0, failure);
      }),
      { numRuns: o.cases },
    );
  } finally {
    printReport(o.name, report);
  }
  return report;
}

/** An error of one of `classes` whose message mentions `names` (at least one). Never a bare TypeError/RangeError. */
export function isOurs(classes: readonly (abstract new (...a: never[]) => Error)[], names: readonly string[]): (err: unknown) => boolean {
  return (err) => {
    if (!(err instanceof Error)) return false;
    if (!classes.some((c) => err instanceof c)) return false;
    if (err instanceof TypeError || err instanceof RangeError) return false;
    return names.some((n) => err.message.includes(n));
  };
}

/**
 * Byte-level mutations of a valid input (flips, overwrites with boundary values, truncation, splices,
 * insertions): the way most real file corruption and most hostile edits look.
 */
export function mutatedBytes(seed: Uint8Array): fc.Arbitrary<Uint8Array> {
  const pos = fc.nat({ max: Math.max(0, seed.length - 1) });
  const interesting = fc.constantFrom(0x00, 0xff, 0x7f, 0x80, 0x22, 0x5b, 0x7b, 0x7d, 0x5d, 0x2c, 0x3a, 0x30, 0x39, 0x2d);
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: pos, bit: fc.nat({ max: 7 }) }),
    fc.record({ kind: fc.constant('set' as const), at: pos, value: fc.oneof(interesting, fc.nat({ max: 255 })) }),
    fc.record({ kind: fc.constant('truncate' as const), at: pos }),
    fc.record({ kind: fc.constant('insert' as const), at: pos, bytes: fc.uint8Array({ maxLength: 16 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: pos, n: fc.nat({ max: 16 }) }),
    fc.record({ kind: fc.constant('u64' as const), at: pos, value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  );
  return fc.array(mutation, { minLength: 1, maxLength: 4 }).map((ms) => {
    let b = seed.slice();
    for (const m of ms) {
      const at = Math.min(m.at, Math.max(0, b.length - 1));
      switch (m.kind) {
        case 'flip':
          if (b.length) b[at] = b[at]! ^ (1 << m.bit);
          break;
        case 'set':
          if (b.length) b[at] = m.value;
          break;
        case 'truncate':
          b = b.slice(0, at);
          break;
        case 'insert': {
          const out = new Uint8Array(b.length + m.bytes.length);
          out.set(b.subarray(0, at));
          out.set(m.bytes, at);
          out.set(b.subarray(at), at + m.bytes.length);
          b = out;
          break;
        }
        case 'delete': {
          const cut = Math.min(m.n, b.length - at);
          const out = new Uint8Array(b.length - cut);
          out.set(b.subarray(0, at));
          out.set(b.subarray(at + cut), at);
          b = out;
          break;
        }
        case 'u64':
          if (at + 8 <= b.length) new DataView(b.buffer, b.byteOffset).setBigUint64(at, m.value, true);
          break;
      }
    }
    return b;
  });
}

/** Text-level mutations of a valid JSON document: values replaced by hostile ones at random keys. */
export function hostileJsonValue(): fc.Arbitrary<unknown> {
  return fc.oneof(
    fc.constantFrom(null, true, false, 0, -1, 1, 0.5, -0.5, 1e308, -1e308, 2 ** 53, 2 ** 31, 2 ** 32, 1e9, 1e12, '', 'x', '1', [], {}, [1], { a: 1 }),
    fc.integer(),
    fc.double(),
    fc.string({ maxLength: 8 }),
    fc.array(fc.integer({ min: -5, max: 100000 }), { maxLength: 4 }),
  );
}
