/**
 * Summarises a V8 `.cpuprofile` (from `node --cpu-prof`): the functions with the most self time,
 * and optionally the most inclusive time.
 *
 *   node dist/bench/profile-top.js <file.cpuprofile> [--top N] [--filter SUBSTRING]
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileEntry {
  fn: string;
  /** share of the busy (non-idle) samples, % */
  selfPct: number;
  totalPct: number;
  selfMs: number;
}

function frameName(f: CallFrame): string {
  const file = f.url ? f.url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules)\//, '$1/') : '';
  const name = f.functionName || '(anonymous)';
  return file ? `${name} ${file}:${f.lineNumber + 1}` : name;
}

export interface ProfileSummary {
  /** sampled time, ms */
  totalMs: number;
  /** of which the process was idle (waiting in the event loop), ms */
  idleMs: number;
  /** by self time; percentages are of the busy time */
  entries: ProfileEntry[];
}

/** self and inclusive time per function (merged by name + location), sorted by self time */
export function summariseProfile(profile: CpuProfile): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  for (const n of profile.nodes) byId.set(n.id, n);
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let all = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const name = frameName(node.callFrame);
    if (name === '(idle)') {
      idle += us;
      continue;
    }
    all += us;
    self.set(name, (self.get(name) ?? 0) + us);
    // inclusive: each distinct function on the stack once
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur);
      if (!n) break;
      const fn = frameName(n.callFrame);
      if (seen.has(fn)) continue;
      seen.add(fn);
      total.set(fn, (total.get(fn) ?? 0) + us);
    }
  }
  const pct = (us: number) => Math.round((us / Math.max(1, all)) * 1000) / 10;
  const entries = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([fn, us]) => ({
      fn,
      selfPct: pct(us),
      totalPct: pct(total.get(fn) ?? us),
      selfMs: Math.round(us / 1000),
    }));
  return { totalMs: Math.round((all + idle) / 1000), idleMs: Math.round(idle / 1000), entries };
}

export function summariseProfileFile(file: string): ProfileSummary {
  return summariseProfile(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile);
}

function main(argv: string[]): void {
  const file = argv.find((a) => !a.startsWith('--'));
  if (!file) {
    process.stderr.write('usage: node dist/bench/profile-top.js <file.cpuprofile> [--top N] [--filter S]\n');
    process.exitCode = 2;
    return;
  }
  const topIdx = argv.indexOf('--top');
  const top = topIdx >= 0 ? Number(argv[topIdx + 1]) : 25;
  const filterIdx = argv.indexOf('--filter');
  const filter = filterIdx >= 0 ? argv[filterIdx + 1] : undefined;
  const { totalMs, idleMs, entries } = summariseProfileFile(file);
  process.stdout.write(
    `${path.basename(file)}: ${totalMs} ms sampled, ${totalMs - idleMs} ms busy (% of busy)\n self%  total%  function\n`,
  );
  for (const e of entries.filter((x) => !filter || x.fn.includes(filter)).slice(0, top)) {
    process.stdout.write(
      `${e.selfPct.toFixed(1).padStart(6)} ${e.totalPct.toFixed(1).padStart(7)}  ${e.fn}\n`,
    );
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url))
  main(process.argv.slice(2));
