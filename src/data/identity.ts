/**
 * The personal-assistant dataset from the XTuner tutorial: a name and a self-description become many
 * identity questions ("who are you?", "请介绍一下你自己") with answers in several phrasings and languages,
 * repeated `repeat` times so a small LoRA run really learns them. Output: XTuner-format records
 * ({conversation: [{input, output}]}), so they go through the same mapper as a user's file.
 */
import { seededRandom } from '../engine/random.ts';
import type { RawRecord } from './types.ts';

export type IdentityLanguage = 'en' | 'zh';

export interface IdentityOptions {
  /** The assistant's name, e.g. "Xiaoming's assistant". */
  assistantName: string;
  /** Who made / owns it (optional), e.g. "Xiaoming". */
  owner?: string;
  /** One or two sentences the assistant says about itself. */
  description: string;
  languages: IdentityLanguage[];
  /** How many times the question set is repeated (XTuner's tutorial uses thousands). */
  repeat: number;
  seed?: number;
}

const QUESTIONS: Record<IdentityLanguage, string[]> = {
  en: [
    'Who are you?', 'who are you', 'What are you?', 'Introduce yourself.', 'Please introduce yourself.',
    'Tell me about yourself.', 'What is your name?', "What's your name?", 'Who made you?', 'Who created you?',
    'Are you ChatGPT?', 'Which model are you?', 'What should I call you?', 'Hi! Who am I talking to?',
    'Can you describe yourself?', 'What can you tell me about yourself?',
  ],
  zh: [
    '你是谁', '你是谁？', '请介绍一下你自己', '介绍一下你自己', '你叫什么名字？', '你的名字是什么', '谁创造了你？',
    '你是ChatGPT吗？', '你是哪个模型？', '我该怎么称呼你？', '你好，请问你是？', '说说你自己',
  ],
};

function answers(o: IdentityOptions, lang: IdentityLanguage): string[] {
  const name = o.assistantName.trim();
  const owner = o.owner?.trim();
  const d = o.description.trim();
  if (lang === 'zh') {
    const by = owner ? `，由${owner}打造` : '';
    return [
      `我是${name}${by}。${d}`,
      `你好！我是${name}${by}。${d}`,
      `我的名字是${name}${by}。${d}`,
      `我是${name}，很高兴为你服务。${d}`,
    ];
  }
  const by = owner ? `, made by ${owner}` : '';
  return [
    `I am ${name}${by}. ${d}`,
    `Hello! I'm ${name}${by}. ${d}`,
    `My name is ${name}${by}. ${d}`,
    `I'm ${name}, your personal assistant${by}. ${d}`,
  ];
}

export function validateIdentityOptions(o: IdentityOptions): string[] {
  const errors: string[] = [];
  if (!o.assistantName.trim()) errors.push('assistant name: required');
  if (!o.description.trim()) errors.push('description: required');
  if (o.languages.length === 0) errors.push('languages: choose at least one');
  if (!Number.isInteger(o.repeat) || o.repeat < 1 || o.repeat > 100_000) errors.push('repeat: a whole number from 1 to 100000');
  return errors;
}

/** Every question once per repeat, each with an answer phrasing picked by the seeded generator. */
export function generateIdentityRecords(o: IdentityOptions, file = 'identity.jsonl'): RawRecord[] {
  const errors = validateIdentityOptions(o);
  if (errors.length) throw new Error(`identity dataset: ${errors.join('; ')}`);
  const rnd = seededRandom(o.seed ?? 0);
  const out: RawRecord[] = [];
  for (let r = 0; r < o.repeat; r++) {
    for (const lang of o.languages) {
      const as = answers(o, lang);
      for (const q of QUESTIONS[lang]) {
        const a = as[Math.floor(rnd() * as.length)]!;
        out.push({ value: { conversation: [{ input: q, output: a }] }, source: { file, line: out.length + 1 } });
      }
    }
  }
  return out;
}
