/**
 * The user's last choices, kept across reloads: the open section, the colour theme, the train form (preset,
 * hyper-parameters, evaluation prompts, memory budget, checkpoint policy). Whatever is stored is checked
 * field by field on load; a value of the wrong kind falls back to the default rather than breaking the page.
 */
import type { TrainConfig } from '../../engine/api.ts';
import { idbKeyValue, type KeyValueStore } from './kv.ts';

/** The colour scheme chosen in the header: follow the system setting, or force one. */
export type ThemeChoice = 'system' | 'light' | 'dark';
export const THEME_CHOICES: readonly ThemeChoice[] = ['system', 'light', 'dark'];

export interface TrainSettings {
  preset: string;
  config: Partial<TrainConfig>;
  evalPrompts: string;
  evalEvery: number;
  /** The GPU memory the plan is checked against, in GiB. */
  budgetGiB: number;
  checkpointEverySteps: number;
  checkpointEveryMinutes: number;
}

export interface AppSettings {
  /** The section shown when the page opens without a #/section in the address. */
  section: string | null;
  /** Light, dark, or following the system's setting. */
  theme: ThemeChoice;
  train: TrainSettings;
}

/** The smallest GPU memory budget the form takes (1 MiB: the demo model trains in a few). */
export const MIN_BUDGET_GIB = 1 / 1024;

export const DEFAULT_TRAIN_SETTINGS: TrainSettings = {
  preset: 'quick',
  config: {},
  evalPrompts: 'Who are you?',
  evalEvery: 4,
  budgetGiB: 8,
  checkpointEverySteps: 50,
  checkpointEveryMinutes: 10,
};

const NUMERIC_CONFIG_KEYS = ['loraRank', 'loraAlpha', 'loraDropout', 'lr', 'warmupRatio', 'epochs', 'maxSteps', 'microBatch', 'gradAccum', 'weightDecay', 'maxGradNorm', 'beta1', 'beta2', 'eps', 'seed', 'lossChunkTokens'] as const;

function cleanConfig(raw: unknown): Partial<TrainConfig> {
  const out: Record<string, unknown> = {};
  if (!raw || typeof raw !== 'object') return {};
  const r = raw as Record<string, unknown>;
  for (const k of NUMERIC_CONFIG_KEYS) if (typeof r[k] === 'number' && Number.isFinite(r[k])) out[k] = r[k];
  if (r.schedule === 'cosine' || r.schedule === 'constant' || r.schedule === 'linear') out.schedule = r.schedule;
  if (r.optimizerOffload === 'gpu' || r.optimizerOffload === 'cpu' || r.optimizerOffload === 'disk') out.optimizerOffload = r.optimizerOffload;
  if (r.matmulPrecision === 'f32' || r.matmulPrecision === 'int8') out.matmulPrecision = r.matmulPrecision;
  if (typeof r.keepAttention === 'boolean') out.keepAttention = r.keepAttention;
  if (Array.isArray(r.targets) && r.targets.every((t) => typeof t === 'string')) out.targets = r.targets;
  return out as Partial<TrainConfig>;
}

/** Stored settings, each field checked; anything missing or malformed takes its default. */
export function cleanSettings(raw: unknown): AppSettings {
  const r = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const t = (r.train && typeof r.train === 'object' ? r.train : {}) as Record<string, unknown>;
  const d = DEFAULT_TRAIN_SETTINGS;
  const num = (v: unknown, fallback: number, min = 0) => (typeof v === 'number' && Number.isFinite(v) && v >= min ? v : fallback);
  return {
    section: typeof r.section === 'string' ? r.section : null,
    theme: THEME_CHOICES.includes(r.theme as ThemeChoice) ? (r.theme as ThemeChoice) : 'system',
    train: {
      preset: typeof t.preset === 'string' ? t.preset : d.preset,
      config: cleanConfig(t.config),
      evalPrompts: typeof t.evalPrompts === 'string' ? t.evalPrompts : d.evalPrompts,
      evalEvery: num(t.evalEvery, d.evalEvery, 1),
      budgetGiB: num(t.budgetGiB, d.budgetGiB, MIN_BUDGET_GIB),
      checkpointEverySteps: num(t.checkpointEverySteps, d.checkpointEverySteps),
      checkpointEveryMinutes: num(t.checkpointEveryMinutes, d.checkpointEveryMinutes),
    },
  };
}

const KEY = 'settings';

export class SettingsStore {
  constructor(private readonly kv: KeyValueStore = idbKeyValue('webtune-settings')) {}

  async load(): Promise<AppSettings> {
    return cleanSettings(await this.kv.get(KEY).catch(() => undefined));
  }

  private queue: Promise<unknown> = Promise.resolve();

  /** Merges a change into the stored settings (saves run one after another, so none is lost). */
  save(patch: { section?: string | null; theme?: ThemeChoice; train?: Partial<TrainSettings> }): Promise<AppSettings> {
    const next = this.queue.catch(() => undefined).then(async () => {
      const cur = await this.load();
      const merged: AppSettings = { section: patch.section !== undefined ? patch.section : cur.section, theme: patch.theme ?? cur.theme, train: { ...cur.train, ...patch.train } };
      await this.kv.set(KEY, merged);
      return merged;
    });
    this.queue = next;
    return next;
  }
}

let shared: SettingsStore | null = null;
/** The page's settings (IndexedDB). */
export function settingsStore(): SettingsStore {
  return (shared ??= new SettingsStore());
}
