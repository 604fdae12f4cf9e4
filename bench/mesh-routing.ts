/**
 * Multi-peer routing: does a mesh of gateway peers route as well as one gateway?
 *
 * Four mock engines (the cache-aware benchmark's TTFT model and small KV cache) and, in turn, a
 * single plain gateway (the baseline, no --ha-mesh), 3 and 8 `--ha-mesh` peers (MeshCluster), every
 * gateway given the same `--worker-urls` (the four engines) and `--policy cache_aware`.
 *
 * 1. Routing: the cache-aware benchmark's seeded multi-turn workload (closedLoop) with every request
 *    sent to the next gateway in turn (per-request round-robin over the peers: the harsh version of
 *    DNS round-robin, where consecutive turns of a conversation land on different peers). Follow-up
 *    cached fraction (Σ cached / Σ prompt tokens over turns ≥ 2) and its ratio to the baseline; load
 *    CoV over the engines (requests and prompt tokens per engine, from x-mock-worker); TTFT.
 * 2. Gossip volume (3 and 8 peers): open-loop phases at ~100 and ~1,000 req/s total, round-robin over
 *    the peers; `smg_mesh_bytes_total{topic,direction}` deltas of every peer → bytes/s per node, total
 *    and per topic. When the high rate is not sustained on this machine, a further phase runs at 90 %
 *    of the rate achieved, and the per-node bytes/s at 1,000 req/s are extrapolated linearly from the
 *    two sustained phases (labelled as such).
 * 3. RSS per node: VmRSS sampled every 500 ms while the cluster runs, VmHWM at the end.
 * 4. Event lag: `smg_mesh_event_lag_seconds{topic}` (publication on the origin → applied here) per
 *    topic and peer from the histogram buckets, max over peers (an upper bound of the event-to-all-
 *    peers p99); "not available" when the peers do not export it.
 */
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { MeshCluster } from '../src/testing/mesh-cluster.js';
import { startGatewayProc, startMockFleet, stopAll, type GatewayProc } from '../src/testing/processes.js';
import {
  buildWorkload,
  CHAT_PATH,
  cacheAwareParams,
  closedLoop,
  engineStats,
  getJson,
  MODEL,
  summarizeTurns,
  type CacheAwareParams,
  type ChatUsage,
  type Message,
  type TurnRecord,
  type TurnSummary,
  type Workload,
} from './cache-aware.js';
import {
  cpuWindow,
  distribution,
  log,
  loadAvg,
  procStatusKb,
  randomText,
  resultHeader,
  round,
  seededRandom,
  sleep,
  type BenchOptions,
  type BenchOutcome,
  type CpuWindow,
  type Distribution,
  parseMetrics,
  type Sample,
  histogramQuantileMs,
} from './common.js';

// ---------------------------------------------------------------- parameters

export interface MeshRoutingParams {
  sizes: number[];
  policy: string;
  /** the closed-loop routing workload (cache-aware's, larger) */
  routing: CacheAwareParams;
  /** open-loop target rates, req/s over the whole cluster */
  openRates: number[];
  openPhaseS: number;
  /** a window without requests (3 and 8 peers): the gossip floor, the 0 req/s point of the linear fit */
  idleS: number;
  /** turns per open-loop conversation; conversations in flight = rate × openTurnSpacingS */
  openTurns: number;
  openTurnSpacingS: number;
  openMaxTokens: number;
  /** a phase is sustained when ok answers ≥ this fraction of the target and nothing was shed */
  sustainedFraction: number;
  /** requests in flight above rate × this are not sent (counted as shed) */
  maxInFlightS: number;
  /** wait for answers after the send window, at most */
  drainS: number;
  /** after the drain, before the metrics are read: gossip batching windows */
  settleMs: number;
  rssSampleMs: number;
  /** extrapolation target of the gossip bytes, req/s */
  extrapolateToRps: number;
  goals: {
    cachedRatioMin: number;
    loadCovMax: number;
    gossipKBpsPerNodeAt1000Max: number;
    rssMbMax: number;
  };
}

export function meshRoutingParams(quick: boolean): MeshRoutingParams {
  const base = cacheAwareParams(quick);
  return {
    sizes: [1, 3, 8],
    policy: 'cache_aware',
    routing: quick
      ? { ...base, conversations: 48, turns: 3, concurrency: 12, groups: 48, runTimeoutS: 60 }
      : { ...base, conversations: 256, turns: 5, concurrency: 24, groups: 256, runTimeoutS: 180 },
    openRates: [100, 1000],
    openPhaseS: quick ? 6 : 25,
    idleS: quick ? 4 : 10,
    openTurns: 5,
    openTurnSpacingS: 0.25,
    openMaxTokens: 8,
    sustainedFraction: 0.95,
    maxInFlightS: 1,
    drainS: 10,
    settleMs: 500,
    rssSampleMs: 500,
    extrapolateToRps: 1000,
    goals: { cachedRatioMin: 0.9, loadCovMax: 0.05, gossipKBpsPerNodeAt1000Max: 50, rssMbMax: 200 },
  };
}

// ---------------------------------------------------------------- nodes, metrics, RSS

interface Node {
  name: string;
  url: string;
  metricsUrl: string;
  pid: number | undefined;
}

/** an overloaded peer can be slow to answer: 30 s, then one more try */
async function scrape(node: Node): Promise<Sample[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      const res = await fetch(`${node.metricsUrl}/metrics`, { signal: AbortSignal.timeout(30_000) });
      return parseMetrics(await res.text(), 'smg_mesh_');
    } catch (err) {
      if (attempt >= 2)
        throw new Error(`${node.name}: GET /metrics: ${(err as Error).message}`, { cause: err });
    }
  }
}

const scrapeAll = (nodes: Node[]) => Promise.all(nodes.map(scrape));

type RssSampler = ReturnType<typeof rssSampler>;

/** samples every node's VmRSS periodically; `stop()` adds VmHWM (read while the processes live) */
function rssSampler(nodes: Node[], everyMs: number) {
  const maxKb = new Map<string, number>(nodes.map((n) => [n.name, 0]));
  let samples = 0;
  /** max VmRSS over all nodes since the last window() */
  let windowKb = 0;
  const take = () => {
    samples++;
    for (const n of nodes) {
      const kb = procStatusKb(n.pid, 'VmRSS');
      if (!Number.isFinite(kb)) continue;
      maxKb.set(n.name, Math.max(maxKb.get(n.name) ?? 0, kb));
      windowKb = Math.max(windowKb, kb);
    }
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    /** the largest VmRSS of any node since the previous call, MB */
    window(): number {
      take();
      const mb = round(windowKb / 1024, 1);
      windowKb = 0;
      return mb;
    },
    stop() {
      clearInterval(timer);
      take();
      const perNode: Record<string, { maxRssMb: number; hwmMb: number }> = {};
      for (const n of nodes) {
        perNode[n.name] = {
          maxRssMb: round((maxKb.get(n.name) ?? NaN) / 1024, 1),
          hwmMb: round(procStatusKb(n.pid, 'VmHWM') / 1024, 1),
        };
      }
      const vals = Object.values(perNode);
      return {
        samples,
        perNode,
        maxRssMb: Math.max(...vals.map((v) => v.maxRssMb)),
        maxHwmMb: Math.max(...vals.map((v) => v.hwmMb)),
      };
    },
  };
}

// ---------------------------------------------------------------- gossip bytes

interface NodeBytes {
  /** in + out, all topics (swim included), B/s */
  totalBps: number;
  inBps: number;
  outBps: number;
  /** in + out without swim, B/s */
  gossipBps: number;
  /** in + out per topic, B/s */
  byTopicBps: Record<string, number>;
  /** in + out, all topics, bytes per request the whole cluster answered */
  bytesPerRequest: number;
}

interface BytesWindow {
  /** divisor of the rates: the send window (the scrape window also holds the drain, ≤ drainS) */
  windowS: number;
  perNode: Record<string, NodeBytes>;
  meanTotalKBps: number;
  maxTotalKBps: number;
  meanGossipKBps: number;
  /** mean over nodes, in + out, B/s */
  meanByTopicBps: Record<string, number>;
  meanBytesPerRequest: number;
  topics: string[];
}

const BYTES = 'smg_mesh_bytes_total';

function bytesWindow(
  nodes: Node[],
  before: Sample[][],
  after: Sample[][],
  windowS: number,
  requests: number,
) {
  const perNode: Record<string, NodeBytes> = {};
  const topics = new Set<string>();
  nodes.forEach((n, i) => {
    const prev = new Map<string, number>();
    for (const s of before[i])
      if (s.name === BYTES) prev.set(`${s.labels.topic}|${s.labels.direction}`, s.value);
    const byTopic: Record<string, number> = {};
    let inB = 0;
    let outB = 0;
    for (const s of after[i]) {
      if (s.name !== BYTES) continue;
      const d = s.value - (prev.get(`${s.labels.topic}|${s.labels.direction}`) ?? 0);
      topics.add(s.labels.topic);
      byTopic[s.labels.topic] = (byTopic[s.labels.topic] ?? 0) + d;
      if (s.labels.direction === 'in') inB += d;
      else outB += d;
    }
    const total = inB + outB;
    perNode[n.name] = {
      totalBps: round(total / windowS, 1),
      inBps: round(inB / windowS, 1),
      outBps: round(outB / windowS, 1),
      gossipBps: round((total - (byTopic.swim ?? 0)) / windowS, 1),
      byTopicBps: Object.fromEntries(Object.entries(byTopic).map(([t, b]) => [t, round(b / windowS, 1)])),
      bytesPerRequest: round(requests > 0 ? total / requests : NaN, 2),
    };
  });
  const vals = Object.values(perNode);
  const mean = (f: (v: NodeBytes) => number) => vals.reduce((a, v) => a + f(v), 0) / Math.max(1, vals.length);
  const sorted = [...topics].sort();
  return {
    windowS: round(windowS, 2),
    perNode,
    meanTotalKBps: round(mean((v) => v.totalBps) / 1024, 3),
    maxTotalKBps: round(Math.max(...vals.map((v) => v.totalBps)) / 1024, 3),
    meanGossipKBps: round(mean((v) => v.gossipBps) / 1024, 3),
    meanByTopicBps: Object.fromEntries(
      sorted.map((t) => [
        t,
        round(
          mean((v) => v.byTopicBps[t] ?? 0),
          1,
        ),
      ]),
    ),
    meanBytesPerRequest: round(
      mean((v) => v.bytesPerRequest),
      2,
    ),
    topics: sorted,
  } satisfies BytesWindow;
}

// ---------------------------------------------------------------- event lag histogram

const EVENT_LAG = 'smg_mesh_event_lag_seconds';

interface LagQuantiles {
  count: number;
  meanMs: number;
  /** linear interpolation within the bucket (Prometheus histogram_quantile), ms */
  p50Ms: number;
  p99Ms: number;
  /** upper bound of the bucket holding the 99th percentile, ms (Infinity: above the last bound) */
  p99BucketLeMs: number | string;
}

/** p50/p99 of one histogram's delta: `buckets` maps le → cumulative count */
function quantiles(buckets: Map<number, number>, count: number, sum: number): LagQuantiles {
  const les = [...buckets.keys()].sort((a, b) => a - b);
  let bucketLe: number | string = NaN;
  for (const le of les) {
    if ((buckets.get(le) ?? 0) >= 0.99 * count) {
      bucketLe = Number.isFinite(le) ? round(le * 1000, 2) : '+Inf';
      break;
    }
  }
  return {
    count,
    meanMs: round(count ? (sum / count) * 1000 : NaN, 2),
    p50Ms: histogramQuantileMs(buckets, count, 0.5, 2),
    p99Ms: histogramQuantileMs(buckets, count, 0.99, 2),
    p99BucketLeMs: count ? bucketLe : NaN,
  };
}

type EventLag =
  | 'not available'
  | {
      /** per topic: the worst peer's p99 (upper bound of event → all peers p99), and every peer's */
      byTopic: Record<string, { maxP99Ms: number; worstPeer: string; perPeer: Record<string, LagQuantiles> }>;
      maxP99Ms: number;
    };

/** per topic and peer, from the histogram deltas over a window; max over peers */
function eventLag(nodes: Node[], before: Sample[][], after: Sample[][]): EventLag {
  if (!after.some((ss) => ss.some((s) => s.name.startsWith(EVENT_LAG)))) return 'not available';
  const byTopic: Exclude<EventLag, string>['byTopic'] = {};
  nodes.forEach((n, i) => {
    const prev = new Map<string, number>();
    for (const s of before[i]) prev.set(`${s.name}|${s.labels.topic}|${s.labels.le}`, s.value);
    const delta = (s: Sample) => s.value - (prev.get(`${s.name}|${s.labels.topic}|${s.labels.le}`) ?? 0);
    const topics = new Map<string, { buckets: Map<number, number>; count: number; sum: number }>();
    const of = (t: string) => {
      let h = topics.get(t);
      if (!h) topics.set(t, (h = { buckets: new Map(), count: 0, sum: 0 }));
      return h;
    };
    for (const s of after[i]) {
      const topic = s.labels.topic ?? '(none)';
      if (s.name === `${EVENT_LAG}_bucket`)
        of(topic).buckets.set(s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), delta(s));
      else if (s.name === `${EVENT_LAG}_count`) of(topic).count = delta(s);
      else if (s.name === `${EVENT_LAG}_sum`) of(topic).sum = delta(s);
    }
    for (const [topic, h] of topics) {
      if (h.count <= 0) continue;
      const q = quantiles(h.buckets, h.count, h.sum);
      const t = (byTopic[topic] ??= { maxP99Ms: -Infinity, worstPeer: '', perPeer: {} });
      t.perPeer[n.name] = q;
      if (q.p99Ms > t.maxP99Ms) {
        t.maxP99Ms = q.p99Ms;
        t.worstPeer = n.name;
      }
    }
  });
  const all = Object.values(byTopic).map((t) => t.maxP99Ms);
  return { byTopic, maxP99Ms: all.length ? Math.max(...all) : NaN };
}

// ---------------------------------------------------------------- load spread

/** coefficient of variation (population stddev / mean) */
function cov(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (mean === 0) return NaN;
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length;
  return round(Math.sqrt(v) / mean, 4);
}

/** x-mock-worker is host:port */
const engineLabel = (url: string) => new URL(url).host;

// ---------------------------------------------------------------- gateways

interface Gateways {
  nodes: Node[];
  mesh: boolean;
  startS: number;
  stop(): Promise<void>;
}

async function startGateways(size: number, engineUrls: string[], policy: string): Promise<Gateways> {
  const t0 = performance.now();
  const flags = ['--worker-urls', ...engineUrls, '--policy', policy];
  if (size === 1) {
    const g: GatewayProc = await startGatewayProc(flags);
    return {
      nodes: [{ name: 'gateway', url: g.url, metricsUrl: g.metricsUrl, pid: g.child.pid }],
      mesh: false,
      startS: round((performance.now() - t0) / 1000, 1),
      stop: async () => void (await g.stop()),
    };
  }
  const cluster = new MeshCluster(size, { extra: ['--log-level', 'warn', ...flags] });
  try {
    await cluster.start();
    await cluster.waitConverged(90_000);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return {
    nodes: cluster.running().map((p) => ({
      name: p.spec.name,
      url: p.url,
      metricsUrl: p.metricsUrl,
      pid: p.child.pid,
    })),
    mesh: true,
    startS: round((performance.now() - t0) / 1000, 1),
    stop: () => cluster.stop(),
  };
}

/** every node reports every engine healthy; returns each node's /workers count */
async function waitWorkers(nodes: Node[], engines: number): Promise<Record<string, number>> {
  const deadline = Date.now() + 30_000;
  const seen: Record<string, number> = {};
  for (const n of nodes) {
    while (true) {
      const r = (await getJson(`${n.url}/readiness`).catch(() => ({}))) as { healthy_workers?: number };
      if (r.healthy_workers === engines) break;
      if (Date.now() > deadline)
        throw new Error(`${n.name}: ${r.healthy_workers} healthy workers, expected ${engines}`);
      await sleep(100);
    }
    const w = (await getJson(`${n.url}/workers`)) as { workers?: unknown[] };
    seen[n.name] = w.workers?.length ?? NaN;
  }
  return seen;
}

// ---------------------------------------------------------------- 1. routing (closed loop)

interface RoutingRun extends TurnSummary {
  /** cachedFractionFollowUps / the 1-peer baseline's */
  cachedRatioToBaseline: number;
  /** follow-ups served by the engine of the conversation's previous turn, fraction */
  stickyFraction: number;
  loadCov: { requests: number; promptTokens: number };
  perEngine: {
    engine: string;
    requests: number;
    promptTokens: number;
    cachedTokens: number;
    /** the engine's own counters over the run (cross-check) */
    engineRequests: number;
    enginePromptTokens: number;
  }[];
  /** requests sent to each gateway */
  perGateway: Record<string, number>;
  meshBytes: BytesWindow | null;
  eventLag: EventLag | null;
  /** largest VmRSS of any gateway during the run, MB */
  rssMaxMb: number;
  cpu: CpuWindow;
}

async function routingRun(
  gw: Gateways,
  engineUrls: string[],
  mockPid: number | undefined,
  wl: Workload,
  p: CacheAwareParams,
  rss: RssSampler,
): Promise<Omit<RoutingRun, 'cachedRatioToBaseline'>> {
  for (const u of engineUrls) await getJson(`${u}/flush_cache`, 'POST');
  const before = await engineStats(engineUrls);
  const m0 = gw.mesh ? await scrapeAll(gw.nodes) : [];
  const pools = gw.nodes.map(
    (n) => new Pool(n.url, { connections: p.concurrency, pipelining: 1, keepAliveTimeout: 60_000 }),
  );
  const perGateway: Record<string, number> = Object.fromEntries(gw.nodes.map((n) => [n.name, 0]));
  let rr = 0;
  const pick = () => {
    const i = rr++ % pools.length;
    perGateway[gw.nodes[i].name]++;
    return pools[i];
  };
  const cpu = cpuWindow({ ...Object.fromEntries(gw.nodes.map((n) => [n.name, n.pid])), mock: mockPid });
  rss.window();
  const t0 = performance.now();
  let records: TurnRecord[];
  try {
    records = await closedLoop(wl, p, pick);
  } finally {
    await Promise.all(pools.map((x) => x.close()));
  }
  const durationS = (performance.now() - t0) / 1000;
  const win = cpu.end();
  const rssMaxMb = rss.window();
  const after = await engineStats(engineUrls);
  let meshBytes: BytesWindow | null = null;
  let lag: EventLag | null = null;
  if (gw.mesh) {
    await sleep(500);
    const m1 = await scrapeAll(gw.nodes);
    const ok = records.filter((r) => r.status === 200).length;
    meshBytes = bytesWindow(gw.nodes, m0, m1, durationS, ok);
    lag = eventLag(gw.nodes, m0, m1);
  }
  const summary = summarizeTurns(records, durationS);
  const ok = records.filter((r) => r.status === 200);
  const perEngine = engineUrls.map((url, i) => {
    const label = engineLabel(url);
    const mine = ok.filter((r) => r.worker === label);
    return {
      engine: label,
      requests: mine.length,
      promptTokens: mine.reduce((a, r) => a + r.promptTokens, 0),
      cachedTokens: mine.reduce((a, r) => a + r.cachedTokens, 0),
      engineRequests: after[i].requests - before[i].requests,
      enginePromptTokens: after[i].prompt_tokens_total - before[i].prompt_tokens_total,
    };
  });
  const follow = ok.filter((r) => r.turn >= 2).length;
  return {
    ...summary,
    stickyFraction: round(summary.stickyFollowUps / Math.max(1, follow), 4),
    loadCov: {
      requests: cov(perEngine.map((e) => e.requests)),
      promptTokens: cov(perEngine.map((e) => e.promptTokens)),
    },
    perEngine,
    perGateway,
    meshBytes,
    eventLag: lag,
    rssMaxMb,
    cpu: win,
  };
}

// ---------------------------------------------------------------- 2. open loop (gossip volume)

interface OpenPhase {
  kind: 'target' | 'sustainable';
  targetRps: number;
  sendWindowS: number;
  sent: number;
  ok: number;
  errors: number;
  /** not sent: more than rate × maxInFlightS requests were in flight */
  shed: number;
  /** unanswered drainS after the send window */
  unanswered: number;
  /** ok answers / send window */
  achievedRps: number;
  sustained: boolean;
  latencyMs: Distribution;
  /** how late the generator sent vs the schedule */
  sendLagMs: Distribution;
  cachedFraction: number;
  loadCovRequests: number;
  bytes: BytesWindow;
  eventLag: EventLag;
  /** largest VmRSS of any peer during the send window and the drain, MB */
  rssMaxMb: number;
  cpu: CpuWindow;
  firstError?: string;
}

/**
 * Paced open loop at `rate` req/s for `p.openPhaseS`: request i is due at start + i / rate and goes
 * to gateway i mod n. `rate × openTurnSpacingS` conversations are in flight; each request is the
 * next turn of the next conversation (system prompt, earlier turns with a seeded stand-in for the
 * assistant's reply, a new user message), non-streaming.
 */
async function openPhase(
  gw: Gateways,
  engineUrls: string[],
  mockPid: number | undefined,
  kind: OpenPhase['kind'],
  rate: number,
  p: MeshRoutingParams,
  rss: RssSampler,
): Promise<OpenPhase> {
  const base = p.routing;
  const total = Math.ceil(rate * p.openPhaseS);
  let active = Math.max(1, Math.ceil(rate * p.openTurnSpacingS));
  // request i goes to gateway i mod n and continues conversation slot i mod active: with active a
  // multiple of n every turn of a conversation would land on the same gateway
  if (gw.nodes.length > 1 && active % gw.nodes.length === 0) active++;
  const wl = buildWorkload({
    ...base,
    conversations: Math.ceil(total / p.openTurns) + active + 1,
    turns: p.openTurns,
    seed: base.seed + 1000 + rate,
  });
  const replyRnd = seededRandom(base.seed + 2000 + rate);
  // slots of in-flight conversations: [conversation index, messages so far]
  const slots: { ci: number; turn: number; messages: Message[] }[] = [];
  let nextConv = 0;
  const newConv = () => {
    const ci = nextConv++;
    return {
      ci,
      turn: 0,
      messages: [{ role: 'system', content: wl.systems[wl.conversations[ci].group] }] as Message[],
    };
  };
  const nextBody = (i: number): string => {
    const s = i % active;
    let slot = slots[s];
    if (!slot || slot.turn >= p.openTurns) slot = slots[s] = newConv();
    const conv = wl.conversations[slot.ci];
    if (slot.turn > 0) slot.messages.push({ role: 'assistant', content: randomText(replyRnd, 48) });
    slot.messages.push({ role: 'user', content: conv.users[slot.turn] });
    slot.turn++;
    return JSON.stringify({
      model: MODEL,
      messages: slot.messages,
      max_tokens: p.openMaxTokens,
      stream: false,
    });
  };

  const pools = gw.nodes.map(
    (n) =>
      new Pool(n.url, {
        connections: 64,
        pipelining: 1,
        keepAliveTimeout: 60_000,
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      }),
  );
  const latencies: number[] = [];
  const lags: number[] = [];
  const perWorker = new Map<string, number>();
  let ok = 0;
  let errors = 0;
  let shed = 0;
  let inFlight = 0;
  let prompt = 0;
  let cached = 0;
  let firstError: string | undefined;
  const maxInFlight = Math.max(16, Math.ceil(rate * p.maxInFlightS));
  const send = (i: number, body: string) => {
    inFlight++;
    const t = performance.now();
    pools[i % pools.length]
      .request({ path: CHAT_PATH, method: 'POST', headers: { 'content-type': 'application/json' }, body })
      .then(async (res) => {
        const text = await res.body.text();
        if (res.statusCode !== 200) throw new Error(`${res.statusCode} ${text.slice(0, 200)}`);
        latencies.push(performance.now() - t);
        const usage = (JSON.parse(text) as { usage?: ChatUsage }).usage;
        prompt += usage?.prompt_tokens ?? 0;
        cached += usage?.prompt_tokens_details?.cached_tokens ?? 0;
        const w = res.headers['x-mock-worker'];
        const label = typeof w === 'string' ? w : '?';
        perWorker.set(label, (perWorker.get(label) ?? 0) + 1);
        ok++;
      })
      .catch((err: unknown) => {
        if (closed) return;
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
      })
      .finally(() => inFlight--);
  };

  const m0 = await scrapeAll(gw.nodes);
  const cpu = cpuWindow({ ...Object.fromEntries(gw.nodes.map((n) => [n.name, n.pid])), mock: mockPid });
  rss.window();
  const start = performance.now();
  const end = start + p.openPhaseS * 1000;
  let sent = 0;
  let scheduled = 0;
  let closed = false;
  try {
    while (scheduled < total) {
      const now = performance.now();
      if (now >= end + 50) break;
      const due = Math.min(total, Math.floor(((now - start) / 1000) * rate) + 1);
      while (scheduled < due) {
        const i = scheduled++;
        lags.push(now - (start + (i * 1000) / rate));
        if (inFlight >= maxInFlight) {
          shed++;
          continue;
        }
        send(sent, nextBody(sent));
        sent++;
      }
      await sleep(1);
    }
    const sendWindowS = (performance.now() - start) / 1000;
    const drainEnd = performance.now() + p.drainS * 1000;
    while (inFlight > 0 && performance.now() < drainEnd) await sleep(10);
    const unanswered = inFlight;
    const win = cpu.end();
    const rssMaxMb = rss.window();
    // requests still queued on overloaded peers: cancel them (closing the connections) before reading
    closed = true;
    await Promise.all(pools.map((x) => x.destroy()));
    await sleep(p.settleMs);
    const m1 = await scrapeAll(gw.nodes);
    const achievedRps = round(ok / sendWindowS, 1);
    const sustained = shed === 0 && unanswered === 0 && ok >= p.sustainedFraction * total;
    return {
      kind,
      targetRps: rate,
      sendWindowS: round(sendWindowS, 2),
      sent,
      ok,
      errors,
      shed,
      unanswered,
      achievedRps,
      sustained,
      latencyMs: distribution(latencies, 2),
      sendLagMs: distribution(lags, 2),
      cachedFraction: round(cached / Math.max(1, prompt), 4),
      loadCovRequests: cov(engineUrls.map((u) => perWorker.get(engineLabel(u)) ?? 0)),
      bytes: bytesWindow(gw.nodes, m0, m1, sendWindowS, ok),
      eventLag: eventLag(gw.nodes, m0, m1),
      rssMaxMb,
      cpu: win,
      ...(firstError !== undefined && { firstError }),
    };
  } finally {
    if (!closed) await Promise.all(pools.map((x) => x.destroy()));
  }
}

interface IdleWindow {
  bytes: BytesWindow;
  eventLag: EventLag;
  cpu: CpuWindow;
}

async function idleWindow(gw: Gateways, mockPid: number | undefined, seconds: number): Promise<IdleWindow> {
  const m0 = await scrapeAll(gw.nodes);
  const cpu = cpuWindow({ ...Object.fromEntries(gw.nodes.map((n) => [n.name, n.pid])), mock: mockPid });
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const windowS = (performance.now() - t0) / 1000;
  const win = cpu.end();
  const m1 = await scrapeAll(gw.nodes);
  return { bytes: bytesWindow(gw.nodes, m0, m1, windowS, 0), eventLag: eventLag(gw.nodes, m0, m1), cpu: win };
}

interface GossipAt1000 {
  /**
   * measured: a phase answered ≥ 95 % of the target; scaled: the bytes per request of the fastest
   * phase carried to the target (an upper bound while bytes/s grows sublinearly with the rate, as the
   * cache deltas batch more per message at higher rates); unavailable: no phase answered requests
   */
  method: 'measured' | 'scaled' | 'unavailable';
  /** mean over nodes, in + out all topics (swim included) */
  meanKBpsPerNode: number;
  /** the busiest node */
  maxKBpsPerNode: number;
  /** achieved req/s of the phase the figure comes from */
  fromRps: number;
  /** that phase was not sustained (requests shed or unanswered) */
  fromUnsustained: boolean;
  /** per phase: its bytes per request (mean over nodes, all bytes / requests) carried to the target */
  perPhaseKBps: { rps: number; sustained: boolean; bytesPerNodePerRequest: number; kbpsAtTarget: number }[];
  /**
   * least-squares line bytes/s = idle + bytes per request × rate over the sustained phases and the
   * idle window (null with fewer than two distinct rates): a second, cruder extrapolation, high when
   * only low rates were sustained
   */
  linearFit: {
    idleBpsPerNode: number;
    bytesPerNodePerRequest: number;
    kbpsAtTarget: number;
    fromRps: number[];
  } | null;
  note: string;
}

/** least squares y = a + b·x */
function lineFit(pts: [number, number][]): { a: number; b: number } {
  const n = pts.length;
  const mx = pts.reduce((s, [x]) => s + x, 0) / n;
  const my = pts.reduce((s, [, y]) => s + y, 0) / n;
  let sxx = 0;
  let sxy = 0;
  for (const [x, y] of pts) {
    sxx += (x - mx) ** 2;
    sxy += (x - mx) * (y - my);
  }
  const b = sxx > 0 ? sxy / sxx : NaN;
  return { a: my - b * mx, b };
}

/** per-node bytes/s at `target` req/s (see GossipAt1000) */
function gossipAt(phases: OpenPhase[], target: number, idle: IdleWindow | undefined): GossipAt1000 {
  const answered = phases.filter((ph) => ph.ok > 0 && ph.achievedRps > 0);
  const perPhaseKBps = answered.map((ph) => ({
    rps: ph.achievedRps,
    sustained: ph.sustained,
    bytesPerNodePerRequest: round((ph.bytes.meanTotalKBps * 1024) / ph.achievedRps, 2),
    kbpsAtTarget: round((ph.bytes.meanTotalKBps * target) / ph.achievedRps, 3),
  }));
  const pts: [number, number][] = phases
    .filter((ph) => ph.sustained)
    .map((ph) => [ph.achievedRps, ph.bytes.meanTotalKBps * 1024]);
  if (idle) pts.push([0, idle.bytes.meanTotalKBps * 1024]);
  let linearFit: GossipAt1000['linearFit'] = null;
  if (new Set(pts.map(([x]) => Math.round(x))).size >= 2) {
    const f = lineFit(pts);
    linearFit = {
      idleBpsPerNode: round(f.a, 1),
      bytesPerNodePerRequest: round(f.b, 2),
      kbpsAtTarget: round((f.a + f.b * target) / 1024, 3),
      fromRps: pts.map(([x]) => round(x, 1)),
    };
  }
  // the fastest phase (a sustained one when two are equally fast)
  const top = [...answered].sort(
    (a, b) => b.achievedRps - a.achievedRps || Number(b.sustained) - Number(a.sustained),
  )[0];
  if (!top) {
    return {
      method: 'unavailable',
      meanKBpsPerNode: NaN,
      maxKBpsPerNode: NaN,
      fromRps: NaN,
      fromUnsustained: false,
      perPhaseKBps,
      linearFit,
      note: 'no phase answered requests',
    };
  }
  const measured = top.achievedRps >= 0.95 * target;
  const scale = measured ? 1 : target / top.achievedRps;
  const unsustained = top.sustained ? '' : ` (not sustained: ${top.shed} shed, ${top.unanswered} unanswered)`;
  return {
    method: measured ? 'measured' : 'scaled',
    meanKBpsPerNode: round(top.bytes.meanTotalKBps * scale, 3),
    maxKBpsPerNode: round(top.bytes.maxTotalKBps * scale, 3),
    fromRps: top.achievedRps,
    fromUnsustained: !top.sustained,
    perPhaseKBps,
    linearFit,
    note: measured
      ? `measured at ${top.achievedRps} req/s${unsustained}`
      : `${target} req/s not reached on this machine: the bytes per request of the fastest phase, ` +
        `${top.achievedRps} req/s${unsustained}, × ${target} req/s; an upper bound while bytes/s grows ` +
        'sublinearly with the rate (see perPhaseKBps: fewer bytes per request at higher rates)',
  };
}

// ---------------------------------------------------------------- the benchmark

interface SizeRun {
  peers: number;
  mesh: boolean;
  startS: number;
  /** /workers count on each gateway (expected: the number of engines) */
  workersPerGateway: Record<string, number>;
  routing: RoutingRun;
  idle?: IdleWindow;
  open: OpenPhase[];
  openErrors?: string[];
  gossipAt1000: GossipAt1000 | null;
  rss: ReturnType<RssSampler['stop']>;
}

export async function runMeshRoutingBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('mesh-routing', opts);
  const t0 = performance.now();
  const p = meshRoutingParams(opts.quick);
  const wl = buildWorkload(p.routing);
  const notes = [
    'Every request goes to the next gateway in turn (per-request round-robin over all peers), so the ' +
      'turns of a conversation land on different peers; 1 peer = one plain gateway (no --ha-mesh), the ' +
      'baseline of cachedRatioToBaseline.',
    'routing: the cache-aware benchmark workload (closedLoop, streaming with usage); engines flushed ' +
      '(POST /flush_cache) before each run; loadCov = population stddev / mean over the 4 engines of ' +
      'requests (x-mock-worker) and prompt tokens (usage) served.',
    'open: paced open loop (request i due at start + i/rate, gateway i mod n), non-streaming, each ' +
      'request the next turn of one of rate × openTurnSpacingS conversations in flight (assistant turns ' +
      'are seeded stand-ins, not the engine replies). bytes = smg_mesh_bytes_total deltas (payload bytes: ' +
      'swim = UDP datagrams, other topics = gossip payloads; libp2p/TCP framing is not counted) over the ' +
      'send window plus the drain, divided by the send window; bytesPerRequest = a node’s in+out bytes ' +
      '/ requests answered by the whole cluster.',
    'A phase is sustained when nothing was shed or left unanswered and ok ≥ sustainedFraction × the ' +
      'scheduled requests. The target rates run in order; the first one not sustained is followed by a ' +
      '"sustainable" phase at 90 % of the rate it achieved, and no higher target runs. gossipAt1000 is ' +
      'measured when a phase answered ≥ 950 req/s (sustained or not), else scaled from the fastest ' +
      'phase (see its note, perPhaseKBps and linearFit).',
    'eventLag: smg_mesh_event_lag_seconds{topic} histogram deltas per peer over the window, p99 by ' +
      'linear interpolation within the bucket; maxP99Ms = the worst peer (an upper bound of the ' +
      'event-to-all-peers p99). "not available" when no peer exports the family.',
    'idle: idleS without requests before the open phases (3 and 8 peers): the gossip floor per node, ' +
      'also the 0 req/s point of gossipAt1000.linearFit.',
    'rss: VmRSS sampled every rssSampleMs while the gateways run (max per node), VmHWM at the end.',
  ];
  const runs: Record<string, SizeRun> = {};
  const failed: Record<string, string> = {};
  const engines = await startMockFleet(p.routing.engines, p.routing.mockArgs);
  let baselineCached = NaN;
  try {
    for (const size of p.sizes) {
      log(`mesh-routing: ${size} ${size === 1 ? 'gateway (baseline)' : 'mesh peers'}: starting`);
      let gw: Gateways;
      try {
        gw = await startGateways(size, engines.urls, p.policy);
      } catch (err) {
        failed[String(size)] = `start: ${(err as Error).message.split('\n')[0]}`;
        log(`mesh-routing: ${size}: FAILED to start: ${failed[String(size)]}`);
        continue;
      }
      const rss = rssSampler(gw.nodes, p.rssSampleMs);
      let stopped = false;
      try {
        const workersPerGateway = await waitWorkers(gw.nodes, engines.urls.length);
        log(
          `mesh-routing: ${size}: up in ${gw.startS} s; routing ${p.routing.conversations} conversations x ` +
            `${p.routing.turns} turns, ${p.routing.concurrency} at a time, round-robin over ${gw.nodes.length}`,
        );
        const r = await routingRun(gw, engines.urls, engines.child.pid, wl, p.routing, rss);
        if (size === 1) baselineCached = r.cachedFractionFollowUps;
        const routing: RoutingRun = {
          ...r,
          cachedRatioToBaseline: round(r.cachedFractionFollowUps / baselineCached, 4),
        };
        log(
          `mesh-routing: ${size}: cached follow-ups ${r.cachedFractionFollowUps} (x${routing.cachedRatioToBaseline} ` +
            `of baseline), load CoV ${r.loadCov.requests}, TTFT p50 ${r.ttftMs.p50} p99 ${r.ttftMs.p99} ms, ` +
            `${r.rps} rps, errors ${r.errors}`,
        );
        const open: OpenPhase[] = [];
        const openErrors: string[] = [];
        let gossipAt1000: GossipAt1000 | null = null;
        let idle: IdleWindow | undefined;
        if (gw.mesh) {
          try {
            idle = await idleWindow(gw, engines.child.pid, p.idleS);
            log(
              `mesh-routing: ${size}: idle ${p.idleS} s: ${idle.bytes.meanTotalKBps} KB/s/node, peers ` +
                `${round(
                  Object.values(idle.cpu.procCores).reduce((a, b) => a + b, 0),
                  2,
                )} cores (mock included)`,
            );
          } catch (err) {
            openErrors.push(`idle: ${(err as Error).message}`);
          }
          const phase = async (kind: OpenPhase['kind'], rate: number) => {
            try {
              const ph = await openPhase(gw, engines.urls, engines.child.pid, kind, rate, p, rss);
              open.push(ph);
              log(
                `mesh-routing: ${size}: open ${rate} req/s${kind === 'target' ? '' : ' (lower rate)'} → ` +
                  `${ph.achievedRps} achieved (sustained ${ph.sustained}, shed ${ph.shed}, errors ${ph.errors}), ` +
                  `${ph.bytes.meanTotalKBps} KB/s/node (${ph.bytes.meanBytesPerRequest} B/node/request)`,
              );
              return ph;
            } catch (err) {
              openErrors.push(`${rate} req/s: ${(err as Error).message}`);
              log(`mesh-routing: ${size}: open ${rate} req/s FAILED: ${(err as Error).message}`);
              return undefined;
            }
          };
          // the target rates in order while they are sustained; when one is not, one more phase at
          // 90 % of what it achieved (the highest sustainable rate, for the extrapolation)
          for (const rate of p.openRates) {
            const ph = await phase('target', rate);
            if (ph && !ph.sustained) {
              if (ph.achievedRps > 0)
                await phase('sustainable', Math.max(1, Math.floor(ph.achievedRps * 0.9)));
              break;
            }
          }
          gossipAt1000 = gossipAt(open, p.extrapolateToRps, idle);
        }
        const rssOut = rss.stop();
        stopped = true;
        runs[String(size)] = {
          peers: size,
          mesh: gw.mesh,
          startS: gw.startS,
          workersPerGateway,
          routing,
          ...(idle && { idle }),
          open,
          ...(openErrors.length > 0 && { openErrors }),
          gossipAt1000,
          rss: rssOut,
        };
      } catch (err) {
        failed[String(size)] = (err as Error).message.split('\n')[0];
        log(`mesh-routing: ${size}: FAILED: ${(err as Error).stack ?? ''}`);
      } finally {
        if (!stopped) rss.stop();
        await gw.stop();
      }
      await sleep(500);
    }
  } finally {
    await engines.stop();
    await stopAll();
  }

  const sizes = Object.values(runs);
  if (sizes.length === 0) throw new Error(`every cluster size failed: ${JSON.stringify(failed)}`);
  const meshRuns = sizes.filter((r) => r.mesh);
  const rssMax = meshRuns.length
    ? Math.max(...meshRuns.map((r) => Math.max(r.rss.maxRssMb, r.rss.maxHwmMb)))
    : NaN;
  const g = p.goals;
  const lagText = (r: SizeRun) => {
    const lags = [r.routing.eventLag, ...r.open.map((o) => o.eventLag)].filter(
      (l): l is Exclude<EventLag, string> => l !== null && l !== 'not available',
    );
    return lags.length ? String(Math.max(...lags.map((l) => l.maxP99Ms))) : 'n/a';
  };
  const goals = {
    cachedRatio: Object.fromEntries(
      meshRuns.map((r) => [r.peers, { value: r.routing.cachedRatioToBaseline, goalMin: g.cachedRatioMin }]),
    ),
    loadCovRequests: Object.fromEntries(
      sizes.map((r) => [r.peers, { value: r.routing.loadCov.requests, goalMax: g.loadCovMax }]),
    ),
    gossipKBpsPerNodeAt1000: Object.fromEntries(
      meshRuns.map((r) => [
        r.peers,
        {
          value: r.gossipAt1000?.meanKBpsPerNode ?? NaN,
          max: r.gossipAt1000?.maxKBpsPerNode ?? NaN,
          method: r.gossipAt1000?.method,
          goalMax: g.gossipKBpsPerNodeAt1000Max,
        },
      ]),
    ),
    rssMb: { value: rssMax, goalMax: g.rssMbMax, met: rssMax <= g.rssMbMax },
    eventLagP99Ms: Object.fromEntries(meshRuns.map((r) => [r.peers, lagText(r)])),
  };
  const windows = sizes.flatMap((r) => [r.routing.cpu, ...r.open.map((o) => o.cpu)]);
  const otherMax = Math.max(...windows.map((w) => w.otherCores));
  const result = {
    ...header,
    params: p,
    notes,
    engines: engines.urls,
    runs,
    ...(Object.keys(failed).length > 0 && { failed }),
    goals,
    // busy cores not used by this benchmark's processes, max over the load windows: compare runs only when ~0
    otherCoresMax: otherMax,
    durationS: round((performance.now() - t0) / 1000, 1),
    loadAvgAfter: loadAvg(),
  };
  const part = (r: SizeRun) => {
    const rt = r.routing;
    let s =
      `${r.peers}p: cached ${rt.cachedFractionFollowUps} (x${rt.cachedRatioToBaseline}) CoV ${rt.loadCov.requests}` +
      `/${rt.loadCov.promptTokens} TTFT ${rt.ttftMs.p50}/${rt.ttftMs.p99} ms`;
    if (r.mesh) {
      const rates = r.open.map((o) => `${o.bytes.meanTotalKBps}@${o.achievedRps}`).join(' ');
      const at = r.gossipAt1000;
      s +=
        ` gossip KB/s/node ${rates}; @1000 ${at?.meanKBpsPerNode} (${at?.method === 'scaled' ? `scaled from ${at.fromRps} req/s` : at?.method}); ` +
        `RSS ${Math.max(r.rss.maxRssMb, r.rss.maxHwmMb)} MB; lag p99 ${lagText(r)} ms`;
    }
    return s;
  };
  const summary =
    sizes.map(part).join(' | ') +
    Object.entries(failed)
      .map(([n, e]) => ` | ${n}p FAILED: ${e}`)
      .join('') +
    ` | other load on the machine up to ${otherMax} cores` +
    ` | goals: cached ratio ≥ ${g.cachedRatioMin}, CoV ≤ ${g.loadCovMax}, ≤ ${g.gossipKBpsPerNodeAt1000Max} KB/s/node ` +
    `@1000, RSS ≤ ${g.rssMbMax} MB`;
  return { result, summary };
}
