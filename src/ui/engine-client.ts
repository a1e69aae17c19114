import * as Comlink from 'comlink';
import type { EngineApi } from '../engine/api.ts';

let engine: Comlink.Remote<EngineApi> | null = null;

/** The engine worker's API, started on first use. One worker per page: it owns the GPU device. */
export function getEngine(): Comlink.Remote<EngineApi> {
  if (!engine) {
    const worker = new Worker(new URL('../../workers/engine.worker.ts', import.meta.url), { type: 'module', name: 'webtune-engine' });
    engine = Comlink.wrap<EngineApi>(worker);
  }
  return engine;
}
