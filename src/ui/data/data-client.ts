import * as Comlink from 'comlink';
import type { DataWorkerApi } from '../../data/api.ts';

export interface DataClient {
  api: Comlink.Remote<DataWorkerApi>;
  dispose(): void;
}

/** Starts a data worker (one per Data section instance; ended with dispose()). */
export function startDataWorker(): DataClient {
  const worker = new Worker(new URL('../../../workers/data.worker.ts', import.meta.url), { type: 'module', name: 'webtune-data' });
  const api = Comlink.wrap<DataWorkerApi>(worker);
  return {
    api,
    dispose() {
      api[Comlink.releaseProxy]();
      worker.terminate();
    },
  };
}
