// generation_config.json's eos_token_id list ends replies in the app's chat, as transformers' generate does
// (the chat models whose end-of-turn token is not the tokenizer's eos rely on it), and a malformed one is
// refused naming the file.
import { expect, it } from 'vitest';
import { EngineSession } from '../../src/engine/session.ts';
import { demoModelFiles } from '../../src/engine/demo/demo-model.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { gpu } from '../helpers/gpu.ts';

it('a reply stops at an id of generation_config.json eos_token_id; a malformed file is an error naming it', async () => {
  const ctx = await gpu();
  const engine = new EngineSession(ctx);
  const greedy = { maxNewTokens: 6, temperature: 0, seed: 3 };
  const files = demoModelFiles(1);
  await engine.loadModelFiles(files, { id: 'demo-copy', quantize: false });
  const reply = await engine.chat('base', 'Who are you?', greedy);
  expect(reply.length).toBeGreaterThan(0);
  // The untrained base's first token becomes an eos id: the same greedy reply now ends before it.
  const first = loadTokenizer(engine.tokenizerSource()!).encode(reply, { addSpecialTokens: false })[0]!;
  const withEos = new Map(files);
  withEos.set('generation_config.json', JSON.stringify({ eos_token_id: [258, first] }));
  await engine.loadModelFiles(withEos, { id: 'demo-copy-eos', quantize: false });
  expect(await engine.chat('base', 'Who are you?', greedy)).toBe('');

  const broken = new Map(files);
  broken.set('generation_config.json', JSON.stringify({ eos_token_id: ['</s>'] }));
  await expect(engine.loadModelFiles(broken, { id: 'demo-broken', quantize: false })).rejects.toThrow(/demo-broken\/generation_config\.json: 'eos_token_id'/);
  engine.unload();
}, 300_000);
