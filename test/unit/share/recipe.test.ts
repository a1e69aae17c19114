import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildRecipe, recipeZip, RecipeError, type RecipeInput } from '../../../src/engine/share/recipe.ts';
import { readZip } from '../../../src/engine/share/zip.ts';
import { bytesSource } from '../../../src/formats/bytes.ts';
import { DEFAULT_TRAIN_CONFIG } from '../../../src/engine/train/trainer.ts';

const tmp = mkdtempSync(join(tmpdir(), 'webtune-recipe-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function hasPython(): boolean {
  try {
    execFileSync('python3', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const samples: RecipeInput['samples'] = [
  { messages: [{ role: 'system', content: 'You are Nova.' }, { role: 'user', content: 'Who are you?' }, { role: 'assistant', content: 'I am "Nova", made by Ada.\nNice to meet you.' }] },
  { messages: [{ role: 'user', content: '你是谁' }, { role: 'assistant', content: '我是 Nova。', loss: true }] },
];

const base: RecipeInput = {
  modelId: 'internlm/internlm2-chat-1_8b',
  family: 'internlm2',
  config: { loraRank: 32, loraAlpha: 64, loraDropout: 0.05, lr: 1e-4, schedule: 'cosine', warmupRatio: 0.05, epochs: 2, microBatch: 2, gradAccum: 8, weightDecay: 0.01, maxGradNorm: 0.5, seed: 7 },
  maxLength: 1024,
  pack: true,
  quantize: true,
  samples,
  evaluation: { prompts: ['Who are you?', '你是谁'], every: 5 },
};

/** A top-level `name = value` line of a generated config (the whole expression on one line). */
const setting = (py: string, name: string) => new RegExp(`^${name} = (.+)$`, 'm').exec(py)?.[1];

describe('export-recipe', () => {
  it('XTuner config carries the run: model, length, packing, optimizer, schedule, LoRA, NF4, evaluation, dataset', () => {
    const files = buildRecipe(base);
    expect([...files.keys()].sort()).toEqual(['README.md', 'data/train.jsonl', 'train_peft.py', 'xtuner_config.py']);
    const x = files.get('xtuner_config.py')!;
    expect(setting(x, 'pretrained_model_name_or_path')).toBe('"internlm/internlm2-chat-1_8b"');
    expect(setting(x, 'max_length')).toBe('1024');
    expect(setting(x, 'pack_to_max_length')).toBe('True');
    expect(setting(x, 'batch_size')).toBe('2  # per_device');
    expect(setting(x, 'accumulative_counts')).toBe('8');
    expect(setting(x, 'max_epochs')).toBe('2');
    expect(setting(x, 'lr')).toBe('0.0001');
    expect(setting(x, 'betas')).toBe('(0.9, 0.999)');
    expect(setting(x, 'weight_decay')).toBe('0.01');
    expect(setting(x, 'max_norm')).toBe('0.5  # grad clip');
    expect(setting(x, 'warmup_ratio')).toBe('0.05');
    expect(setting(x, 'evaluation_freq')).toBe('40'); // 5 optimizer steps × 8 iterations
    expect(setting(x, 'evaluation_inputs')).toBe('["Who are you?", "你是谁"]');
    expect(setting(x, 'prompt_template')).toBe('PROMPT_TEMPLATE.internlm2_chat');
    expect(setting(x, 'data_path')).toBe('"data/train.jsonl"');
    expect(x).toMatch(/r=32,\n\s+lora_alpha=64,\n\s+lora_dropout=0\.05,\n\s+target_modules=\["wqkv", "wo", "w1", "w3", "w2"\],/);
    expect(x).toMatch(/bnb_4bit_quant_type="nf4"/);
    expect(x).toMatch(/dataset=dict\(type=load_dataset, path="json", data_files=dict\(train=data_path\)\)/);
    expect(x).toMatch(/dataset_map_fn=openai_map_fn/);
    expect(x).toMatch(/type=CosineAnnealingLR/);
    expect(x).toMatch(/randomness = dict\(seed=seed/);
    expect(setting(x, 'seed')).toBe('7');
  });

  it('16-bit base, max steps, constant schedule, Llama 3 and ChatML templates', () => {
    const x = buildRecipe({ ...base, modelId: 'meta-llama/Llama-3.2-1B-Instruct', family: 'llama', quantize: false, config: { ...base.config, maxSteps: 30, schedule: 'constant' }, chatTemplate: '{{ "<|start_header_id|>" }}' }).get('xtuner_config.py')!;
    expect(x).not.toMatch(/BitsAndBytesConfig\(|quantization_config/);
    expect(setting(x, 'max_iters')).toBe('240  # 30 optimizer steps × accumulative_counts');
    expect(setting(x, 'warmup_iters')).toBe('12');
    expect(x).toMatch(/train_cfg = dict\(type=TrainLoop, max_iters=max_iters\)/);
    expect(x).toMatch(/type=ConstantLR/);
    expect(setting(x, 'prompt_template')).toBe('PROMPT_TEMPLATE.llama3_chat');
    expect(x).toMatch(/target_modules=\["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"\]/);
    const chatml = buildRecipe({ ...base, family: 'llama', chatTemplate: '<|im_start|>{{ m }}' }).get('xtuner_config.py')!;
    expect(chatml).toMatch(/prompt_template = dict\(\n\s+SYSTEM="<\|im_start\|>system\\n\{system\}<\|im_end\|>\\n",/);
  });

  it('plain PEFT script: same hyper-parameters', () => {
    const p = buildRecipe(base).get('train_peft.py')!;
    for (const s of ['per_device_train_batch_size=2', 'gradient_accumulation_steps=8', 'num_train_epochs=2', 'learning_rate=0.0001', 'lr_scheduler_type="cosine"', 'warmup_ratio=0.05', 'weight_decay=0.01', 'max_grad_norm=0.5', 'adam_beta1=0.9', 'adam_beta2=0.999', 'adam_epsilon=1e-8', 'seed=7', 'r=32', 'lora_alpha=64', 'lora_dropout=0.05', 'target_modules=["wqkv", "wo", "w1", "w3", "w2"]', 'bnb_4bit_quant_type="nf4"', 'MAX_LENGTH = 1024', 'PACK = True', 'MODEL = "internlm/internlm2-chat-1_8b"', 'DATA = "data/train.jsonl"']) {
      expect(p, s).toContain(s);
    }
  });

  it('the dataset is JSONL in the messages format, text intact; a mixed dataset is split for XTuner', () => {
    const files = buildRecipe(base);
    const lines = files.get('data/train.jsonl')!.trimEnd().split('\n').map((l) => JSON.parse(l));
    expect(lines).toEqual(samples.map((s) => s));
    const mixed = buildRecipe({ ...base, samples: [...samples, { text: 'Raw text for continued pretraining.' }] });
    expect([...mixed.keys()].sort()).toEqual(['README.md', 'data/train.chat.jsonl', 'data/train.jsonl', 'data/train.text.jsonl', 'train_peft.py', 'xtuner_config.py']);
    const x = mixed.get('xtuner_config.py')!;
    expect(setting(x, 'data_path')).toBe('"data/train.chat.jsonl"');
    expect(setting(x, 'text_data_path')).toBe('"data/train.text.jsonl"');
    expect(x).toMatch(/dataset_map_fn=pretrain_map_fn/);
    expect(x).toMatch(/train_dataset = dict\(type=ConcatDataset, datasets=\[train_chat, train_text\]\)/);
    expect(mixed.get('data/train.text.jsonl')).toBe('{"text":"Raw text for continued pretraining."}\n');
  });

  it('README says how to run each and how to import the adapter back', () => {
    const r = buildRecipe(base).get('README.md')!;
    expect(r).toMatch(/xtuner train xtuner_config\.py --deepspeed deepspeed_zero2/);
    expect(r).toMatch(/xtuner convert pth_to_hf/);
    expect(r).toMatch(/torchrun --nproc_per_node 8 train_peft\.py/);
    expect(r).toMatch(/Import adapter/);
    expect(r).toMatch(/r 32, alpha 64, dropout 0\.05/);
  });

  it('bad input is refused with the reason', () => {
    expect(() => buildRecipe({ ...base, samples: [] })).toThrow(RecipeError);
    expect(() => buildRecipe({ ...base, maxLength: 3 })).toThrow(/max_length 3/);
    expect(() => buildRecipe({ ...base, config: { gradAccum: 0 } })).toThrow(/gradAccum is 0/);
    expect(() => buildRecipe({ ...base, samples: [{ messages: [] }] })).toThrow(/sample 1: no messages/);
  });

  it('the zip holds the same files', async () => {
    const z = await readZip(bytesSource(recipeZip(base)));
    expect([...z.keys()].sort()).toEqual(['training-recipe/README.md', 'training-recipe/data/train.jsonl', 'training-recipe/train_peft.py', 'training-recipe/xtuner_config.py']);
    expect(new TextDecoder().decode(z.get('training-recipe/xtuner_config.py'))).toBe(buildRecipe(base).get('xtuner_config.py'));
  });

  it.runIf(hasPython())('the generated Python compiles (py_compile), for every family and option', () => {
    const variants: RecipeInput[] = [
      base,
      { ...base, family: 'qwen3', modelId: 'Qwen/Qwen3-1.7B', quantize: false, config: { ...DEFAULT_TRAIN_CONFIG, maxSteps: 10, schedule: 'linear', maxGradNorm: 0 } },
      { ...base, family: 'llama', modelId: 'HuggingFaceTB/SmolLM2-1.7B-Instruct', chatTemplate: '<|im_start|>', evaluation: undefined, samples: [...samples, { text: 'x' }] },
    ];
    variants.forEach((v, i) => {
      for (const [name, text] of buildRecipe(v)) {
        if (!name.endsWith('.py')) continue;
        const f = join(tmp, `${i}-${name}`);
        writeFileSync(f, text);
        execFileSync('python3', ['-m', 'py_compile', f], { stdio: 'pipe' });
      }
    });
  });
});
