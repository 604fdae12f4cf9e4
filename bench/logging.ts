/**
 * Logging benchmark (issue 13, item 3): what the logs cost the gateway, and what a log reader that
 * stops reading costs its memory.
 *
 * 1. Cost: autocannon closed loop (32 connections, the proxy benchmark's non-streaming chat) against
 *    one gateway per logging mode, in turn, on the same mock engine: `--log-level warn` (no request
 *    lines), `info` text (pino-pretty, a line per request), `info --log-json`, and `info` text with
 *    `--log-dir`. stdout goes to /dev/null. Reports req/s and the gateway's CPU (all its threads,
 *    the log transport's worker included) per 1,000 requests.
 * 2. Stalled stdout: a gateway at `--log-level debug` whose stdout pipe is never read, flooded with
 *    log volume — GETs of a 12 KB unknown path, each answered 404 and logged as a ~12 KB line, as
 *    fast as 32 connections go — its RSS sampled every 250 ms; the same run with stdout read is the
 *    reference. Goal: the stalled run's peak RSS at most 64 MiB above the reference (the transport
 *    holds at most 16 MiB per output and 8 MiB in front of its worker, plus its 4 MiB shared
 *    buffer), and the drops reported on stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import autocannon from 'autocannon';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SMG_ENTRY, freePort, startMockFleet, waitFor } from '../src/testing/processes.js';
import { loadAvg, log, resultHeader, round, type BenchOptions, type BenchOutcome } from './common.js';
import { CHAT_BODY, cannon, type LoadRun } from './proxy.js';

const RSS_GOAL_MIB = 64;
/** an unknown path this long makes each 404 a ~12 KB log line (Node takes request lines up to 16 KB) */
const FLOOD_PATH = `/flood/${'x'.repeat(12_000)}`;

/** 32 connections of GETs of FLOOD_PATH for `durationS` */
async function flood(
  url: string,
  durationS: number,
): Promise<{ requests: number; rps: number; bytesLogged: number }> {
  const res = await new Promise<autocannon.Result>((resolve, reject) => {
    autocannon(
      { url: url + FLOOD_PATH, method: 'GET', connections: 32, duration: durationS, timeout: 10 },
      (err: unknown, r: autocannon.Result) =>
        err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(r),
    );
  });
  const requests = res.requests.total;
  return { requests, rps: round(requests / res.duration, 1), bytesLogged: requests * FLOOD_PATH.length };
}

interface Gateway {
  url: string;
  child: ChildProcess;
  /** stderr so far */
  stderr: () => string;
}

function rssMiB(pid: number | undefined): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** `smg launch` with stdout to `stdout` ('ignore' = /dev/null, 'read' = read and dropped, 'stall' = never read) */
async function startGateway(
  worker: string,
  flags: string[],
  stdout: 'ignore' | 'read' | 'stall',
): Promise<Gateway> {
  const port = await freePort();
  const prom = await freePort();
  const args = [
    SMG_ENTRY,
    'launch',
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--prometheus-port',
    String(prom),
    '--policy',
    'round_robin',
    '--worker-urls',
    worker,
    '--shutdown-grace-period-secs',
    '1',
    ...flags,
  ];
  const devNull = stdout === 'ignore' ? openSync('/dev/null', 'w') : undefined;
  const child = spawn(process.execPath, args, { stdio: ['ignore', devNull ?? 'pipe', 'pipe'] });
  if (devNull !== undefined) closeSync(devNull);
  // a stalled reader: the pipe is never read, so it fills and the gateway's writes wait
  if (stdout === 'read') child.stdout?.resume();
  let err = '';
  child.stderr?.on('data', (b: Buffer) => {
    err += b.toString();
    if (err.length > 100_000) err = err.slice(-50_000);
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(
      async () => {
        const r = await fetch(`${url}/readiness`, { signal: AbortSignal.timeout(1000) });
        await r.arrayBuffer();
        return r.status === 200;
      },
      60_000,
      `gateway ${flags.join(' ')}`,
    );
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${(e as Error).message}; exit ${child.exitCode}; stderr: ${err.slice(-2000)}`, {
      cause: e,
    });
  }
  return { url, child, stderr: () => err };
}

async function stop(g: Gateway): Promise<void> {
  if (g.child.exitCode !== null || g.child.signalCode !== null) return;
  const exited = new Promise((r) => g.child.once('exit', r));
  g.child.kill('SIGTERM');
  const t = setTimeout(() => g.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

export async function runLoggingBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('logging', opts);
  const durationS = opts.quick ? 2 : 8;
  const engine = await startMockFleet(1, ['--output-tokens', '8']);
  const logRoot = mkdtempSync(path.join(tmpdir(), 'smg-bench-logs-'));
  const gateways: Gateway[] = [];
  try {
    // 1. cost per logging mode
    const modes: [string, string[]][] = [
      ['warn', ['--log-level', 'warn']],
      ['info-text', ['--log-level', 'info']],
      ['info-json', ['--log-level', 'info', '--log-json']],
      ['info-text+log-dir', ['--log-level', 'info', '--log-dir', path.join(logRoot, 'cost')]],
    ];
    const cost: Record<string, unknown>[] = [];
    for (const [mode, flags] of modes) {
      const g = await startGateway(engine.urls[0], flags, 'ignore');
      gateways.push(g);
      const pids = { smg: g.child.pid, mock: engine.child.pid };
      await cannon(
        { name: mode, url: g.url },
        { connections: 32, durationS: 1, body: CHAT_BODY, mode: 'closed' },
        pids,
      );
      const run: LoadRun = await cannon(
        { name: mode, url: g.url },
        { connections: 32, durationS, body: CHAT_BODY, mode: 'closed' },
        pids,
      );
      const smgCores = run.cpu?.procCores.smg ?? NaN;
      cost.push({
        mode,
        flags,
        rps: run.rps,
        p50Ms: run.latencyMs.p50,
        smgCores,
        smgCpuMsPer1kRequests: round((smgCores * run.durationS * 1e6) / Math.max(1, run.requests), 1),
        non2xx: run.non2xx,
        errors: run.errors,
        cpu: run.cpu,
      });
      log(`logging: ${mode}: ${run.rps} req/s, smg ${smgCores} cores`);
      await stop(g);
    }

    // 2. stalled stdout vs read stdout, at debug level
    const memory: Record<string, unknown>[] = [];
    for (const stdout of ['read', 'stall'] as const) {
      const g = await startGateway(engine.urls[0], ['--log-level', 'debug'], stdout);
      gateways.push(g);
      const samples: number[] = [];
      const sampler = setInterval(() => samples.push(rssMiB(g.child.pid)), 250);
      const before = rssMiB(g.child.pid);
      const run = await flood(g.url, durationS * 2);
      clearInterval(sampler);
      // the drop report comes at most every 10 s: wait for it while the pipe is still stalled
      if (stdout === 'stall')
        await waitFor(async () => /log lines dropped/.test(g.stderr()), 15_000, 'drop report').catch(
          () => undefined,
        );
      const dropped = [...g.stderr().matchAll(/(\d+) log lines dropped/g)].reduce(
        (n, m) => n + Number(m[1]),
        0,
      );
      memory.push({
        stdout,
        requests: run.requests,
        rps: run.rps,
        logMiB: round(run.bytesLogged / 2 ** 20, 1),
        rssBeforeMiB: round(before, 1),
        rssPeakMiB: round(Math.max(...samples.filter(Number.isFinite)), 1),
        rssEndMiB: round(samples.at(-1) ?? NaN, 1),
        droppedLinesReported: dropped,
      });
      log(
        `logging: debug, stdout ${stdout}: ${run.requests} requests, peak RSS ${memory.at(-1)?.rssPeakMiB} MiB`,
      );
      // a stalled reader may keep the gateway from flushing at exit: its close is bounded
      await stop(g);
    }
    const [read, stalled] = memory as { rssPeakMiB: number; droppedLinesReported: number; logMiB: number }[];
    const extra = round(stalled.rssPeakMiB - read.rssPeakMiB, 1);
    const byMode = Object.fromEntries(cost.map((c) => [c.mode as string, c]));
    const rps = (m: string) => (byMode[m] as { rps: number }).rps;
    const result = {
      ...header,
      params: { durationS, connections: 32, body: 'proxy CHAT_BODY', rssGoalMiB: RSS_GOAL_MIB },
      cost,
      memory,
      derived: {
        infoTextRpsOverWarn: round(rps('info-text') / rps('warn'), 3),
        infoJsonRpsOverWarn: round(rps('info-json') / rps('warn'), 3),
        logDirRpsOverInfoText: round(rps('info-text+log-dir') / rps('info-text'), 3),
        stalledExtraRssMiB: extra,
        stalledWithinGoal: extra <= RSS_GOAL_MIB,
        stalledDropsReported: stalled.droppedLinesReported > 0,
      },
      loadAvgAfter: loadAvg(),
    };
    const summary =
      `req/s warn ${rps('warn')}, info text ${rps('info-text')}, info json ${rps('info-json')}, ` +
      `+log-dir ${rps('info-text+log-dir')}; ${stalled.logMiB} MiB of log lines to a stalled stdout: peak RSS ${stalled.rssPeakMiB} MiB ` +
      `vs ${read.rssPeakMiB} MiB read (+${extra} MiB, goal ≤ ${RSS_GOAL_MIB}), ` +
      `${stalled.droppedLinesReported} lines dropped and reported`;
    return { result, summary };
  } finally {
    for (const g of gateways) await stop(g);
    await engine.stop();
    rmSync(logRoot, { recursive: true, force: true });
  }
}
