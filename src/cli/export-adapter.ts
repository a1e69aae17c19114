import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { CliCommand } from './main.ts';
import { openAdapterDir, openModelDir } from './share-io.ts';
import { exportAdapterZip } from '../engine/share/adapter-zip.ts';
import { loraToGguf, ollamaModelfile } from '../engine/share/gguf.ts';
import { loadTokenizer } from '../data/tokenizer.ts';
import { tokenizerSourceFromFiles } from '../data/tokenizer-files.ts';
import { readTokenizerDir } from './prepare.ts';
import { defaultSystemPrompt } from '../engine/generate/chat.ts';

export const exportAdapterCommand: CliCommand = {
  summary: 'package a PEFT adapter as a shareable zip, a GGUF LoRA (llama.cpp) or an Ollama Modelfile',
  usage: `Usage: npm run cli -- export-adapter --model <dir> --adapter <peft dir> --out <dir> [--format zip|gguf|ollama]

zip:    adapter_config.json + adapter_model.safetensors as PEFT writes them, a model card, the chat
        template and stop tokens (from the model folder's tokenizer files)
gguf:   adapter.gguf for llama.cpp --lora / Ollama ADAPTER (tensor names and q/k permutation as llama.cpp)
ollama: adapter.gguf plus a Modelfile (FROM <base gguf>, ADAPTER, TEMPLATE, stop parameters); --from names the base`,
  async run(args) {
    const { values } = parseArgs({ args, options: { model: { type: 'string' }, adapter: { type: 'string' }, out: { type: 'string' }, format: { type: 'string', default: 'zip' }, from: { type: 'string', default: './base.gguf' } } });
    if (!values.model || !values.adapter || !values.out) throw new Error('needs --model, --adapter and --out; see --help');
    const { spec } = await openModelDir(values.model);
    const adapter = await openAdapterDir(values.adapter, spec);
    const tokenizerSrc = tokenizerSourceFromFiles(readTokenizerDir(values.model), values.model);
    const tok = loadTokenizer(tokenizerSrc);
    const stopStrings = tok.eosTokenIds.map((id) => tok.decode([id], { skipSpecialTokens: false }));
    await mkdir(values.out, { recursive: true });
    switch (values.format) {
      case 'zip': {
        const zip = exportAdapterZip({ spec, config: adapter.config, tensors: adapter.tensors, chat: { chatTemplate: tokenizerSrc.chatTemplate ?? null, stopTokenIds: tok.eosTokenIds, stopStrings } });
        await writeFile(join(values.out, 'adapter.zip'), zip);
        console.log(`wrote ${join(values.out, 'adapter.zip')}`);
        return 0;
      }
      case 'gguf':
      case 'ollama': {
        await writeFile(join(values.out, 'adapter.gguf'), loraToGguf(spec, adapter.config, adapter.tensors));
        console.log(`wrote ${join(values.out, 'adapter.gguf')}`);
        if (values.format === 'ollama') {
          await writeFile(join(values.out, 'Modelfile'), ollamaModelfile({ from: values.from!, adapter: './adapter.gguf', chatTemplate: tok.chatTemplate, family: spec.family, stopStrings, defaultSystem: defaultSystemPrompt(tok) }));
          console.log(`wrote ${join(values.out, 'Modelfile')}`);
        }
        return 0;
      }
      default:
        throw new Error(`--format: '${values.format}' is not zip, gguf or ollama`);
    }
  },
};
