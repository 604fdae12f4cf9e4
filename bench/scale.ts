/**
 * Scale benchmark (issue 13, item 7): what 2,000 registered workers cost the gateway.
 *
 * SMG's own scale test registers 2,000 HTTP workers (`POST /workers`, 32 in parallel) in front of a
 * mock fleet and samples the gateway's CPU and RSS at idle and its latency under load. Here a real
 * `smg launch` (default policy, cache_aware; default health settings; a fresh `--data-dir`) runs in
 * turn with:
 *   - `baseline`: 4 healthy mock engines (`--worker-urls`);
 *   - `healthy-flags` / `healthy-post`: 2,000 healthy mock engines (one `smg mock-worker --port 0
 *     --count 2000` process), registered by `--worker-urls` / by `POST /workers` (32 clients);
 *   - `dead-flags` / `dead-post`: the 4 healthy engines plus 2,000 unreachable workers (loopback
 *     addresses 127.0.0.2+ on ports checked to refuse connections), same two paths; chat traffic
 *     goes to the 4.
 * For each: registration time (to every worker listed; to every healthy one ready), the gateway's
 * CPU from start until the idle window, then an idle window (no requests): CPU as % of one core,
 * health probes per second (from `smg_worker_health_checks_total`); then sequential chat
 * completions (undici, one keep-alive connection; p50/p99 from send to the end of the body) and
 * sequential `GET /workers` (p50/p99, response size); VmRSS / VmHWM at the end.
 *
 * The idle window lasts one check interval and starts when the fleet probes at its steady rate:
 * a worker's first interval probe falls between 0.5 and 1.5 intervals after its first probe (at its
 * phase), so from half an interval after the fleet is ready, a window of one interval sees one probe
 * per worker; unreachable workers first back off from 1 s probes to the interval (about 2 minutes
 * at the default 60 s), whose probes count in the start-up CPU. `--quick`: 200 workers, a 10 s check
 * interval, shorter runs.
 *
 * Goals (issue 13): idle CPU ≤ 10 % of a core, chat p50 within 1 ms of the baseline's, GET /workers
 * p50 ≤ 50 ms, at 2,000 workers healthy and unreachable.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import {
  startEphemeralMockFleet,
  startGatewayProc,
  type GatewayProc,
  type MockFleetProc,
} from '../src/testing/processes.js';
import {
  cpuWindow,
  distribution,
  loadAvg,
  log,
  parseMetrics,
  procCpuSeconds,
  readGatewayProfiles,
  resultHeader,
  round,
  sleep,
  withGatewayProfiling,
  type BenchOptions,
  type BenchOutcome,
  type CpuWindow,
  type Distribution,
  type GatewayProfile,
} from './common.js';

const CHAT_PATH = '/v1/chat/completions';
const MODEL = 'mock-model';
/** SMG's scale_test.sh registers with 32 parallel curls */
const POST_CONCURRENCY = 32;

export interface ScaleParams {
  workers: number;
  baselineWorkers: number;
  /** --health-check-interval-secs, undefined = the default (60) */
  intervalSecs?: number;
  /** wait after every healthy worker is ready before the idle window (see the module comment) */
  settleS: { healthy: number; dead: number };
  /** one check interval: every worker is probed once in it */
  idleS: number;
  chatRequests: number;
  chatWarmup: number;
  getWorkersRequests: number;
  registrationTimeoutS: number;
  gatewayArgs: string[];
}

export function scaleParams(quick: boolean): ScaleParams {
  return quick
    ? {
        workers: 200,
        baselineWorkers: 4,
        intervalSecs: 10,
        settleS: { healthy: 5, dead: 25 },
        idleS: 10,
        chatRequests: 200,
        chatWarmup: 100,
        getWorkersRequests: 20,
        registrationTimeoutS: 60,
        gatewayArgs: ['--log-level', 'warn'],
      }
    : {
        workers: 2000,
        baselineWorkers: 4,
        settleS: { healthy: 30, dead: 150 },
        idleS: 60,
        chatRequests: 1000,
        chatWarmup: 500,
        getWorkersRequests: 50,
        registrationTimeoutS: 180,
        gatewayArgs: ['--log-level', 'warn'],
      };
}

type Via = 'flags' | 'post';

interface ScenarioSpec {
  name: string;
  via: Via;
  healthy: string[];
  dead: string[];
}

export interface ScenarioResult {
  name: string;
  via: Via;
  healthyWorkers: number;
  deadWorkers: number;
  /** flags: spawn → every worker listed in GET /workers; post: first POST → every worker listed */
  registerMs: number;
  /** → every healthy worker ready (routable) */
  readyMs: number;
  /** POST /workers latency (post only) */
  postMs?: Distribution;
  /** gateway CPU seconds from spawn to the start of the idle window */
  startupCpuS: number;
  idle: {
    cpuPctOfCore: number;
    probesPerS: number;
    window: CpuWindow;
  };
  chatMs: Distribution;
  getWorkersMs: Distribution;
  getWorkersBytes: number;
  rssMb: number;
  hwmMb: number;
  /** --profile: the gateway from spawn to the idle window, and from there to the end */
  profiles?: { startup?: GatewayProfile; steady?: GatewayProfile };
}

function procStatusMb(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? round(Number(m[1]) / 1024, 1) : NaN;
  } catch {
    return NaN;
  }
}

/** whether a TCP connection to host:port is refused (nothing listens) */
function refuses(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (refused: boolean) => {
      s.destroy();
      resolve(refused);
    };
    s.setTimeout(1000, () => done(false));
    s.once('connect', () => done(false));
    s.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED'));
  });
}

/**
 * `n` unreachable worker URLs on loopback: 127.0.0.2–127.0.0.201, ports from 901 up, each checked to
 * refuse connections (nothing listens there, not even on 0.0.0.0).
 */
export async function deadWorkerUrls(n: number): Promise<string[]> {
  const urls: string[] = [];
  for (let port = 901; urls.length < n && port < 1024; port++) {
    const batch: [string, number][] = [];
    for (let h = 2; h <= 201 && urls.length + batch.length < n; h++) batch.push([`127.0.0.${h}`, port]);
    const ok = await Promise.all(batch.map(([host, p]) => refuses(host, p)));
    batch.forEach(([host, p], i) => {
      if (ok[i]) urls.push(`http://${host}:${p}`);
    });
  }
  if (urls.length < n) throw new Error(`only ${urls.length} refusing loopback ports found`);
  return urls;
}

async function getJson(pool: Pool, path: string): Promise<{ status: number; body: unknown; bytes: number }> {
  const res = await pool.request({ path, method: 'GET', headersTimeout: 30_000, bodyTimeout: 30_000 });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    body: text ? JSON.parse(text) : undefined,
    bytes: Buffer.byteLength(text),
  };
}

interface WorkersBody {
  total: number;
  workers: { url: string; status: string }[];
}

async function workerCounts(
  pool: Pool,
  healthy: ReadonlySet<string>,
): Promise<{ listed: number; ready: number }> {
  const { body } = await getJson(pool, '/workers');
  const b = body as WorkersBody;
  let ready = 0;
  for (const w of b.workers) if (w.status === 'ready' && healthy.has(w.url)) ready++;
  return { listed: b.total, ready };
}

async function healthChecks(gw: GatewayProc): Promise<number> {
  const res = await fetch(`${gw.metricsUrl}/metrics`, { signal: AbortSignal.timeout(30_000) });
  let n = 0;
  for (const s of parseMetrics(await res.text(), 'smg_worker_health_checks_total')) n += s.value;
  return n;
}

/** `count` sequential requests, each timed from send to the end of its body */
async function sequential(count: number, send: (i: number) => Promise<void>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    await send(i);
    out.push(performance.now() - t0);
  }
  return out;
}

function chatBody(i: number): string {
  return JSON.stringify({
    model: MODEL,
    messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: `Question ${i}: one short sentence about load balancing inference.` },
    ],
    max_tokens: 8,
  });
}

async function chat(pool: Pool, i: number): Promise<void> {
  const res = await pool.request({
    path: CHAT_PATH,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: chatBody(i),
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`chat: HTTP ${res.statusCode} ${text.slice(0, 200)}`);
}

async function postWorkers(gwUrl: string, urls: string[]): Promise<number[]> {
  const pool = new Pool(gwUrl, { connections: POST_CONCURRENCY });
  const times: number[] = new Array<number>(urls.length);
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: POST_CONCURRENCY }, async () => {
        for (let i = next++; i < urls.length; i = next++) {
          const t0 = performance.now();
          const res = await pool.request({
            path: '/workers',
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ url: urls[i] }),
            headersTimeout: 60_000,
            bodyTimeout: 60_000,
          });
          const text = await res.body.text();
          if (res.statusCode !== 202) throw new Error(`POST /workers ${urls[i]}: ${res.statusCode} ${text}`);
          times[i] = performance.now() - t0;
        }
      }),
    );
  } finally {
    await pool.close();
  }
  return times;
}

function gatewayProfiles(pid: number | undefined): { startup?: GatewayProfile; steady?: GatewayProfile } {
  const [startup, steady] = readGatewayProfiles(pid, 25);
  return { ...(startup && { startup }), ...(steady && { steady }) };
}

async function runScenario(
  spec: ScenarioSpec,
  params: ScaleParams,
  procs: { mocks: MockFleetProc[] },
  profile: boolean,
): Promise<ScenarioResult> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'smg-bench-scale-'));
  const all = [...spec.healthy, ...spec.dead];
  const healthySet = new Set(spec.healthy);
  const args = [
    ...params.gatewayArgs,
    '--data-dir',
    dataDir,
    ...(params.intervalSecs !== undefined
      ? ['--health-check-interval-secs', String(params.intervalSecs)]
      : []),
    ...(spec.via === 'flags' ? ['--worker-urls', ...all] : []),
  ];
  log(`scale: ${spec.name}: ${spec.healthy.length} healthy + ${spec.dead.length} dead via ${spec.via}`);
  const t0 = performance.now();
  const gw = await withGatewayProfiling(profile, () =>
    startGatewayProc(args, { waitReady: false, readyTimeoutMs: params.registrationTimeoutS * 1000 }),
  );
  const pid = gw.child.pid;
  const admin = new Pool(gw.url, { connections: 1 });
  const client = new Pool(gw.url, { connections: 1 });
  try {
    let postMs: Distribution | undefined;
    let regStart = t0;
    if (spec.via === 'post') {
      regStart = performance.now();
      postMs = distribution(await postWorkers(gw.url, all));
    }
    // polled every 250 ms: a GET /workers of 2,000 workers is work for the gateway too
    const deadline = performance.now() + params.registrationTimeoutS * 1000;
    let registerMs = NaN;
    for (;;) {
      const c = await workerCounts(admin, healthySet);
      if (c.listed >= all.length && Number.isNaN(registerMs)) registerMs = performance.now() - regStart;
      if (c.listed >= all.length && c.ready >= spec.healthy.length) break;
      if (performance.now() > deadline || gw.child.exitCode !== null)
        throw new Error(
          `${spec.name}: ${c.listed}/${all.length} listed, ${c.ready}/${spec.healthy.length} ready ` +
            `after ${params.registrationTimeoutS} s\n${gw.output().slice(-2000)}`,
        );
      await sleep(250);
    }
    const readyMs = performance.now() - regStart;
    log(`scale: ${spec.name}: listed in ${Math.round(registerMs)} ms, ready in ${Math.round(readyMs)} ms`);

    const settleS = spec.dead.length > 0 ? params.settleS.dead : params.settleS.healthy;
    await sleep(Math.max(0, settleS * 1000 - (performance.now() - regStart - readyMs)));
    const startupCpuS = procCpuSeconds(pid);

    // the profiling preload cuts its profile here: start-up and steady state apart
    if (profile) gw.child.kill('SIGUSR2');
    const checks0 = await healthChecks(gw);
    const cpu0 = procCpuSeconds(pid);
    const window = cpuWindow({ smg: pid, mock: procs.mocks[0]?.child.pid, mock2: procs.mocks[1]?.child.pid });
    const w0 = performance.now();
    await sleep(params.idleS * 1000);
    const cpu1 = procCpuSeconds(pid);
    const wallS = (performance.now() - w0) / 1000;
    const win = window.end();
    const checks1 = await healthChecks(gw);
    const idle = {
      cpuPctOfCore: round(((cpu1 - cpu0) / wallS) * 100, 1),
      probesPerS: round((checks1 - checks0) / wallS, 1),
      window: win,
    };
    log(`scale: ${spec.name}: idle ${idle.cpuPctOfCore} % of a core, ${idle.probesPerS} probes/s`);

    await sequential(params.chatWarmup, (i) => chat(client, -1 - i));
    const chatMs = distribution(await sequential(params.chatRequests, (i) => chat(client, i)));
    let bytes = 0;
    const getWorkersMs = distribution(
      await sequential(params.getWorkersRequests, async () => {
        const res = await admin.request({ path: '/workers', method: 'GET', headersTimeout: 30_000 });
        const buf = await res.body.arrayBuffer();
        if (res.statusCode !== 200) throw new Error(`GET /workers: HTTP ${res.statusCode}`);
        bytes = buf.byteLength;
      }),
    );
    const rssMb = procStatusMb(pid, 'VmRSS');
    const hwmMb = procStatusMb(pid, 'VmHWM');
    log(
      `scale: ${spec.name}: chat p50 ${chatMs.p50} ms p99 ${chatMs.p99} ms; GET /workers p50 ` +
        `${getWorkersMs.p50} ms p99 ${getWorkersMs.p99} ms (${bytes} B); RSS ${rssMb} MB`,
    );
    await admin.close();
    await client.close();
    await gw.stop();
    return {
      name: spec.name,
      via: spec.via,
      healthyWorkers: spec.healthy.length,
      deadWorkers: spec.dead.length,
      registerMs: round(registerMs, 0),
      readyMs: round(readyMs, 0),
      ...(postMs && { postMs }),
      startupCpuS: round(startupCpuS, 2),
      idle,
      chatMs,
      getWorkersMs,
      getWorkersBytes: bytes,
      rssMb,
      hwmMb,
      ...(profile && { profiles: gatewayProfiles(pid) }),
    };
  } finally {
    await admin.close().catch(() => undefined);
    await client.close().catch(() => undefined);
    await gw.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

export async function runScaleBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('scale', opts);
  const params = scaleParams(opts.quick);
  const started = Date.now();
  const mocks: MockFleetProc[] = [];
  try {
    log(`scale: starting mock engines (${params.baselineWorkers} + ${params.workers})`);
    const small = await startEphemeralMockFleet(params.baselineWorkers);
    mocks.push(small);
    const big = await startEphemeralMockFleet(params.workers, [], 120_000);
    mocks.push(big);
    const dead = await deadWorkerUrls(params.workers);
    // this process's own request path warmed up first, so the first scenario (the baseline, which
    // the others are compared with) does not pay for it
    const direct = new Pool(small.urls[0], { connections: 1 });
    await sequential(2 * params.chatWarmup, (i) => chat(direct, i));
    await direct.close();
    const scenarios: ScenarioSpec[] = [
      { name: 'baseline', via: 'flags', healthy: small.urls, dead: [] },
      { name: 'healthy-flags', via: 'flags', healthy: big.urls, dead: [] },
      { name: 'healthy-post', via: 'post', healthy: big.urls, dead: [] },
      { name: 'dead-flags', via: 'flags', healthy: small.urls, dead },
      { name: 'dead-post', via: 'post', healthy: small.urls, dead },
    ];
    const results: ScenarioResult[] = [];
    for (const s of scenarios) results.push(await runScenario(s, params, { mocks }, opts.profile === true));

    const base = results[0];
    const scaled = results.slice(1);
    const goals = Object.fromEntries(
      scaled.map((r) => [
        r.name,
        {
          idleCpuAtMost10Pct: r.idle.cpuPctOfCore <= 10,
          chatP50WithinMsOfBaseline: round(r.chatMs.p50 - base.chatMs.p50, 3),
          chatP50Within1ms: r.chatMs.p50 - base.chatMs.p50 <= 1,
          getWorkersP50AtMost50ms: r.getWorkersMs.p50 <= 50,
        },
      ]),
    );
    const allMet = Object.values(goals).every(
      (g) => g.idleCpuAtMost10Pct && g.chatP50Within1ms && g.getWorkersP50AtMost50ms,
    );
    const result = {
      ...header,
      params,
      scenarios: results,
      goals,
      allGoalsMet: allMet,
      durationS: round((Date.now() - started) / 1000, 1),
      loadAvgAfter: loadAvg(),
    };
    const part = (r: ScenarioResult) =>
      `${r.name}: idle ${r.idle.cpuPctOfCore}% (${r.idle.probesPerS} probes/s), chat p50 ${r.chatMs.p50} ms ` +
      `(${r.chatMs.p50 - base.chatMs.p50 >= 0 ? '+' : ''}${round(r.chatMs.p50 - base.chatMs.p50, 2)}), ` +
      `GET /workers p50 ${r.getWorkersMs.p50} ms p99 ${r.getWorkersMs.p99} ms, RSS ${r.rssMb} MB, ` +
      `registered ${round(r.registerMs / 1000, 1)} s`;
    const summary =
      `${params.workers} workers | baseline (${base.healthyWorkers}): idle ${base.idle.cpuPctOfCore}%, chat p50 ` +
      `${base.chatMs.p50} ms p99 ${base.chatMs.p99} ms, RSS ${base.rssMb} MB | ${scaled.map(part).join(' | ')} | ` +
      `load avg ${header.loadAvgBefore as number[]} → ${result.loadAvgAfter} | goals ${allMet ? 'met' : 'NOT met'}`;
    return { result, summary };
  } finally {
    await Promise.all(mocks.map((m) => m.stop()));
  }
}
