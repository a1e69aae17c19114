/**
 * "Export training recipe": the same run, ready to move to a GPU cluster.
 *
 *   xtuner_config.py   an XTuner config in the style of its QLoRA configs (internlm2_chat_1_8b_qlora_*):
 *                      the same model, LoRA, optimizer, schedule, packing and evaluation prompts, the
 *                      dataset read from the JSONL with openai_map_fn (pretrain_map_fn for raw text)
 *   train_peft.py      a plain transformers + PEFT (+ bitsandbytes) script training the same run
 *   data/train.jsonl   the dataset, one {"messages": [...]} (or {"text": ...}) object per line
 *   README.md          how to run each and bring the adapter back into WebTune
 *
 * Units: WebTune counts optimizer steps; XTuner counts iterations (micro-batches: one optimizer step is
 * `accumulative_counts` of them), so step-based numbers (max steps, evaluation frequency) are converted.
 * Python literals are written with JSON.stringify, whose strings and numbers are valid Python.
 */
import type { ModelFamily } from '../model/config.ts';
import { loraModules, type LoraModule } from '../model/peft.ts';
import { DEFAULT_TRAIN_CONFIG, type TrainConfig } from '../train/trainer.ts';
import type { ChatMessage } from '../../data/types.ts';
import { writeZip } from './zip.ts';

export type RecipeSample = { messages: ChatMessage[] } | { text: string };

export interface RecipeInput {
  /** The Hub id (or a local path) of the base model. */
  modelId: string;
  family: ModelFamily;
  config: Partial<TrainConfig>;
  /** Tokens per (packed) row. */
  maxLength: number;
  /** Pack samples to max_length (XTuner's pack_to_max_length). */
  pack: boolean;
  /** 4-bit base (QLoRA; NF4 with bitsandbytes on the cluster) or a 16-bit base (LoRA). */
  quantize: boolean;
  samples: readonly RecipeSample[];
  evaluation?: { prompts: string[]; every: number };
  /** The chat template used in training: picks XTuner's matching prompt template. */
  chatTemplate?: string | null;
  /** Where the JSONL goes, relative to the configs (default data/train.jsonl). */
  dataPath?: string;
}

/** What the app passes besides the samples (the session knows the model, the template and the last run's config). */
export interface RecipeRunOptions {
  maxLength: number;
  pack: boolean;
  /** The hyper-parameters to export when no run has been trained yet (or to override the last run's). */
  config?: Partial<TrainConfig>;
  evaluation?: { prompts: string[]; every: number };
}

export class RecipeError extends Error {
  override name = 'RecipeError';
}

const py = (v: string | number | boolean | null): string => (v === null ? 'None' : typeof v === 'boolean' ? (v ? 'True' : 'False') : typeof v === 'number' ? pyNumber(v) : JSON.stringify(v));
function pyNumber(n: number): string {
  if (!Number.isFinite(n)) throw new RecipeError(`cannot write ${n} as a Python number`);
  return String(n);
}
const pyList = (xs: readonly (string | number)[]) => `[${xs.map((x) => py(x)).join(', ')}]`;

/** PEFT's LoraConfig keywords, one per line at `indent`: the XTuner config and the PEFT script must agree. */
function loraKwargs(c: Pick<TrainConfig, 'loraRank' | 'loraAlpha' | 'loraDropout'>, targets: readonly string[], indent: number): string {
  const pad = ' '.repeat(indent);
  return [`r=${c.loraRank}`, `lora_alpha=${py(c.loraAlpha)}`, `lora_dropout=${py(c.loraDropout)}`, `target_modules=${pyList(targets)}`, 'bias="none"', 'task_type="CAUSAL_LM"']
    .map((kw) => `${pad}${kw},`)
    .join('\n');
}

/** XTuner's prompt template for the model's chat format (a built-in name, or a dict literal). */
export function xtunerPromptTemplate(family: ModelFamily, chatTemplate: string | null | undefined): { expr: string; note: string } {
  const t = chatTemplate ?? '';
  if (family === 'internlm2') return { expr: 'PROMPT_TEMPLATE.internlm2_chat', note: '' };
  if (family === 'qwen2') return { expr: 'PROMPT_TEMPLATE.qwen_chat', note: '' };
  if (family === 'qwen3') return { expr: 'PROMPT_TEMPLATE.qwen_chat', note: "Qwen3's own template adds an empty <think></think> block to answers; qwen_chat (ChatML) does not." };
  if (t.includes('<|start_header_id|>')) return { expr: 'PROMPT_TEMPLATE.llama3_chat', note: '' };
  if (t.includes('<|im_start|>') || !t) {
    // ChatML (SmolLM2, the demo model): XTuner has no built-in of this name; the same strings as a dict.
    const expr = `dict(
    SYSTEM="<|im_start|>system\\n{system}<|im_end|>\\n",
    INSTRUCTION="<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n",
    SUFFIX="<|im_end|>",
    SUFFIX_AS_EOS=True,
    SEP="\\n",
    STOP_WORDS=["<|im_end|>"],
)`;
    return { expr, note: t ? '' : 'The training template was not recorded; ChatML is assumed.' };
  }
  return { expr: 'PROMPT_TEMPLATE.default', note: 'The chat template used in WebTune has no XTuner equivalent; check prompt_template before training.' };
}

function schedulePy(c: TrainConfig, byIters: boolean): string {
  const unit = byIters ? 'by_epoch=False' : 'by_epoch=True';
  const warmEnd = byIters ? 'warmup_iters' : 'warmup_ratio * max_epochs';
  const end = byIters ? 'max_iters' : 'max_epochs';
  const conv = byIters ? '' : '\n        convert_to_iter_based=True,';
  const warm = `    dict(
        type=LinearLR,
        start_factor=1e-5,
        ${unit},
        begin=0,
        end=${warmEnd},${conv}
    ),`;
  const main =
    c.schedule === 'cosine'
      ? `    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        ${unit},
        begin=${warmEnd},
        end=${end},${conv}
    ),`
      : c.schedule === 'linear'
        ? `    dict(
        type=LinearLR,
        start_factor=1.0,
        end_factor=0.0,
        ${unit},
        begin=${warmEnd},
        end=${end},${conv}
    ),`
        : `    dict(
        type=ConstantLR,
        factor=1.0,
        ${unit},
        begin=${warmEnd},
        end=${end},${conv}
    ),`;
  return `param_scheduler = [\n${warm}\n${main}\n]`;
}

function targetsOf(input: RecipeInput, c: TrainConfig): LoraModule[] {
  return c.targets && c.targets.length > 0 ? c.targets : loraModules(input.family);
}

function checkInput(input: RecipeInput): TrainConfig {
  const c = { ...DEFAULT_TRAIN_CONFIG, ...input.config };
  if (!input.modelId.trim()) throw new RecipeError('the recipe needs the base model id');
  if (!Number.isInteger(input.maxLength) || input.maxLength < 8) throw new RecipeError(`max_length ${input.maxLength}: expected an integer ≥ 8`);
  if (input.samples.length === 0) throw new RecipeError('the dataset is empty: prepare a dataset first');
  for (const [k, v] of Object.entries({ loraRank: c.loraRank, microBatch: c.microBatch, gradAccum: c.gradAccum, epochs: c.epochs })) {
    if (!Number.isInteger(v) || v < 1) throw new RecipeError(`${k} is ${v}: expected a positive integer`);
  }
  return c;
}

/** The dataset as JSONL: one {"messages": [...]} or {"text": "..."} per line. */
export function recipeJsonl(samples: readonly RecipeSample[]): string {
  return samples
    .map((s, i) => {
      if ('text' in s) return JSON.stringify({ text: s.text });
      if (!Array.isArray(s.messages) || s.messages.length === 0) throw new RecipeError(`sample ${i + 1}: no messages`);
      return JSON.stringify({
        messages: s.messages.map((m) => {
          if (typeof m.content !== 'string' || typeof m.role !== 'string') throw new RecipeError(`sample ${i + 1}: a message without role or text content`);
          return typeof m.loss === 'boolean' ? { role: m.role, content: m.content, loss: m.loss } : { role: m.role, content: m.content };
        }),
      });
    })
    .join('\n') + '\n';
}

export function xtunerConfig(input: RecipeInput): string {
  const c = checkInput(input);
  const dataPath = input.dataPath ?? 'data/train.jsonl';
  const chat = input.samples.filter((s) => 'messages' in s).length;
  const text = input.samples.length - chat;
  const tmpl = xtunerPromptTemplate(input.family, input.chatTemplate);
  const byIters = c.maxSteps !== undefined;
  const evalEvery = input.evaluation && input.evaluation.every > 0 ? input.evaluation.every * c.gradAccum : 500;
  const prompts = input.evaluation?.prompts.length ? input.evaluation.prompts : [];
  const targets = targetsOf(input, c);
  const mapImports = [chat > 0 ? 'openai_map_fn' : null, text > 0 ? 'pretrain_map_fn' : null, 'template_map_fn_factory'].filter(Boolean).join(', ');
  const datasetPy = (name: string, mapFn: string, templated: boolean, file: string) => `${name} = dict(
    type=process_hf_dataset,
    dataset=dict(type=load_dataset, path="json", data_files=dict(train=${file})),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=${mapFn},
    template_map_fn=${templated ? 'dict(type=template_map_fn_factory, template=prompt_template)' : 'None'},
    remove_unused_columns=True,
    shuffle_before_pack=True,
    pack_to_max_length=pack_to_max_length,
    use_varlen_attn=use_varlen_attn,
)`;
  // Chat and raw-text samples need different map functions: one dataset each, concatenated.
  const { chatPath, textPath } = splitPaths(dataPath);
  const datasets: string[] = [];
  if (chat > 0) datasets.push(datasetPy('train_chat', 'openai_map_fn', true, 'data_path'));
  if (text > 0) datasets.push(datasetPy('train_text', 'pretrain_map_fn', false, chat > 0 ? 'text_data_path' : 'data_path'));
  const datasetName = chat > 0 && text > 0 ? 'train_dataset' : chat > 0 ? 'train_chat' : 'train_text';
  const concat = chat > 0 && text > 0 ? `\ntrain_dataset = dict(type=ConcatDataset, datasets=[train_chat, train_text])\n` : '';

  return `# XTuner config exported by WebTune: the run trained in the browser, for a GPU cluster.
# Train:   xtuner train xtuner_config.py --deepspeed deepspeed_zero2
# Several GPUs: NPROC_PER_NODE=8 xtuner train xtuner_config.py --deepspeed deepspeed_zero2
# Adapter: xtuner convert pth_to_hf xtuner_config.py work_dirs/xtuner_config/iter_<N>.pth ./adapter
# (WebTune counts optimizer steps; XTuner counts iterations = micro-batches, accumulative_counts per step.)
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (
    CheckpointHook,
    DistSamplerSeedHook,
    IterTimerHook,
    LoggerHook,
    ParamSchedulerHook,
)
from mmengine.optim import AmpOptimWrapper, ConstantLR, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from xtuner.dataset import ConcatDataset, process_hf_dataset
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import ${mapImports}
from xtuner.engine.hooks import DatasetInfoHook, EvaluateChatHook
from xtuner.engine.runner import TrainLoop
from xtuner.model import SupervisedFinetune
from xtuner.utils import PROMPT_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
pretrained_model_name_or_path = ${py(input.modelId)}
use_varlen_attn = False

# Data (${chat} conversations${text ? `, ${text} raw-text documents` : ''}, exported from WebTune)
data_path = ${py(chat > 0 && text > 0 ? chatPath : dataPath)}
${chat > 0 && text > 0 ? `text_data_path = ${py(textPath)}\n` : ''}prompt_template = ${tmpl.expr}${tmpl.note ? `  # ${tmpl.note}` : ''}
max_length = ${input.maxLength}
pack_to_max_length = ${py(input.pack)}

# Scheduler & Optimizer
batch_size = ${c.microBatch}  # per_device
accumulative_counts = ${c.gradAccum}
dataloader_num_workers = 0
${byIters ? `max_iters = ${c.maxSteps! * c.gradAccum}  # ${c.maxSteps} optimizer steps × accumulative_counts\nwarmup_iters = ${Math.round(c.warmupRatio * c.maxSteps! * c.gradAccum)}` : `max_epochs = ${c.epochs}`}
optim_type = AdamW
lr = ${py(c.lr)}
betas = (${py(c.beta1)}, ${py(c.beta2)})
eps = ${py(c.eps)}
weight_decay = ${py(c.weightDecay)}
max_norm = ${py(c.maxGradNorm)}  # grad clip
warmup_ratio = ${py(c.warmupRatio)}
seed = ${c.seed}

# Save
save_steps = 500
save_total_limit = 2  # Maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = ${evalEvery}
SYSTEM = ""
evaluation_inputs = ${pyList(prompts)}

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    trust_remote_code=True,
    padding_side="right",
)

model = dict(
    type=SupervisedFinetune,
    use_varlen_attn=use_varlen_attn,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        trust_remote_code=True,
        torch_dtype=torch.float16,${
          input.quantize
            ? `
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        ),`
            : ''
        }
    ),
    lora=dict(
        type=LoraConfig,
${loraKwargs(c, targets, 8)}
    ),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
${datasets.join('\n\n')}
${concat}
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=${datasetName},
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn, use_varlen_attn=use_varlen_attn),
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
    clip_grad=${c.maxGradNorm > 0 ? 'dict(max_norm=max_norm, error_if_nonfinite=False)' : 'None'},
    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype="float16",
)

# learning policy: linear warmup over warmup_ratio of the run, then ${c.schedule}
${schedulePy(c, byIters)}

train_cfg = dict(type=TrainLoop, ${byIters ? 'max_iters=max_iters' : 'max_epochs=max_epochs'})

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),${
      prompts.length
        ? `
    dict(
        type=EvaluateChatHook,
        tokenizer=tokenizer,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        system=SYSTEM,
        prompt_template=prompt_template,
    ),`
        : ''
    }
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)

visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=seed, deterministic=False)
log_processor = dict(by_epoch=False)
`;
}

export function peftScript(input: RecipeInput): string {
  const c = checkInput(input);
  const dataPath = input.dataPath ?? 'data/train.jsonl';
  const targets = targetsOf(input, c);
  const scheduler = c.schedule === 'cosine' ? 'cosine' : c.schedule === 'linear' ? 'linear' : 'constant_with_warmup';
  const prompts = input.evaluation?.prompts ?? [];
  return `#!/usr/bin/env python3
"""The WebTune run as a plain transformers + PEFT${input.quantize ? ' + bitsandbytes (QLoRA)' : ''} training script.

    pip install "torch>=2.1" "transformers>=4.45" "peft>=0.12" datasets accelerate${input.quantize ? ' bitsandbytes' : ''}
    python train_peft.py                          # one GPU
    torchrun --nproc_per_node 8 train_peft.py     # several GPUs (data parallel)

Writes adapter_config.json + adapter_model.safetensors to --output (import them into WebTune's Share section).
Loss is on assistant turns only (and on every token of raw-text samples), as in WebTune and XTuner.
"""
import argparse
import json
import math

import torch
from peft import LoraConfig, get_peft_model${input.quantize ? ', prepare_model_for_kbit_training' : ''}
from transformers import AutoModelForCausalLM, AutoTokenizer, ${input.quantize ? 'BitsAndBytesConfig, ' : ''}Trainer, TrainingArguments

MODEL = ${py(input.modelId)}
DATA = ${py(dataPath)}
MAX_LENGTH = ${input.maxLength}
PACK = ${py(input.pack)}
EVALUATION_INPUTS = ${pyList(prompts)}
IGNORE = -100


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--data", default=DATA)
    p.add_argument("--output", default="adapter")
    p.add_argument("--max-length", type=int, default=MAX_LENGTH)
    return p.parse_args()


def chat_features(tok, messages, max_length):
    """Tokens of a rendered conversation; labels only on assistant turns (prefix renders find their spans)."""
    ids = tok.apply_chat_template(messages, tokenize=True)
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("loss") is False:
            continue
        start = len(tok.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True))
        end = len(tok.apply_chat_template(messages[: i + 1], tokenize=True))
        labels[start:end] = ids[start:end]
    return ids[:max_length], labels[:max_length]


def text_features(tok, text, max_length):
    ids = tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    return ids[:max_length], list(ids[:max_length])


def load_rows(tok, path, max_length):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "messages" in obj:
                ids, labels = chat_features(tok, obj["messages"], max_length)
            elif "text" in obj:
                ids, labels = text_features(tok, obj["text"], max_length)
            else:
                raise ValueError(f"{path}:{n}: expected a 'messages' or 'text' field")
            if any(l != IGNORE for l in labels):
                rows.append((ids, labels))
    if PACK:
        # Concatenate into rows of max_length tokens (XTuner's pack_to_max_length without varlen attention).
        packed, cur_ids, cur_labels = [], [], []
        for ids, labels in rows:
            if cur_ids and len(cur_ids) + len(ids) > max_length:
                packed.append((cur_ids, cur_labels))
                cur_ids, cur_labels = [], []
            cur_ids, cur_labels = cur_ids + ids, cur_labels + labels
        if cur_ids:
            packed.append((cur_ids, cur_labels))
        rows = packed
    return [{"input_ids": i, "labels": l} for i, l in rows]


def collate(pad_id):
    def fn(batch):
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[r, :k] = torch.tensor(b["input_ids"])
            labels[r, :k] = torch.tensor(b["labels"])
            mask[r, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return fn


def main():
    args = parse_args()
    torch.manual_seed(${c.seed})
    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = load_rows(tok, args.data, args.max_length)
    print(f"{len(rows)} training rows from {args.data}")
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        trust_remote_code=True,
        torch_dtype=dtype,${
          input.quantize
            ? `
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        ),`
            : ''
        }
    )${input.quantize ? '\n    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)' : '\n    model.gradient_checkpointing_enable()\n    model.enable_input_require_grads()'}
    model = get_peft_model(
        model,
        LoraConfig(
${loraKwargs(c, targets, 12)}
        ),
    )
    model.print_trainable_parameters()
    training = TrainingArguments(
        output_dir=args.output + "-checkpoints",
        per_device_train_batch_size=${c.microBatch},
        gradient_accumulation_steps=${c.gradAccum},
        ${c.maxSteps !== undefined ? `max_steps=${c.maxSteps},` : `num_train_epochs=${c.epochs},`}
        learning_rate=${py(c.lr)},
        lr_scheduler_type=${py(scheduler)},
        warmup_ratio=${py(c.warmupRatio)},
        weight_decay=${py(c.weightDecay)},
        max_grad_norm=${py(c.maxGradNorm > 0 ? c.maxGradNorm : 1e9)},
        adam_beta1=${py(c.beta1)},
        adam_beta2=${py(c.beta2)},
        adam_epsilon=${py(c.eps)},
        seed=${c.seed},
        bf16=bf16,
        fp16=not bf16,
        logging_steps=1,
        save_strategy="steps",
        save_steps=500,
        save_total_limit=2,
        report_to=[],
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collate(tok.pad_token_id))
    trainer.train()
    model.save_pretrained(args.output)
    tok.save_pretrained(args.output)
    print(f"adapter saved to {args.output}")
    if EVALUATION_INPUTS:
        model.eval()
        for prompt in EVALUATION_INPUTS:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt").to(model.device)
            out = model.generate(ids, max_new_tokens=128, do_sample=False)
            print(f"> {prompt}\\n{tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)}")


if __name__ == "__main__":
    main()
`;
}

export function recipeReadme(input: RecipeInput): string {
  const c = checkInput(input);
  const chat = input.samples.filter((s) => 'messages' in s).length;
  const tmpl = xtunerPromptTemplate(input.family, input.chatTemplate);
  const steps = c.maxSteps !== undefined ? `${c.maxSteps} optimizer steps` : `${c.epochs} epoch${c.epochs === 1 ? '' : 's'}`;
  return `# Training recipe: ${input.modelId}

Exported by WebTune: the run configured in the browser, ready for a GPU machine or cluster.

| | |
|---|---|
| Base model | \`${input.modelId}\` (${input.quantize ? '4-bit NF4 base: QLoRA' : '16-bit base: LoRA'}) |
| Data | \`data/train.jsonl\`: ${input.samples.length} samples (${chat} conversations${input.samples.length - chat ? `, ${input.samples.length - chat} raw texts` : ''}) |
| Length | max_length ${input.maxLength}, ${input.pack ? 'packed to max_length' : 'not packed'} |
| LoRA | r ${c.loraRank}, alpha ${c.loraAlpha}, dropout ${c.loraDropout}, targets ${targetsOf(input, c).join(', ')} |
| Optimizer | AdamW lr ${c.lr}, betas (${c.beta1}, ${c.beta2}), eps ${c.eps}, weight decay ${c.weightDecay}, grad-norm clip ${c.maxGradNorm || 'off'} |
| Schedule | ${c.schedule} after ${c.warmupRatio * 100}% linear warmup; ${steps}; batch ${c.microBatch} × accumulation ${c.gradAccum}; seed ${c.seed} |

## With XTuner (DeepSpeed ZeRO, several GPUs)

\`\`\`sh
pip install -U 'xtuner[deepspeed]'
xtuner train xtuner_config.py --deepspeed deepspeed_zero2            # one GPU
NPROC_PER_NODE=8 xtuner train xtuner_config.py --deepspeed deepspeed_zero2   # 8 GPUs
xtuner convert pth_to_hf xtuner_config.py work_dirs/xtuner_config/iter_<N>.pth ./adapter
\`\`\`

XTuner counts iterations (micro-batches; ${c.gradAccum} make one optimizer step), so evaluation_freq and
max_iters are WebTune's step numbers × ${c.gradAccum}. Prompt template: \`${tmpl.expr.startsWith('dict') ? 'ChatML (a dict in the config)' : tmpl.expr}\`.${tmpl.note ? ` ${tmpl.note}` : ''}
With several GPUs the global batch grows with the GPU count; lower accumulative_counts to keep it.

## With transformers + PEFT

\`\`\`sh
pip install 'torch>=2.1' 'transformers>=4.45' 'peft>=0.12' datasets accelerate${input.quantize ? ' bitsandbytes' : ''}
python train_peft.py --output adapter
torchrun --nproc_per_node 8 train_peft.py --output adapter
\`\`\`

The script renders each conversation with the model's own chat template and puts the loss on assistant
turns only; packing concatenates samples up to max_length as XTuner does without varlen attention.

## Back into WebTune

Either way you get a folder with \`adapter_config.json\` and \`adapter_model.safetensors\` (PEFT's format).
Zip it or pick the folder in WebTune's **Share → Import adapter** with the same base model loaded, then
chat with it in the Chat section. In the command line:
\`npm run cli -- chat --model <base model folder> --adapter ./adapter\`.
`;
}

/** Where a dataset of both conversations and raw text is split for XTuner (one map function per file). */
function splitPaths(dataPath: string) {
  const base = dataPath.replace(/\.jsonl$/, '');
  return { chatPath: `${base}.chat.jsonl`, textPath: `${base}.text.jsonl` };
}

/** All four files, by path. */
export function buildRecipe(input: RecipeInput): Map<string, string> {
  const dataPath = input.dataPath ?? 'data/train.jsonl';
  const files = new Map<string, string>();
  files.set('xtuner_config.py', xtunerConfig(input));
  files.set('train_peft.py', peftScript(input));
  const chat = input.samples.filter((s) => 'messages' in s);
  const text = input.samples.filter((s) => 'text' in s);
  if (chat.length > 0 && text.length > 0) {
    // XTuner needs one map function per dataset file; the PEFT script reads both kinds from one.
    const { chatPath, textPath } = splitPaths(dataPath);
    files.set(dataPath, recipeJsonl(input.samples));
    files.set(chatPath, recipeJsonl(chat));
    files.set(textPath, recipeJsonl(text));
  } else files.set(dataPath, recipeJsonl(input.samples));
  files.set('README.md', recipeReadme(input));
  return files;
}

/** The recipe as one .zip (for the app's download button). */
export function recipeZip(input: RecipeInput): Uint8Array {
  const enc = new TextEncoder();
  return writeZip(new Map([...buildRecipe(input)].map(([k, v]) => [`training-recipe/${k}`, enc.encode(v)])));
}
