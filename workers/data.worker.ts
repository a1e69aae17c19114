/**
 * The data worker: parses and prepares datasets off the main thread. Exposes a DataSession (the
 * DataWorkerApi of src/data/api.ts) with comlink; prepared rows are transferred, not copied.
 */
import * as Comlink from 'comlink';
import type { DatasetMapping, DataWorkerApi, PreparedResult, PrepareProgress } from '../src/data/api.ts';
import type { PrepareOptions } from '../src/data/pipeline.ts';
import { DataSession, rowBuffers } from '../src/data/session.ts';

class WorkerDataSession extends DataSession {
  override async prepare(mapping: DatasetMapping, options: PrepareOptions, onProgress?: (p: PrepareProgress) => void): Promise<PreparedResult> {
    const r = await super.prepare(mapping, options, onProgress);
    return Comlink.transfer(r, rowBuffers(r));
  }
}

const api: DataWorkerApi = new WorkerDataSession();
Comlink.expose(api);
