/**
 * Shared helpers of the benchmarks: the machine description recorded in every result, exact
 * percentiles over collected samples, a seeded PRNG and text generator, and result output.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { summariseProfileFile, type ProfileEntry } from './profile-top.js';

export interface BenchOptions {
  /** shrink durations and sizes for a smoke run */
  quick: boolean;
  /** write a V8 CPU profile of the gateway process (proxy and scale benchmarks) */
  profile?: boolean;
}

export interface BenchOutcome {
  /** the JSON written to bench/results/<name>.json */
  result: Record<string, unknown>;
  /** the text after `SUMMARY <name>: ` */
  summary: string;
}

export interface MachineInfo {
  platform: string;
  release: string;
  arch: string;
  cpus: number;
  cpuModel: string;
  totalMemGiB: number;
  node: string;
  hostname: string;
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    platform: os.platform(),
    release: os.release(),
    arch: os.arch(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    totalMemGiB: round(os.totalmem() / 2 ** 30, 2),
    node: process.version,
    hostname: os.hostname(),
  };
}

/** 1, 5 and 15 minute load averages */
export function loadAvg(): number[] {
  return os.loadavg().map((x) => round(x, 2));
}

export function round(x: number, digits = 3): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** nearest-rank percentile (p in 0..100) of an ascending-sorted array; NaN when empty */
export function percentileSorted(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const rank = Math.ceil((p / 100) * n);
  return sorted[Math.min(n - 1, Math.max(0, rank - 1))];
}

export interface Distribution {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** summary of samples (any unit); rounds to `digits` decimals */
export function distribution(samples: ArrayLike<number>, digits = 3): Distribution {
  const sorted = Float64Array.from(samples).sort();
  let sum = 0;
  for (let i = 0; i < sorted.length; i++) sum += sorted[i];
  return {
    count: sorted.length,
    mean: round(sorted.length ? sum / sorted.length : NaN, digits),
    p50: round(percentileSorted(sorted, 50), digits),
    p90: round(percentileSorted(sorted, 90), digits),
    p99: round(percentileSorted(sorted, 99), digits),
    max: round(sorted.length ? sorted[sorted.length - 1] : NaN, digits),
  };
}

export { seededRandom } from '../src/testing/prng.js';

const WORDS = (
  'the of and to in is you that it he was for on are as with his they at be this have from or one had ' +
  'by word but not what all were we when your can said there use an each which she do how their if will ' +
  'up other about out many then them these so some her would make like him into time has look two more ' +
  'write go see number no way could people my than first water been call who oil its now find long down ' +
  'day did get come made may part gateway router worker cache prefix token model latency throughput ' +
  'request response stream batch engine kernel memory tensor layer attention query schedule deploy ' +
  'cluster replica policy balance shard config metric trace error retry timeout budget report'
).split(' ');

/** about `chars` characters of pseudo-English from `rnd` (at least `chars`, cut at `chars`) */
export function randomText(rnd: () => number, chars: number): string {
  const parts: string[] = [];
  let len = 0;
  let sentence = 0;
  while (len < chars) {
    let w = WORDS[Math.floor(rnd() * WORDS.length)];
    if (sentence === 0) w = w[0].toUpperCase() + w.slice(1);
    sentence++;
    if (sentence > 6 && rnd() < 0.15) {
      w += '.';
      sentence = 0;
    } else if (rnd() < 0.01) {
      // an occasional number keeps texts from repeating across seeds
      w += ` ${Math.floor(rnd() * 100000)}`;
    }
    parts.push(w);
    len += w.length + 1;
  }
  return parts.join(' ').slice(0, chars);
}

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
/** bench/ in the source tree, whether this file runs from bench/ (vitest) or dist/bench/ */
export const SOURCE_BENCH_DIR = BENCH_DIR.includes(`${path.sep}dist${path.sep}`)
  ? path.resolve(BENCH_DIR, '../../bench')
  : BENCH_DIR;
export const RESULTS_DIR = process.env.SMG_BENCH_RESULTS ?? path.join(SOURCE_BENCH_DIR, 'results');

export function writeResult(name: string, result: unknown): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}.json`);
  writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  return file;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** progress messages go to stderr so stdout stays JSON + SUMMARY lines */
export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const CLOCK_TICKS = 100; // USER_HZ on Linux

/** whole-machine busy and total CPU ticks from /proc/stat (undefined off Linux) */
function machineTicks(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

/** [ppid, cpu seconds (user + system)] of a process, from /proc/<pid>/stat */
function procStat(pid: number): [number, number] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields[0] is the state (field 3): ppid is field 4, utime / stime are fields 14 / 15
    return [Number(fields[1]), (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS];
  } catch {
    return undefined;
  }
}

/** CPU seconds used so far by a process and its live descendants (e.g. nginx's workers) */
export function procCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const own = procStat(pid);
  if (!own) return NaN;
  let total = own[1];
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return total;
  }
  const children = new Map<number, { ppid: number; cpu: number }>();
  for (const e of entries) {
    const st = procStat(Number(e));
    if (st) children.set(Number(e), { ppid: st[0], cpu: st[1] });
  }
  const tree = new Set([pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [p, st] of children) {
      if (!tree.has(p) && tree.has(st.ppid)) {
        tree.add(p);
        total += st.cpu;
        grew = true;
      }
    }
  }
  return total;
}

/** a memory field of /proc/<pid>/status in kB (VmRSS: resident now, VmHWM: the peak); NaN if gone */
export function procStatusKb(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number {
  if (pid === undefined) return NaN;
  try {
    const m = new RegExp(`${field}:\\s+(\\d+)\\s+kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

export interface CpuWindow {
  wallS: number;
  /** cores busy on the whole machine, averaged over the window (0..cpus) */
  machineBusyCores: number;
  /** cores used by this process (the load generator / benchmark) */
  benchCores: number;
  /** cores used by each named child process */
  procCores: Record<string, number>;
  /** machine busy cores not accounted for by the processes above (other work on the machine) */
  otherCores: number;
  loadAvg1: number;
}

/** measures CPU use over a window: the whole machine, this process and the given child PIDs */
export function cpuWindow(pids: Record<string, number | undefined> = {}): { end(): CpuWindow } {
  const t0 = process.hrtime.bigint();
  const m0 = machineTicks();
  const self0 = process.cpuUsage();
  const p0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, procCpuSeconds(pid)]));
  return {
    end(): CpuWindow {
      const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
      const m1 = machineTicks();
      const self = process.cpuUsage(self0);
      const benchCores = (self.user + self.system) / 1e6 / wallS;
      const procCores: Record<string, number> = {};
      let accounted = benchCores;
      for (const [k, pid] of Object.entries(pids)) {
        const c = (procCpuSeconds(pid) - p0[k]) / wallS;
        procCores[k] = round(c, 2);
        if (Number.isFinite(c)) accounted += c;
      }
      const cpus = os.cpus().length;
      const machineBusyCores =
        m0 && m1 && m1.total > m0.total ? ((m1.busy - m0.busy) / (m1.total - m0.total)) * cpus : NaN;
      return {
        wallS: round(wallS, 2),
        machineBusyCores: round(machineBusyCores, 2),
        benchCores: round(benchCores, 2),
        procCores,
        otherCores: round(Math.max(0, machineBusyCores - accounted), 2),
        loadAvg1: round(os.loadavg()[0], 2),
      };
    },
  };
}

/** common header of every result */
export function resultHeader(name: string, opts: BenchOptions): Record<string, unknown> {
  return {
    benchmark: name,
    quick: opts.quick,
    startedAt: new Date().toISOString(),
    machine: machineInfo(),
    loadAvgBefore: loadAvg(),
  };
}

/** one Prometheus sample */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** parses the Prometheus text format (only the families starting with `prefix`) */
export function parseMetrics(text: string, prefix: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    const brace = line.indexOf('{');
    const space = line.lastIndexOf(' ');
    if (space < 0) continue;
    const name = brace >= 0 && brace < space ? line.slice(0, brace) : line.slice(0, space).trim();
    const labels: Record<string, string> = {};
    if (brace >= 0 && brace < space) {
      const body = line.slice(brace + 1, line.lastIndexOf('}'));
      for (const m of body.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]] = m[2];
    }
    out.push({ name, labels, value: Number(line.slice(space + 1)) });
  }
  return out;
}

/**
 * The `q` quantile of a histogram delta in ms, `buckets` mapping le (seconds) → cumulative count:
 * linear interpolation within the bucket, as Prometheus' histogram_quantile; above the last finite
 * bound, that bound. NaN for an empty histogram.
 */
export function histogramQuantileMs(
  buckets: Map<number, number>,
  count: number,
  q: number,
  digits: number,
): number {
  if (count === 0) return NaN;
  let lo = 0;
  let below = 0;
  for (const le of [...buckets.keys()].sort((a, b) => a - b)) {
    const c = buckets.get(le) ?? 0;
    if (c >= q * count) {
      if (!Number.isFinite(le)) return round(lo * 1000, digits);
      return round((lo + ((q * count - below) / Math.max(1, c - below)) * (le - lo)) * 1000, digits);
    }
    lo = le;
    below = c;
  }
  return NaN;
}

/** where `--profile` puts the gateways' CPU profiles */
export const PROFILE_DIR = path.join(RESULTS_DIR, 'profiles');

/**
 * Runs `spawn` (which starts gateway processes) with the CPU-profiling preload in the environment
 * when `profile` is set: startGatewayProc takes no env, so the preload goes through ours while it
 * spawns, and Node 20 refuses `--cpu-prof` in NODE_OPTIONS (see cpu-profile-hook.ts).
 */
export async function withGatewayProfiling<T>(profile: boolean, spawn: () => Promise<T>): Promise<T> {
  if (!profile) return spawn();
  const saved = { NODE_OPTIONS: process.env.NODE_OPTIONS, SMG_CPU_PROF_DIR: process.env.SMG_CPU_PROF_DIR };
  mkdirSync(PROFILE_DIR, { recursive: true });
  const hook = pathToFileURL(path.join(BENCH_DIR, 'cpu-profile-hook.js')).href;
  process.env.NODE_OPTIONS = `${saved.NODE_OPTIONS ?? ''} --import=${hook}`.trim();
  process.env.SMG_CPU_PROF_DIR = PROFILE_DIR;
  try {
    return await spawn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

export interface GatewayProfile {
  file: string;
  sampledMs: number;
  busyMs: number;
  top: ProfileEntry[];
}

/**
 * The profiles a stopped gateway (`pid`) wrote, oldest first (more than one when it was sent
 * SIGUSR2), summarised.
 */
export function readGatewayProfiles(pid: number | undefined, top = 30): GatewayProfile[] {
  let files: string[];
  try {
    files = readdirSync(PROFILE_DIR)
      .filter((f) => f.startsWith(`smg-${pid}-`) && f.endsWith('.cpuprofile'))
      .map((f) => path.join(PROFILE_DIR, f))
      .sort();
  } catch {
    return [];
  }
  return files.map((file) => {
    const sum = summariseProfileFile(file);
    return { file, sampledMs: sum.totalMs, busyMs: sum.totalMs - sum.idleMs, top: sum.entries.slice(0, top) };
  });
}

/** the last profile a stopped gateway (`pid`) wrote, summarised; undefined when there is none */
export function readGatewayProfile(pid: number | undefined, top = 30): GatewayProfile | undefined {
  return readGatewayProfiles(pid, top).at(-1);
}
