import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { directoryAccess } from '../node/fixture-dir.ts';
import { fileSource } from '../node/files.ts';
import { parseModelConfig, type ModelSpec } from '../engine/model/config.ts';
import { readPeftAdapter, type PeftAdapter } from '../engine/model/peft.ts';

/** A model folder's spec and file access (shared by the export commands). */
export async function openModelDir(dir: string): Promise<{ spec: ModelSpec; configJson: string; io: ReturnType<typeof directoryAccess>; files: string[] }> {
  const configJson = await readFile(join(dir, 'config.json'), 'utf8');
  return { spec: parseModelConfig(configJson, join(dir, 'config.json')), configJson, io: directoryAccess(dir), files: await readdir(dir) };
}

/** A PEFT adapter folder (adapter_config.json + adapter_model.safetensors), validated against the model. */
export async function openAdapterDir(dir: string, spec: ModelSpec): Promise<PeftAdapter> {
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
    if (!existsSync(join(dir, f))) throw new Error(`${dir} is not a PEFT adapter folder: it has no ${f}`);
  }
  return readPeftAdapter(await readFile(join(dir, 'adapter_config.json'), 'utf8'), await fileSource(join(dir, 'adapter_model.safetensors')), spec);
}
