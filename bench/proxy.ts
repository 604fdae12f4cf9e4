/**
 * Proxy overhead benchmark (budget a): one mock engine with no delays, measured
 *   - directly,
 *   - through smg (`--policy round_robin`, one worker, `--log-level warn`),
 *   - through nginx proxying the same engine (when nginx can be had),
 * with the same load generator running in this process:
 *   1. closed loop: autocannon, 32 connections, non-streaming chat (~200 B body);
 *   2. fixed rate 1,000 req/s, paced: undici, one request every 1 ms (open loop, 16 keep-alive
 *      connections); latency from send to the end of the body, so smg − direct is the latency the
 *      gateway adds;
 *   3. fixed rate with autocannon `overallRate: 1000` (16 connections). autocannon meets a rate by
 *      sending each connection's per-second quota back to back at the start of every second, so
 *      these latencies are those of 16-way bursts; kept for comparison with (2);
 *   4. closed loop streaming (SSE, `stream: true` with usage), 32 connections.
 * Each measured run follows a warm-up run on the same target. Latencies are exact (per response,
 * from autocannon's `response` event or our own timer), in ms.
 */
import autocannon from 'autocannon';
import { Pool } from 'undici';
import { freePort, startGatewayProc, startMockFleet, stopAll, type Proc } from '../src/testing/processes.js';
import {
  cpuWindow,
  distribution,
  log,
  loadAvg,
  readGatewayProfile,
  resultHeader,
  round,
  sleep,
  withGatewayProfiling,
  type BenchOptions,
  type BenchOutcome,
  type CpuWindow,
} from './common.js';
import { findNginx, startNginx, type NginxProc } from './nginx.js';

const CHAT_PATH = '/v1/chat/completions';
const MODEL = 'mock-model';

export const CHAT_BODY = JSON.stringify({
  model: MODEL,
  messages: [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'Write one short sentence about load balancing LLM inference traffic.' },
  ],
  max_tokens: 8,
});

export const STREAM_BODY = JSON.stringify({
  model: MODEL,
  messages: [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'Write one short sentence about load balancing LLM inference traffic.' },
  ],
  max_tokens: 8,
  stream: true,
  stream_options: { include_usage: true },
});

export interface LoadRun {
  target: string;
  mode: 'closed' | 'rate-paced' | 'rate-autocannon' | 'stream';
  connections: number;
  durationS: number;
  /** requested rate for the fixed-rate modes */
  rate?: number;
  requests: number;
  rps: number;
  latencyMs: { mean: number; p50: number; p90: number; p99: number; max: number };
  errors: number;
  timeouts: number;
  non2xx: number;
  /** paced mode: how late the generator sent requests relative to the schedule, ms */
  sendLagMs?: { p50: number; p99: number; max: number };
  cpu: CpuWindow;
}

export interface Target {
  name: string;
  url: string;
}

export type Pids = Record<string, number | undefined>;

function latencySummary(samples: number[]) {
  const d = distribution(samples, 3);
  return { mean: d.mean, p50: d.p50, p90: d.p90, p99: d.p99, max: d.max };
}

/** autocannon against `url`: closed loop, or autocannon's own rate limiting when `overallRate` is set */
export async function cannon(
  target: Target,
  o: { connections: number; durationS: number; body: string; overallRate?: number; mode: LoadRun['mode'] },
  pids: Pids,
): Promise<LoadRun> {
  const latencies: number[] = [];
  const cpu = cpuWindow(pids);
  const res = await new Promise<autocannon.Result>((resolve, reject) => {
    const inst = autocannon(
      {
        url: target.url + CHAT_PATH,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: o.body,
        connections: o.connections,
        duration: o.durationS,
        ...(o.overallRate !== undefined && { overallRate: o.overallRate }),
        timeout: 10,
      },
      (err: unknown, r: autocannon.Result) =>
        err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(r),
    );
    inst.on('response', (_client, status, _bytes, responseTime) => {
      if (status >= 200 && status < 300) latencies.push(responseTime);
    });
  });
  const win = cpu.end();
  return {
    target: target.name,
    mode: o.mode,
    connections: o.connections,
    durationS: round(res.duration, 2),
    ...(o.overallRate !== undefined && { rate: o.overallRate }),
    requests: res.requests.total,
    rps: round(res.requests.total / res.duration, 1),
    latencyMs: latencySummary(latencies),
    errors: res.errors,
    timeouts: res.timeouts,
    non2xx: res.non2xx,
    cpu: win,
  };
}

/**
 * Open-loop load at a fixed rate: request i is due at start + i / rate; a 1 ms timer sends every
 * request that is due (so sends are spread evenly, at most ~1 ms late). Bounded: stops sending
 * after `durationS` and waits at most 10 s for the last answers.
 */
export async function paced(
  target: Target,
  o: { rate: number; durationS: number; connections: number; body: string },
  pids: Pids,
): Promise<LoadRun> {
  const pool = new Pool(target.url, { connections: o.connections, pipelining: 1, keepAliveTimeout: 30_000 });
  const total = Math.round(o.rate * o.durationS);
  const latencies: number[] = [];
  const lags: number[] = [];
  let errors = 0;
  let timeouts = 0;
  let non2xx = 0;
  let sent = 0;
  let done = 0;
  const cpu = cpuWindow(pids);
  const start = process.hrtime.bigint();
  const elapsedMs = () => Number(process.hrtime.bigint() - start) / 1e6;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((r) => (finish = r));
  const send = (i: number) => {
    const t0 = process.hrtime.bigint();
    lags.push(Number(t0 - start) / 1e6 - (i * 1000) / o.rate);
    pool
      .request({
        path: CHAT_PATH,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: o.body,
        headersTimeout: 10_000,
        bodyTimeout: 10_000,
      })
      .then(async (res) => {
        await res.body.arrayBuffer();
        if (res.statusCode >= 200 && res.statusCode < 300) {
          latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
        } else non2xx++;
      })
      .catch((err: unknown) => {
        errors++;
        if (err instanceof Error && /timeout/i.test(err.name + err.message)) timeouts++;
      })
      .finally(() => {
        done++;
        if (done === total) finish();
      });
  };
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((elapsedMs() * o.rate) / 1000) + 1);
      while (sent < due) send(sent++);
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  const sendEndMs = elapsedMs();
  await Promise.race([finished, sleep(10_000)]);
  const win = cpu.end();
  await pool.close().catch(() => undefined);
  const lag = distribution(lags, 3);
  return {
    target: target.name,
    mode: 'rate-paced',
    connections: o.connections,
    durationS: round(sendEndMs / 1000, 2),
    rate: o.rate,
    requests: latencies.length,
    rps: round(latencies.length / (sendEndMs / 1000), 1),
    latencyMs: latencySummary(latencies),
    errors: errors + (total - done),
    timeouts,
    non2xx,
    sendLagMs: { p50: lag.p50, p99: lag.p99, max: lag.max },
    cpu: win,
  };
}

export async function expect200(url: string, body: string, timeoutMs: number): Promise<string | null> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url + CHAT_PATH, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
        signal: AbortSignal.timeout(2000),
      });
      const text = await res.text();
      if (res.status === 200) return res.headers.get('x-mock-worker');
      last = `${res.status} ${text.slice(0, 200)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`${url}: no 200 within ${timeoutMs} ms (last: ${last})`);
}

export async function runProxyBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('proxy', opts);
  const durationS = opts.quick ? 2 : 10;
  const warmupS = opts.quick ? 1 : 2;
  const params = {
    durationS,
    warmupS,
    closedConnections: 32,
    rate: 1000,
    rateConnections: 16,
    streamConnections: 32,
    bodyBytes: Buffer.byteLength(CHAT_BODY),
    streamBodyBytes: Buffer.byteLength(STREAM_BODY),
    mock: ['--output-tokens', '8'],
    gateway: ['--policy', 'round_robin', '--log-level', 'warn'],
    profile: opts.profile === true,
  };
  const started = Date.now();
  const procs: Proc[] = [];
  let nginxProc: NginxProc | undefined;
  let nginx1Proc: NginxProc | undefined;
  try {
    log('proxy: starting mock engine');
    const fleet = await startMockFleet(1, params.mock);
    procs.push(fleet);
    const engine = fleet.urls[0];
    log('proxy: starting smg');
    const gw = await withGatewayProfiling(opts.profile === true, () =>
      startGatewayProc(['--worker-urls', engine, ...params.gateway]),
    );
    procs.push(gw);
    await expect200(engine, CHAT_BODY, 10_000);
    await expect200(gw.url, CHAT_BODY, 15_000);

    const nginxBin = findNginx({ allowDownload: true });
    let nginx: Record<string, unknown> | null = null;
    let nginxReason: string | undefined;
    if (nginxBin.bin === null) {
      nginxReason = nginxBin.reason;
      log(`proxy: no nginx (${nginxReason})`);
    } else {
      try {
        nginxProc = await startNginx(nginxBin.bin, await freePort(), engine);
        await expect200(nginxProc.url, CHAT_BODY, 10_000);
        nginx = {
          bin: nginxBin.bin,
          version: nginxBin.version,
          source: nginxBin.source,
          workerProcesses: 'auto',
        };
        // a one-worker nginx too: smg is one event loop, so this is the per-core comparison
        nginx1Proc = await startNginx(nginxBin.bin, await freePort(), engine, 1);
        await expect200(nginx1Proc.url, CHAT_BODY, 10_000);
      } catch (err) {
        nginxReason = `nginx failed to start: ${(err as Error).message.slice(0, 300)}`;
        log(`proxy: ${nginxReason}`);
        await nginxProc?.stop();
        await nginx1Proc?.stop();
        nginxProc = undefined;
        nginx1Proc = undefined;
      }
    }

    const pids: Pids = {
      mock: fleet.child.pid,
      smg: gw.child.pid,
      nginx: nginxProc?.pid,
      ...(nginx1Proc && { nginx1w: nginx1Proc.pid }),
    };
    const targets: Target[] = [
      { name: 'direct', url: engine },
      { name: 'smg', url: gw.url },
      ...(nginxProc ? [{ name: 'nginx', url: nginxProc.url }] : []),
    ];
    const runs: LoadRun[] = [];
    const runOne = async (label: string, fn: () => Promise<LoadRun>) => {
      const r = await fn();
      runs.push(r);
      log(
        `proxy: ${label}: ${r.rps} rps p50 ${r.latencyMs.p50} ms p99 ${r.latencyMs.p99} ms ` +
          `errors ${r.errors} non2xx ${r.non2xx} cpu ${JSON.stringify(r.cpu.procCores)} bench ${r.cpu.benchCores} other ${r.cpu.otherCores}`,
      );
      await sleep(500);
    };
    const closed = (t: Target, body: string, connections: number, mode: LoadRun['mode'], d: number) =>
      cannon(t, { connections, durationS: d, body, mode }, pids);

    const closedTargets = nginx1Proc ? [...targets, { name: 'nginx-1worker', url: nginx1Proc.url }] : targets;
    for (const t of closedTargets) {
      log(`proxy: closed loop ${t.name} (warm-up ${warmupS} s)`);
      await closed(t, CHAT_BODY, params.closedConnections, 'closed', warmupS);
      await runOne(`closed ${t.name}`, () =>
        closed(t, CHAT_BODY, params.closedConnections, 'closed', durationS),
      );
    }
    for (const t of targets) {
      const o = { rate: params.rate, connections: params.rateConnections, body: CHAT_BODY };
      await paced(t, { ...o, durationS: warmupS }, pids);
      await runOne(`paced ${params.rate}/s ${t.name}`, () => paced(t, { ...o, durationS }, pids));
    }
    for (const t of targets) {
      const o = { connections: params.rateConnections, body: CHAT_BODY, overallRate: params.rate };
      await cannon(t, { ...o, durationS: warmupS, mode: 'rate-autocannon' }, pids);
      await runOne(`autocannon rate ${params.rate}/s ${t.name}`, () =>
        cannon(t, { ...o, durationS, mode: 'rate-autocannon' }, pids),
      );
    }
    for (const t of targets) {
      await closed(t, STREAM_BODY, params.streamConnections, 'stream', warmupS);
      await runOne(`stream ${t.name}`, () =>
        closed(t, STREAM_BODY, params.streamConnections, 'stream', durationS),
      );
    }

    const find = (mode: LoadRun['mode'], target: string) =>
      runs.find((r) => r.mode === mode && r.target === target);
    const added = (mode: LoadRun['mode']) => {
      const d = find(mode, 'direct');
      const s = find(mode, 'smg');
      const n = find(mode, 'nginx');
      if (!d || !s) return null;
      return {
        smgP50Ms: round(s.latencyMs.p50 - d.latencyMs.p50, 3),
        smgP99Ms: round(s.latencyMs.p99 - d.latencyMs.p99, 3),
        ...(n && {
          nginxP50Ms: round(n.latencyMs.p50 - d.latencyMs.p50, 3),
          nginxP99Ms: round(n.latencyMs.p99 - d.latencyMs.p99, 3),
        }),
      };
    };
    const cd = find('closed', 'direct');
    const cs = find('closed', 'smg');
    const cn = find('closed', 'nginx');
    const cn1 = find('closed', 'nginx-1worker');
    const addedPaced = added('rate-paced');
    const smgOverNginx = cs && cn ? round(cs.rps / cn.rps, 3) : null;
    const sd = find('stream', 'direct');
    const ss = find('stream', 'smg');
    const totalErrors = runs.reduce((a, r) => a + r.errors + r.non2xx, 0);

    // stop the gateway first so its CPU profile (if any) is written
    await gw.stop();
    const profile = opts.profile ? readGatewayProfile(gw.child.pid) : undefined;

    const result = {
      ...header,
      params,
      nginx: nginx ?? null,
      ...(nginxReason !== undefined && { nginxReason }),
      runs,
      derived: {
        closedRps: {
          direct: cd?.rps ?? null,
          smg: cs?.rps ?? null,
          nginx: cn?.rps ?? null,
          nginx1Worker: cn1?.rps ?? null,
        },
        smgOverNginxRps: smgOverNginx,
        smgOverNginx1WorkerRps: cs && cn1 ? round(cs.rps / cn1.rps, 3) : null,
        smgOverDirectRps: cs && cd ? round(cs.rps / cd.rps, 3) : null,
        addedLatencyPaced1000: addedPaced,
        addedLatencyAutocannonRate1000: added('rate-autocannon'),
        addedLatencyClosed32: added('closed'),
        streamRps: {
          direct: sd?.rps ?? null,
          smg: ss?.rps ?? null,
          nginx: find('stream', 'nginx')?.rps ?? null,
        },
        totalErrorsAndNon2xx: totalErrors,
      },
      budgets: {
        smgAtLeastHalfOfNginxRps: smgOverNginx === null ? null : smgOverNginx >= 0.5,
        addedP50AtMost1msAt1000rps: addedPaced ? addedPaced.smgP50Ms <= 1 : null,
      },
      ...(profile && { gatewayProfile: profile }),
      durationS: round((Date.now() - started) / 1000, 1),
      loadAvgAfter: loadAvg(),
    };
    const pct =
      smgOverNginx === null
        ? `nginx n/a: ${nginxReason ?? '?'}`
        : `${Math.round(smgOverNginx * 100)}% of nginx ${cn?.rps}`;
    const summary =
      `direct ${cd?.rps} rps | smg ${cs?.rps} rps (${pct}` +
      `${cn1 ? `; ${Math.round((cs ? cs.rps / cn1.rps : 0) * 100)}% of 1-worker nginx ${cn1.rps}` : ''}) | ` +
      `added p50 @${params.rate}rps ${addedPaced?.smgP50Ms} ms (p99 ${addedPaced?.smgP99Ms} ms) | ` +
      `stream direct ${sd?.rps} / smg ${ss?.rps} rps | errors ${totalErrors}`;
    return { result, summary };
  } finally {
    await nginx1Proc?.stop();
    await nginxProc?.stop();
    for (const p of procs.reverse()) await p.stop();
    await stopAll();
  }
}
