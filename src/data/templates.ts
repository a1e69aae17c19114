/**
 * Built-in chat templates for models whose tokenizer_config.json has none (or for overriding it).
 * Copied from the models' own tokenizer_config.json files on the Hugging Face Hub so that rendering is
 * identical to transformers' apply_chat_template with those models.
 */
import { Environment, Interpreter, type Template } from '@huggingface/jinja';

export interface BuiltinTemplate {
  id: string;
  label: string;
  template: string;
}

/** Plain ChatML (Qwen2-style, without a default system prompt). */
const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** internlm/internlm2-chat-1_8b: ChatML after bos_token. */
const INTERNLM2 =
  "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** meta-llama/Llama-2-7b-chat-hf. */
const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}" +
  "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}" +
  "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}" +
  "{% else %}{% set content = message['content'] %}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/** meta-llama/Meta-Llama-3-8B-Instruct. */
const LLAMA3 =
  "{% set loop_messages = messages %}{% for message in loop_messages %}" +
  "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}" +
  "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

export const BUILTIN_TEMPLATES: readonly BuiltinTemplate[] = [
  { id: 'chatml', label: 'ChatML', template: CHATML },
  { id: 'internlm2', label: 'InternLM2 chat', template: INTERNLM2 },
  { id: 'llama2', label: 'Llama-2 chat', template: LLAMA2 },
  { id: 'llama3', label: 'Llama-3 instruct', template: LLAMA3 },
];

export function builtinTemplate(id: string): string {
  const t = BUILTIN_TEMPLATES.find((x) => x.id === id);
  if (!t) throw new Error(`unknown built-in template '${id}' (known: ${BUILTIN_TEMPLATES.map((x) => x.id).join(', ')})`);
  return t.template;
}

/**
 * Limits on one chat-template render. Templates come with downloaded models and can be written by anyone;
 * Jinja has no while loop, but nested `for … in range(n)` loops, self-calling macros or a string doubled in
 * a loop can take minutes or gigabytes. @huggingface/jinja has no timeout, and a synchronous render cannot
 * be interrupted from the same thread, so the render itself is metered: every evaluated node counts one
 * step, every produced string is measured, and `range()` refuses huge lists before allocating them. The
 * limits leave wide headroom (Qwen3's template over a 200-turn conversation renders: test/unit/fuzz/data.fuzz.test.ts),
 * and a runaway template stops within a few seconds even on a slow CPU, with an error saying why.
 */
export interface TemplateLimits {
  /** Evaluated template nodes per render. */
  maxSteps: number;
  /** Longest string (output or intermediate) in characters. */
  maxChars: number;
  /** Items all range() calls of one render may make together (checked before a list is allocated). */
  maxRange: number;
}

export const DEFAULT_TEMPLATE_LIMITS: TemplateLimits = { maxSteps: 250_000, maxChars: 16 * 2 ** 20, maxRange: 100_000 };

export class TemplateLimitError extends Error {
  override name = 'TemplateLimitError';
}

type Statement = Parameters<Interpreter['evaluate']>[0];
type RuntimeValue = ReturnType<Interpreter['evaluate']>;

class MeteredInterpreter extends Interpreter {
  private steps = 0;
  constructor(
    env: Environment,
    private readonly limits: TemplateLimits,
  ) {
    super(env);
  }

  override evaluate(statement: Statement, environment: Environment): RuntimeValue {
    if (++this.steps > this.limits.maxSteps) {
      throw new TemplateLimitError(`the template did not finish within ${this.limits.maxSteps.toLocaleString('en')} steps (a loop too long or a macro calling itself)`);
    }
    const v = super.evaluate(statement, environment);
    if (v.type === 'StringValue' && (v.value as string).length > this.limits.maxChars) {
      throw new TemplateLimitError(`the template produced a string of ${(v.value as string).length.toLocaleString('en')} characters (the limit is ${this.limits.maxChars.toLocaleString('en')})`);
    }
    return v;
  }
}

function strftimeNow(format: string): string {
  const d = new Date();
  const pad2 = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y': return String(d.getFullYear());
      case '%m': return pad2(d.getMonth() + 1);
      case '%d': return pad2(d.getDate());
      case '%b': return new Intl.DateTimeFormat('en', { month: 'short' }).format(d);
      case '%B': return new Intl.DateTimeFormat('en', { month: 'long' }).format(d);
      case '%H': return pad2(d.getHours());
      case '%M': return pad2(d.getMinutes());
      default: return '%';
    }
  });
}

/**
 * Template.render with limits (see TemplateLimits): the same globals @huggingface/jinja sets up
 * (true/false/none, raise_exception, range, strftime_now), then the caller's variables.
 */
export function renderTemplate(template: Template, vars: Record<string, unknown>, limits: TemplateLimits = DEFAULT_TEMPLATE_LIMITS): string {
  const env = new Environment();
  for (const [k, v] of [['false', false], ['true', true], ['none', null], ['False', false], ['True', true], ['None', null]] as const) env.set(k, v);
  env.set('raise_exception', (message: unknown) => {
    throw new Error(String(message));
  });
  let rangeItems = 0;
  env.set('range', (start: number, stop?: number, step = 1) => {
    if (stop === undefined) [start, stop] = [0, start];
    if (step === 0) throw new Error('range() step must not be zero');
    const n = Math.max(0, Math.ceil((stop - start) / step));
    rangeItems += n;
    if (!(rangeItems <= limits.maxRange)) throw new TemplateLimitError(`range() calls asked for ${rangeItems.toLocaleString('en')} items in all (the limit per render is ${limits.maxRange.toLocaleString('en')})`);
    return Array.from({ length: n }, (_, i) => start + i * step);
  });
  env.set('strftime_now', strftimeNow);
  for (const [k, v] of Object.entries(vars)) env.set(k, v);
  const out = new MeteredInterpreter(env, limits).run(template.parsed);
  return out.value as string;
}
