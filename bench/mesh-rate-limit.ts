/**
 * Cluster-wide rate limit: does a mesh of 3 peers admit what one limit allows?
 *
 * Three `--ha-mesh` peers (MeshCluster) with the same mock engines. The limit (200 requests/s) is
 * set with `POST /mesh/rate-limit` on peer-1 only; the benchmark waits until every peer reports it
 * (`GET /mesh/rate-limit`). Then open-loop chat completions at 2.5× the limit, spread over the
 * peers evenly (1/3 each) and skewed (80/10/10), for `phaseS` each, with a pause between phases so
 * the windows of one do not limit the next.
 *
 * Per whole 1-second window (by send time, the windows the gateways count in: `floor(ms / 1000)`)
 * the HTTP 200s are counted: max and mean admitted/limit (goal max ≤ 1.05, and the mean near 1: the
 * limit stays usable), plus the 429 count and anything else. Every peer's
 * `/mesh/rate-limit/stats` is sampled at the middle of each phase.
 */
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { MeshCluster, type MeshPeer } from '../src/testing/mesh-cluster.js';
import { startMockFleet, type MockFleetProc } from '../src/testing/processes.js';
import {
  cpuWindow,
  log,
  loadAvg,
  resultHeader,
  round,
  sleep,
  type BenchOptions,
  type BenchOutcome,
  type CpuWindow,
} from './common.js';

const MODEL = 'rl-bench';

interface PhaseResult {
  name: string;
  split: number[];
  offeredPerS: number;
  durationS: number;
  sent: number;
  ok: number;
  rejected429: number;
  other: number;
  errors: number;
  firstOther?: string;
  /** 200s per whole window, in window order */
  okPerWindow: number[];
  /** 200s per whole window per peer */
  okPerWindowByPeer: Record<string, number[]>;
  maxRatio: number;
  meanRatio: number;
  minRatio: number;
  /** sends behind schedule by more than 50 ms (the client could not keep the open loop) */
  lateSends: number;
  statsMid: Record<string, unknown>;
  /** the peers' own smg_mesh_event_lag_seconds for the rate-limit topic over the phase */
  slotLag: ReturnType<typeof lagOver>;
  cpu: CpuWindow;
}

/** `smg_mesh_event_lag_seconds{topic="smg/ratelimit/1"}` of one peer: count, sum, buckets (le → count) */
interface LagSample {
  count: number;
  sum: number;
  buckets: Map<number, number>;
}

async function rateLimitLag(peer: MeshPeer): Promise<LagSample> {
  const out: LagSample = { count: 0, sum: 0, buckets: new Map() };
  try {
    const text = await (
      await fetch(`${peer.metricsUrl}/metrics`, { signal: AbortSignal.timeout(5000) })
    ).text();
    for (const line of text.split('\n')) {
      if (!line.startsWith('smg_mesh_event_lag_seconds') || !line.includes('ratelimit')) continue;
      const value = Number(line.slice(line.lastIndexOf(' ') + 1));
      if (line.startsWith('smg_mesh_event_lag_seconds_count')) out.count += value;
      else if (line.startsWith('smg_mesh_event_lag_seconds_sum')) out.sum += value;
      else {
        const le = /le="([^"]+)"/.exec(line)?.[1];
        if (le !== undefined) out.buckets.set(le === '+Inf' ? Infinity : Number(le), value);
      }
    }
  } catch {
    // no metrics: reported as no samples
  }
  return out;
}

/** the slot gossip lag over a phase, all peers together: mean and the bucket bounds of p50/p99 (ms) */
function lagOver(
  before: LagSample[],
  after: LagSample[],
): { samples: number; meanMs: number; p50LeMs: number; p99LeMs: number } {
  let count = 0;
  let sum = 0;
  const buckets = new Map<number, number>();
  after.forEach((a, i) => {
    count += a.count - before[i].count;
    sum += a.sum - before[i].sum;
    for (const [le, v] of a.buckets)
      buckets.set(le, (buckets.get(le) ?? 0) + v - (before[i].buckets.get(le) ?? 0));
  });
  const les = [...buckets.keys()].sort((x, y) => x - y);
  const at = (q: number) => {
    for (const le of les) if ((buckets.get(le) ?? 0) >= q * count) return round(le * 1000, 1);
    return NaN;
  };
  return {
    samples: count,
    meanMs: count > 0 ? round((sum / count) * 1000, 1) : NaN,
    p50LeMs: count > 0 ? at(0.5) : NaN,
    p99LeMs: count > 0 ? at(0.99) : NaN,
  };
}

async function getJson(url: string): Promise<unknown> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return res.json();
}

async function setLimit(peer: MeshPeer, limit: number): Promise<void> {
  const res = await fetch(`${peer.url}/mesh/rate-limit`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ limit_per_second: limit }),
    signal: AbortSignal.timeout(5000),
  });
  if (res.status !== 200) throw new Error(`POST /mesh/rate-limit: ${res.status} ${await res.text()}`);
}

/** ms until every peer reports `limit` */
async function waitLimit(peers: MeshPeer[], limit: number, t0: number): Promise<number> {
  const deadline = t0 + 15_000;
  const seen = new Set<string>();
  while (performance.now() < deadline) {
    for (const p of peers) {
      if (seen.has(p.spec.name)) continue;
      const body = (await getJson(`${p.url}/mesh/rate-limit`)) as { limit_per_second: number };
      if (body.limit_per_second === limit) seen.add(p.spec.name);
    }
    if (seen.size === peers.length) return performance.now() - t0;
    await sleep(5);
  }
  throw new Error(`the limit reached only ${[...seen].join(', ')} within 15 s`);
}

async function phase(
  name: string,
  peers: MeshPeer[],
  split: number[],
  limit: number,
  offered: number,
  durationS: number,
): Promise<PhaseResult> {
  const pools = peers.map(
    (p) =>
      new Pool(p.url, {
        connections: 64,
        pipelining: 1,
        keepAliveTimeout: 60_000,
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      }),
  );
  const body = JSON.stringify({
    model: MODEL,
    messages: [{ role: 'user', content: 'hi' }],
    max_tokens: 4,
    stream: false,
  });
  const rate = offered * limit;
  const lagBefore = await Promise.all(peers.map(rateLimitLag));
  // start on a window boundary (+ 50 ms) so the phase covers whole windows
  const startWall = Math.ceil(Date.now() / 1000) * 1000 + 50;
  await sleep(startWall - Date.now());
  const endWall = startWall + durationS * 1000;
  const firstWindow = Math.ceil(startWall / 1000);
  const lastWindow = Math.floor(endWall / 1000) - 1;
  const windows = lastWindow - firstWindow + 1;
  const okPerWindow = new Array<number>(windows).fill(0);
  const byPeer = peers.map(() => new Array<number>(windows).fill(0));
  let sent = 0;
  let ok = 0;
  let rejected = 0;
  let other = 0;
  let errors = 0;
  let late = 0;
  let firstOther: string | undefined;
  const inflight = new Set<Promise<void>>();
  const send = (i: number) => {
    const at = Date.now();
    sent++;
    const p = pools[i]
      .request({
        path: '/v1/chat/completions',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      })
      .then(async (res) => {
        const text = await res.body.text();
        if (res.statusCode === 200) {
          ok++;
          const w = Math.floor(at / 1000) - firstWindow;
          if (w >= 0 && w < windows) {
            okPerWindow[w]++;
            byPeer[i][w]++;
          }
        } else if (res.statusCode === 429) rejected++;
        else {
          other++;
          firstOther ??= `${res.statusCode} ${text.slice(0, 200)}`;
        }
      })
      .catch((err: unknown) => {
        errors++;
        firstOther ??= String(err);
      })
      .finally(() => inflight.delete(p));
    inflight.add(p);
  };
  const cpu = cpuWindow(Object.fromEntries(peers.map((p) => [p.spec.name, p.child.pid])));
  // open loop: peer i gets its requests evenly spaced at rate × split[i] (phase-shifted per peer)
  const next = split.map((s, i) => (s > 0 ? startWall + (i * 1000) / rate / peers.length : Infinity));
  const gap = split.map((s) => (s > 0 ? 1000 / (rate * s) : Infinity));
  let statsMid: Record<string, unknown> = {};
  let statsTaken = false;
  while (Date.now() < endWall) {
    const now = Date.now();
    for (let i = 0; i < peers.length; i++) {
      while (next[i] <= now && next[i] < endWall) {
        if (now - next[i] > 50) late++;
        send(i);
        next[i] += gap[i];
      }
    }
    if (!statsTaken && now >= startWall + (durationS * 1000) / 2) {
      statsTaken = true;
      void Promise.all(peers.map((p) => getJson(`${p.url}/mesh/rate-limit/stats`))).then(
        (s) => (statsMid = Object.fromEntries(peers.map((p, i) => [p.spec.name, s[i]]))),
        (err: unknown) => (statsMid = { error: String(err) }),
      );
    }
    await sleep(2);
  }
  await Promise.all([...inflight]);
  const window = cpu.end();
  await Promise.all(pools.map((p) => p.close()));
  const slotLag = lagOver(lagBefore, await Promise.all(peers.map(rateLimitLag)));
  const ratios = okPerWindow.map((c) => c / limit);
  return {
    name,
    split,
    offeredPerS: rate,
    durationS,
    sent,
    ok,
    rejected429: rejected,
    other,
    errors,
    ...(firstOther !== undefined && { firstOther }),
    okPerWindow,
    okPerWindowByPeer: Object.fromEntries(peers.map((p, i) => [p.spec.name, byPeer[i]])),
    maxRatio: round(Math.max(...ratios), 3),
    meanRatio: round(ratios.reduce((s, x) => s + x, 0) / ratios.length, 3),
    minRatio: round(Math.min(...ratios), 3),
    lateSends: late,
    statsMid,
    slotLag,
    cpu: window,
  };
}

export async function runMeshRateLimitBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('mesh-rate-limit', opts);
  const t0 = performance.now();
  const params = {
    peers: 3,
    limitPerSecond: 200,
    offered: 2.5,
    phaseS: opts.quick ? 4 : 10,
    warmUpS: opts.quick ? 2 : 5,
    pauseS: 3,
    engines: 3,
    goalMaxRatio: 1.05,
  };
  const notes = [
    'okPerWindow: HTTP 200s per whole 1-s window by the send time of the request (Date.now(), the clock ' +
      'the gateways count in), all peers together; ratios are okPerWindow / limitPerSecond.',
    'Open loop: each peer gets evenly spaced requests at offered × limit × its split; 429s are answered ' +
      'by the gateway at once, 200s by a mock engine (4 output tokens).',
    'The peers see each other’s admissions only through the gossiped G-counter slots (every ~50 ms): ' +
      'without that gossip each peer enforces the limit alone and the cluster admits up to 3× the limit. ' +
      'slotLag is the peers’ own smg_mesh_event_lag_seconds{topic="smg/ratelimit/1"} (published → applied): ' +
      'the share rule assumes it stays under RateLimitUsage.inFlightMs (100 ms by default).',
    'warmUp: the same even traffic for warmUpS right before the measured phases (JIT, pools and GC ' +
      'settle; the first phase after start-up otherwise sees a much larger gossip lag); not in the summary.',
  ];
  const engines: MockFleetProc = await startMockFleet(params.engines, [
    '--model',
    MODEL,
    '--ttft-ms',
    '1',
    '--output-tokens',
    '4',
  ]);
  const cluster = new MeshCluster(params.peers, {
    extra: ['--log-level', 'warn', '--worker-urls', ...engines.urls],
  });
  const phases: PhaseResult[] = [];
  let warmUp: PhaseResult | undefined;
  let propagationMs: number;
  try {
    await cluster.start();
    await cluster.waitConverged(90_000);
    const peers = cluster.running();
    log(`mesh-rate-limit: ${peers.length} peers converged`);
    // every peer routes (its probes found the engines healthy), then warm the connections (no limit yet)
    for (const p of peers) {
      const deadline = performance.now() + 60_000;
      for (let okCount = 0; okCount < 5;) {
        const r = await fetch(`${p.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
        });
        const text = await r.text();
        if (r.status === 200) okCount++;
        else if (r.status !== 503 || performance.now() > deadline)
          throw new Error(`warm-up on ${p.spec.name}: ${r.status} ${text}`);
        else await sleep(100);
      }
    }
    const tSet = performance.now();
    await setLimit(peers[0], params.limitPerSecond);
    propagationMs = round(await waitLimit(peers, params.limitPerSecond, tSet), 1);
    log(`mesh-rate-limit: limit ${params.limitPerSecond}/s on every peer after ${propagationMs} ms`);
    // an unmeasured phase first: JIT, connection pools and GC settle before the measured ones
    log(`mesh-rate-limit: warm-up at ${params.offered}× for ${params.warmUpS} s`);
    warmUp = await phase(
      'warm-up',
      peers,
      [1 / 3, 1 / 3, 1 / 3],
      params.limitPerSecond,
      params.offered,
      params.warmUpS,
    );
    for (const [name, split] of [
      ['even', [1 / 3, 1 / 3, 1 / 3]],
      ['skewed-80-10-10', [0.8, 0.1, 0.1]],
    ] as [string, number[]][]) {
      await sleep(params.pauseS * 1000);
      log(`mesh-rate-limit: ${name} at ${params.offered}× for ${params.phaseS} s`);
      const r = await phase(name, peers, split, params.limitPerSecond, params.offered, params.phaseS);
      log(
        `mesh-rate-limit: ${name}: max ${r.maxRatio} mean ${r.meanRatio} of the limit, ${r.rejected429} × 429, ` +
          `${r.other + r.errors} other; slot lag mean ${r.slotLag.meanMs} ms p99 <= ${r.slotLag.p99LeMs} ms`,
      );
      phases.push(r);
    }
  } finally {
    await cluster.stop();
    await engines.stop();
  }
  const maxRatio = Math.max(...phases.map((p) => p.maxRatio));
  const result = {
    ...header,
    params,
    notes,
    limitPropagationMs: propagationMs,
    phases,
    warmUp,
    maxRatio,
    met: maxRatio <= params.goalMaxRatio,
    loadAvgAfter: loadAvg(),
    durationS: round((performance.now() - t0) / 1000, 1),
  };
  const summary =
    `limit ${params.limitPerSecond}/s at ${params.offered}× over ${params.peers} peers: ` +
    phases
      .map(
        (p) =>
          `${p.name} admitted/limit per 1-s window max ${p.maxRatio} mean ${p.meanRatio} ` +
          `(${p.rejected429} × 429, ${p.other + p.errors} other, slot lag p99 <= ${p.slotLag.p99LeMs} ms)`,
      )
      .join('; ') +
    ` (goal max <= ${params.goalMaxRatio}); limit on every peer ${propagationMs} ms after the POST; ` +
    `load avg ${String(header.loadAvgBefore)} before`;
  return { result, summary };
}
