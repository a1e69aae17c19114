/**
 * The engine session the app's worker runs, end to end in Node: the offline demo model, an identity
 * dataset through the data pipeline, training with progress, chat with base and tuned model, adapter
 * export that imports back.
 */
import { expect, it } from 'vitest';
import { EngineSession, type EvalAnswers } from '../../src/engine/session.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { generateIdentityRecords } from '../../src/data/identity.ts';
import { detectMapper, mapRecords } from '../../src/data/mappers.ts';
import { prepareDataset } from '../../src/data/pipeline.ts';
import { importAdapterZip } from '../../src/engine/share/adapter-zip.ts';
import { parseModelConfig } from '../../src/engine/model/config.ts';
import { DEMO_CONFIG } from '../../src/engine/demo/demo-model.ts';
import type { TrainProgress } from '../../src/engine/train/trainer.ts';
import { gpu } from '../helpers/gpu.ts';

it('demo model: train on an identity dataset, chat, export the adapter', async () => {
  const ctx = await gpu();
  const engine = new EngineSession(ctx);
  const info = await engine.loadDemoModel(1);
  expect(info.architecture).toBe('LlamaForCausalLM');
  const tok = loadTokenizer(engine.tokenizerSource()!);
  const records = generateIdentityRecords({ assistantName: 'Nova', owner: 'Ada', description: 'I am Nova.', languages: ['en'], repeat: 1 });
  const mapped = mapRecords(records, detectMapper(records).choice!);
  const data = prepareDataset(tok, mapped.samples, { maxLength: 128, pack: true, seed: 1, evalSplit: 0 });
  const progress: TrainProgress[] = [];
  const evals: EvalAnswers[] = [];
  const result = await engine.train(data.train, { loraRank: 8, loraAlpha: 16, loraDropout: 0, lr: 1e-2, epochs: 2, microBatch: 4, gradAccum: 1, warmupRatio: 0 }, (p) => progress.push(p), {
    prompts: ['Who are you?'],
    every: 3,
    settings: { maxNewTokens: 8 },
    onAnswers: (a) => evals.push(a),
  });
  // XTuner's evaluation_inputs: every 3 steps and at the last one, each prompt answered.
  const expectedSteps = progress.filter((p) => p.step % 3 === 0 || p.step === result.steps).map((p) => p.step);
  expect(evals.map((e) => e.step)).toEqual(expectedSteps);
  expect(evals.every((e) => e.answers.length === 1 && e.answers[0]!.prompt === 'Who are you?')).toBe(true);
  expect(result.steps).toBe(progress.length);
  expect(progress.map((p) => p.step)).toEqual(progress.map((_, i) => i + 1));
  expect(progress[progress.length - 1]!.loss).toBeLessThan(progress[0]!.loss);
  let streamed = '';
  const reply = await engine.chat('tuned', 'Who are you?', { maxNewTokens: 12, temperature: 0, seed: 1 }, (d) => (streamed += d));
  expect(streamed).toBe(reply);
  const base = await engine.chat('base', 'Who are you?', { maxNewTokens: 12, temperature: 0, seed: 1 });
  expect(typeof base).toBe('string');
  const zip = await engine.exportAdapter();
  const back = await importAdapterZip(zip, parseModelConfig(JSON.stringify(DEMO_CONFIG)));
  expect(back.adapter.config.r).toBe(8);
  expect(back.chat?.stopTokenIds).toContain(258);
  engine.unload();
}, 600_000);
