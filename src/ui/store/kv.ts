/**
 * Small persistent key-value state for the UI (settings, the runs history): IndexedDB through idb-keyval
 * in the page, a Map in tests. Values are structured-cloned, as IndexedDB stores them.
 */
import { createStore, del, entries, get, set, type UseStore } from 'idb-keyval';

export interface KeyValueStore {
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
  entries<T>(): Promise<Array<[string, T]>>;
}

/** One IndexedDB database per store (idb-keyval opens each database with a single object store). */
export function idbKeyValue(database: string): KeyValueStore {
  let store: UseStore | null = null;
  const s = () => (store ??= createStore(database, 'kv'));
  return {
    get: (key) => get(key, s()),
    set: (key, value) => set(key, value, s()),
    delete: (key) => del(key, s()),
    entries: async <T>() => (await entries<IDBValidKey, T>(s())).map(([k, v]) => [String(k), v] as [string, T]),
  };
}

export function memoryKeyValue(): KeyValueStore & { readonly map: Map<string, unknown> } {
  const map = new Map<string, unknown>();
  return {
    map,
    get: async <T>(key: string) => (map.has(key) ? (structuredClone(map.get(key)) as T) : undefined),
    set: async (key, value) => void map.set(key, structuredClone(value)),
    delete: async (key) => void map.delete(key),
    entries: async <T>() => [...map].map(([k, v]) => [k, structuredClone(v) as T] as [string, T]),
  };
}
