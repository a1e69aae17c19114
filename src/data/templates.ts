/**
 * Built-in chat templates for models whose tokenizer_config.json has none (or for overriding it).
 * Copied from the models' own tokenizer_config.json files on the Hugging Face Hub so that rendering is
 * identical to transformers' apply_chat_template with those models.
 */

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
