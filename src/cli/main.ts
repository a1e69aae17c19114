/**
 * The `webtune` command line: the same engine as the app, in Node on whatever WebGPU adapter Dawn finds.
 * Each command lives in its own module and registers here; `main` returns the process exit code.
 */
export interface CliCommand {
  /** One line for `--help`. */
  summary: string;
  /** Full usage text, printed for `<command> --help`. */
  usage: string;
  run(args: string[]): Promise<number>;
}

const commands: Record<string, () => Promise<CliCommand>> = {
  'demo-model': async () => (await import('./demo-model.ts')).demoModelCommand,
  'export-adapter': async () => (await import('./export-adapter.ts')).exportAdapterCommand,
  'export-recipe': async () => (await import('./export-recipe.ts')).exportRecipeCommand,
  merge: async () => (await import('./merge.ts')).mergeCommand,
  'gpu-info': async () => (await import('./gpu-info.ts')).gpuInfoCommand,
  'reference-run': async () => (await import('./reference-run.ts')).referenceRunCommand,
  train: async () => (await import('./train.ts')).trainCommand,
  prepare: async () => (await import('./prepare.ts')).prepareCommand,
  chat: async () => (await import('./chat.ts')).chatCommand,
};

/** Registers a command (used by command modules that are added as features land). */
export function commandNames(): string[] {
  return Object.keys(commands).sort();
}

async function printHelp(): Promise<void> {
  const lines = ['Usage: npm run cli -- <command> [options]', '', 'Commands:'];
  for (const name of commandNames()) lines.push(`  ${name.padEnd(18)} ${(await commands[name]!()).summary}`);
  lines.push('', 'Run `npm run cli -- <command> --help` for the options of one command.');
  console.log(lines.join('\n'));
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    await printHelp();
    return name ? 0 : 1;
  }
  const load = commands[name];
  if (!load) {
    console.error(`webtune: unknown command '${name}'. Known commands: ${commandNames().join(', ')}.`);
    return 2;
  }
  const command = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(command.usage);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    console.error(`webtune ${name}: ${err instanceof Error ? err.message : String(err)}`);
    if (process.env.WEBTUNE_DEBUG) console.error(err);
    return 1;
  }
}
