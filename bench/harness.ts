import { spawnSync } from 'node:child_process';
import type { GpuContext, KernelDispatch } from '../src/engine/gpu/context.ts';
import { PassTimer } from '../src/engine/gpu/timer.ts';
import { PROJECTIONS, type ProjectionKind } from '../src/engine/model/base-weights.ts';

/** One benchmark measurement. flops/bytes are per run, so TFLOP/s and GB/s follow from ms. */
export interface BenchRow {
  name: string;
  ms: number;
  flops?: number;
  bytes?: number;
  note?: string;
}

/**
 * GPU time per run of a sequence of dispatches: `reps` runs recorded back to back in one compute pass
 * (timestamp queries around the pass when available, else submit→onSubmittedWorkDone wall-clock), after
 * a warm-up; the median of `samples` such passes.
 */
export async function timeDispatches(ctx: GpuContext, dispatches: readonly KernelDispatch[], reps = 10, samples = 5): Promise<number> {
  const all = Array.from({ length: reps }, () => dispatches).flat();
  await ctx.run(dispatches); // warm-up (pipeline upload, caches)
  const times: number[] = [];
  const timer = ctx.features.timestampQuery ? new PassTimer(ctx, samples) : null;
  for (let s = 0; s < samples; s++) {
    const encoder = ctx.device.createCommandEncoder();
    const t0 = performance.now();
    ctx.encode(encoder, all, timer?.pass(`sample ${s}`));
    if (timer && s === samples - 1) timer.resolve(encoder);
    ctx.device.queue.submit([encoder.finish()]);
    await ctx.device.queue.onSubmittedWorkDone();
    times.push(performance.now() - t0);
  }
  if (timer) {
    const t = (await timer.read()).map((x) => x.ms);
    timer.destroy();
    // Timestamps can be quantised or disabled by the driver (0); fall back to wall-clock then.
    if (t.every((x) => x > 0)) times.splice(0, times.length, ...t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]! / reps;
}

export function formatTable(rows: readonly BenchRow[]): string {
  const lines = ['| benchmark | ms | TFLOP/s | GB/s | note |', '|---|---:|---:|---:|---|'];
  for (const r of rows) {
    const tf = r.flops ? (r.flops / r.ms / 1e9).toFixed(2) : '';
    const gb = r.bytes ? (r.bytes / r.ms / 1e6).toFixed(0) : '';
    lines.push(`| ${r.name} | ${r.ms.toFixed(3)} | ${tf} | ${gb} | ${r.note ?? ''} |`);
  }
  return lines.join('\n');
}

/**
 * Transformer options from the environment, for the step and gate benches (unset: the engine's defaults):
 * `INT8_RECOMPUTE_RESIDUAL=0|1` whether the int8 path's recomputed forwards carry the residual level
 * (TransformerOptions.int8RecomputeResidual); `KEEP_ATTENTION=0|1` whether training plans keep each
 * layer's attention output for the backward (TransformerOptions.keepAttention); `LORA_PANELS=0|1` whether
 * the adapters' rank-r products run as single-dispatch panels (TransformerOptions.loraPanels).
 */
export function transformerKnobs(): { int8Residual?: boolean | ProjectionKind[]; int8RecomputeResidual?: boolean; keepAttention?: boolean; loraPanels?: boolean } {
  const flag = (name: string) => {
    const v = process.env[name];
    return v === undefined || v === '' ? undefined : v !== '0';
  };
  const residual = flag('INT8_RECOMPUTE_RESIDUAL');
  const keep = flag('KEEP_ATTENTION');
  const panels = flag('LORA_PANELS');
  const kinds = int8ResidualKnob(process.env.INT8_RESIDUAL);
  return {
    ...(kinds === undefined ? {} : { int8Residual: kinds }),
    ...(residual === undefined ? {} : { int8RecomputeResidual: residual }),
    ...(keep === undefined ? {} : { keepAttention: keep }),
    ...(panels === undefined ? {} : { loraPanels: panels }),
  };
}

/** INT8_RESIDUAL: '1' every projection, '0' none, or the kinds that take the residual level ('q,k,v,o,down'). */
export function int8ResidualKnob(v: string | undefined): boolean | ProjectionKind[] | undefined {
  if (v === undefined || v === '') return undefined;
  if (v === '1' || v === '0') return v === '1';
  const kinds = v.split(',').map((k) => k.trim());
  for (const k of kinds) if (!(PROJECTIONS as readonly string[]).includes(k)) throw new Error(`INT8_RESIDUAL: '${k}' is not one of ${PROJECTIONS.join(', ')}`);
  return kinds as ProjectionKind[];
}

/**
 * GPU memory this process holds as nvidia-smi sees it (its buffers plus the driver's context and Dawn's
 * own allocations), in bytes; null where there is no nvidia-smi or it lists no such process (CPU adapters,
 * other vendors).
 */
export function nvidiaSmiProcessBytes(): number | null {
  const r = spawnSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], { encoding: 'utf8' });
  if (r.status !== 0 || typeof r.stdout !== 'string') return null;
  for (const line of r.stdout.split('\n')) {
    const [pid, mib] = line.split(',').map((x) => Number(x.trim()));
    if (pid === process.pid && Number.isFinite(mib)) return mib! * 2 ** 20;
  }
  return null;
}
