/**
 * Usage text of `smg` and `smg launch`. The launch flag list is generated from the flag table in
 * `config.ts`, so help can never list a flag the parser does not know, or an outdated default.
 */
import { LAUNCH_DEFAULTS, LAUNCH_FLAGS } from './config.js';
import type { FlagGroup, FlagInfo, LaunchKey } from './config.js';

const WIDTH = 100;
const GROUPS: readonly FlagGroup[] = [
  'Workers/server',
  'Routing',
  'Health',
  'Reliability',
  'Admission',
  'Auth',
  'Observability',
  'Mesh',
];

function label(name: string, info: Pick<FlagInfo, 'arity' | 'placeholder'>): string {
  const p = info.placeholder;
  if (info.arity === 'switch' || p === undefined) return `--${name}`;
  return p.endsWith('...') ? `--${name} <${p.slice(0, -3)}>...` : `--${name} <${p}>`;
}

function defaultOf(name: LaunchKey, info: FlagInfo): string | undefined {
  if (info.defaultText !== undefined) return info.defaultText;
  if (info.arity === 'switch') return undefined;
  const value: unknown = (LAUNCH_DEFAULTS as Record<string, unknown>)[name];
  if (Array.isArray(value)) return value.length === 0 ? 'none' : value.join(' ');
  return value === undefined ? 'unset' : String(value);
}

/** `  label   text`, `text` wrapped at WIDTH and indented under itself; `tail` is never split */
function row(left: string, text: string, column: number, tail?: string): string[] {
  const lines: string[] = [];
  let line = left.length + 2 <= column ? `  ${left}`.padEnd(column) : null;
  if (line === null) {
    lines.push(`  ${left}`);
    line = ' '.repeat(column);
  }
  let empty = true;
  const words = text.split(' ');
  if (tail !== undefined) words.push(...(column + tail.length > WIDTH ? tail.split(' ') : [tail]));
  for (const word of words) {
    if (!empty && line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = ' '.repeat(column) + word;
    } else {
      line += (empty ? '' : ' ') + word;
    }
    empty = false;
  }
  lines.push(line);
  return lines;
}

function buildLaunchHelp(): string {
  const names = Object.keys(LAUNCH_FLAGS) as LaunchKey[];
  const column = Math.min(44, Math.max(...names.map((n) => label(n, LAUNCH_FLAGS[n]).length)) + 4);
  const out: string[] = [
    'Usage: smg [launch] [OPTIONS]',
    '',
    'Start the gateway in front of OpenAI-compatible inference workers. Flags use SMG names.',
    'Any flag can also be set in the environment as SMG_<FLAG> (SMG_WORKER_URLS=http://a:8000,',
    'http://b:8000) or as a key of a --config file (worker-urls or worker_urls). Precedence:',
    'command line, then environment, then config file, then defaults. List flags take one or more',
    'values up to the next flag and may be repeated.',
  ];
  for (const group of GROUPS) {
    out.push('', `${group}:`);
    for (const name of names) {
      const info = LAUNCH_FLAGS[name];
      if (info.group !== group) continue;
      const d = defaultOf(name, info);
      out.push(...row(label(name, info), info.help, column, d === undefined ? undefined : `[default: ${d}]`));
    }
  }
  out.push(
    '',
    'Other:',
    ...row('--config <FILE>', 'YAML or JSON file holding any of the settings above', column),
    ...row('-h, --help', 'print this help', column),
    ...row('-V, --version', 'print the version', column),
  );
  return out.join('\n') + '\n';
}

export const LAUNCH_HELP: string = buildLaunchHelp();

export const TOP_HELP: string = [
  'smg - Shepherd Model Gateway: an OpenAI-compatible inference gateway',
  '',
  'Usage: smg [COMMAND] [OPTIONS]',
  '',
  'Commands:',
  '  launch       start the gateway (the default when no command is given)',
  '  mock-worker  start simulated inference engines, for tests, demos and benchmarks',
  '  demo         run a local demo: three mesh peers in front of mock engines',
  '',
  'Options:',
  '  -h, --help     print help (`smg launch --help` lists the gateway flags)',
  '  -V, --version  print the version',
  '',
].join('\n');
