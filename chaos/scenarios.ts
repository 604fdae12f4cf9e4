/**
 * Chaos scenarios against real processes: N `smg launch --ha-mesh` peers on 127.0.0.2…, a fleet
 * of mock engines, conversation load through a failover client, admin writes to random live peers
 * during the fault, then convergence, lost writes, routing consistency and (when the endpoint
 * exists) cluster-wide over-admission are measured. See docs/chaos.md.
 */
import { seededRandom } from '../bench/common.js';
import { freePorts, spawnSmg, startMockFleet, waitFor, type Proc } from '../src/testing/processes.js';
import { NetnsNetwork, stopNetnsProcs } from './netns.js';
import { ChaosCluster } from './cluster.js';
import { ConversationLoad, FailoverClient, describe } from './client.js';
import {
  admissionStats,
  baselineConsistency,
  lostWrites,
  percentile,
  routingConsistency,
  type AdmissionStats,
  type ScenarioResult,
  type WriteRecord,
} from './report.js';

export const SCENARIOS = ['kill', 'restart', 'pause', 'partition', 'loss'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface ChaosOptions {
  peers: number;
  seed: number;
  length: 'short' | 'normal' | 'long';
  /** the peers' routing policy (default cache_aware) */
  policy?: string;
  /** progress lines (stderr in the CLI) */
  log?: (msg: string) => void;
}

interface Timing {
  warmupMs: number;
  holdMs: number;
  tailMs: number;
  convergenceTimeoutMs: number;
  concurrency: number;
  conversations: number;
  maxRequests: number;
  writeIntervalMs: number;
  admissionMs: number;
}

const TIMING: Record<ChaosOptions['length'], Timing> = {
  short: {
    warmupMs: 2000,
    holdMs: 4500,
    tailMs: 1000,
    // a healed partition can wait for SWIM's 30 s push-pull (docs/chaos.md)
    convergenceTimeoutMs: 45_000,
    concurrency: 4,
    conversations: 24,
    maxRequests: 20_000,
    writeIntervalMs: 150,
    admissionMs: 3000,
  },
  normal: {
    warmupMs: 4000,
    holdMs: 10_000,
    tailMs: 4000,
    convergenceTimeoutMs: 45_000,
    concurrency: 6,
    conversations: 48,
    maxRequests: 50_000,
    writeIntervalMs: 100,
    admissionMs: 6000,
  },
  long: {
    warmupMs: 6000,
    holdMs: 20_000,
    tailMs: 8000,
    convergenceTimeoutMs: 60_000,
    concurrency: 8,
    conversations: 96,
    maxRequests: 150_000,
    writeIntervalMs: 100,
    admissionMs: 8000,
  },
};

export const MODEL = 'chaos-model';
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function getJson(url: string, timeoutMs = 2000): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body };
}

async function postJson(
  url: string,
  body: unknown,
  timeoutMs = 5000,
): Promise<{ status: number; body: string }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: res.status, body: await res.text() };
}

/** what one peer reports: alive members, config, registry */
interface PeerView {
  alive: string;
  config: Record<string, string>;
  registry: string;
}

async function peerView(url: string): Promise<PeerView> {
  const [st, cfg, reg] = await Promise.all([
    getJson(`${url}/mesh/status`),
    getJson(`${url}/mesh/config`),
    getJson(`${url}/workers`),
  ]);
  if (st.status !== 200 || cfg.status !== 200 || reg.status !== 200) {
    throw new Error(`${url}: status ${st.status}/${cfg.status}/${reg.status}`);
  }
  const alive = (st.body as { nodes: { name: string; status: string }[] }).nodes
    .filter((n) => n.status === 'alive')
    .map((n) => n.name)
    .sort()
    .join(',');
  const config: Record<string, string> = {};
  for (const [k, v] of Object.entries(cfg.body as Record<string, { value: string }>)) config[k] = v.value;
  const registry = (reg.body as { workers: { id: string; url: string }[] }).workers
    .map((w) => `${w.url}=${w.id}`)
    .sort()
    .join(',');
  return { alive, config, registry };
}

function sameConfig(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

/** when each part of the agreement was last seen missing (ms after `from`), for the report */
export interface AgreementParts {
  members: number;
  config: number;
  registry: number;
}

/** ms until every live peer sees exactly the live peers alive and all agree on config and registry */
async function waitAgreement(
  cluster: ChaosCluster,
  from: number,
  timeoutMs: number,
  parts: AgreementParts = { members: 0, config: 0, registry: 0 },
): Promise<number | null> {
  const deadline = from + timeoutMs;
  while (Date.now() < deadline) {
    const live = cluster.liveIndexes();
    const names = live
      .map((i) => cluster.specs[i].name)
      .sort()
      .join(',');
    try {
      const views = await Promise.all(live.map((i) => peerView(cluster.peer(i).url)));
      const now = Date.now() - from;
      const members = views.every((v) => v.alive === names);
      const registry = views.every((v) => v.registry === views[0].registry);
      const config = views.every((v) => sameConfig(v.config, views[0].config));
      if (!members) parts.members = now;
      if (!registry) parts.registry = now;
      if (!config) parts.config = now;
      if (members && registry && config) return now;
    } catch {
      // a peer not answering yet: not converged
    }
    await sleep(100);
  }
  return null;
}

/**
 * Watches the live peers' /mesh/status while a fault holds: did any peer notice (a member not
 * alive), and how soon. A fault nobody noticed tested nothing.
 */
class FaultObserver {
  detectionMs: number | null = null;
  maxNotAlive = 0;
  private stopped = false;
  private running: Promise<void> | undefined;

  constructor(private readonly cluster: ChaosCluster) {}

  start(from: number, maxMs: number): void {
    this.running = (async () => {
      while (!this.stopped && Date.now() - from < maxMs) {
        await Promise.all(
          this.cluster.liveIndexes().map(async (i) => {
            try {
              const st = await getJson(`${this.cluster.peer(i).url}/mesh/status`, 1000);
              const nodes = (st.body as { nodes: { status: string }[] }).nodes;
              const notAlive = nodes.filter((n) => n.status !== 'alive').length;
              if (notAlive > 0 && this.detectionMs === null) this.detectionMs = Date.now() - from;
              this.maxNotAlive = Math.max(this.maxNotAlive, notAlive);
            } catch {
              // a peer that does not answer is not an observation
            }
          }),
        );
        await sleep(200);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }
}

/** admin writes (POST /mesh/config, unique keys) to random live peers until stopped */
class AdminWriter {
  readonly writes: WriteRecord[] = [];
  private stopped = false;
  private running: Promise<void> | undefined;
  private n = 0;

  constructor(
    private readonly cluster: ChaosCluster,
    private readonly prefix: string,
    private readonly intervalMs: number,
    private readonly rnd: () => number,
    private readonly maxWrites = 2000,
  ) {}

  start(): void {
    this.running = (async () => {
      while (!this.stopped && this.n < this.maxWrites) {
        const live = this.cluster.liveIndexes();
        if (live.length > 0) {
          const i = live[Math.floor(this.rnd() * live.length)];
          const peer = this.cluster.peers[i];
          const key = `${this.prefix}.${this.n}`;
          const value = (this.n++ + 0x1000).toString(16).padStart(8, '0');
          let acked = false;
          if (peer) {
            try {
              acked = (await postJson(`${peer.url}/mesh/config`, { key, value })).status === 200;
            } catch {
              acked = false; // the peer died or hung mid-write: not acknowledged, not counted as lost
            }
          }
          this.writes.push({ key, value, peer: this.cluster.specs[i].name, acked });
        }
        await sleep(this.intervalMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }
}

/** the cluster-wide rate limit phase; 'not available' when the endpoint answers 404 */
async function admissionPhase(
  cluster: ChaosCluster,
  client: FailoverClient,
  ms: number,
  log: (m: string) => void,
): Promise<AdmissionStats | 'not available'> {
  const live = cluster.liveIndexes();
  const url = cluster.peer(live[0]).url;
  const probe = await getJson(`${url}/mesh/rate-limit`).catch(() => ({ status: 0, body: undefined }));
  if (probe.status === 404) return 'not available';
  const limit = 20;
  const set = await postJson(`${url}/mesh/rate-limit`, { limit_per_second: limit });
  if (set.status === 404) return 'not available';
  if (set.status >= 300)
    throw new Error(`POST /mesh/rate-limit: HTTP ${set.status} ${set.body.slice(0, 200)}`);
  // the limit must reach every live peer before the phase counts
  let seenBy = 0;
  for (let k = 0; k < 50; k++) {
    const seen = await Promise.all(
      live.map((i) =>
        getJson(`${cluster.peer(i).url}/mesh/rate-limit`)
          .then((r) => (r.body as { limit_per_second?: number }).limit_per_second === limit)
          .catch(() => false),
      ),
    );
    seenBy = seen.filter(Boolean).length;
    if (seenBy === live.length) break;
    await sleep(100);
  }
  log(`admission: the limit is reported by ${seenBy}/${live.length} live peers`);
  await sleep(1000); // a whole window without earlier traffic
  log(`admission: limit ${limit}/s, offering ${limit * 3}/s for ${ms} ms over ${live.length} peers`);
  const sends: { sentAt: number; status: number }[] = [];
  const inflight: Promise<void>[] = [];
  const interval = 1000 / (limit * 3);
  const t0 = Date.now();
  for (let k = 0; Date.now() - t0 < ms && k < 100_000; k++) {
    const due = t0 + k * interval;
    if (due > Date.now()) await sleep(due - Date.now());
    const sentAt = Date.now();
    inflight.push(
      client
        .post('/v1/chat/completions', {
          model: MODEL,
          messages: [{ role: 'user', content: `admission probe ${k}` }],
          max_tokens: 1,
        })
        .then((r) => {
          sends.push({ sentAt, status: r.status });
        }),
    );
  }
  await Promise.all(inflight);
  await postJson(`${url}/mesh/rate-limit`, { limit_per_second: 0 }).catch(() => undefined);
  return admissionStats(limit, sends);
}

/** failures grouped by peer, with when they happened relative to the fault and the heal */
function failureSummary(
  failures: { at: number; peer: string; what: string }[],
  faultAt: number,
  healAt: number,
  cluster: ChaosCluster,
): string[] {
  const byPeer = new Map<string, { at: number; what: string }[]>();
  for (const f of failures) {
    let list = byPeer.get(f.peer);
    if (!list) byPeer.set(f.peer, (list = []));
    list.push(f);
  }
  const name = (url: string) => cluster.specs.find((s) => url === `http://${s.host}:${s.port}`)?.name ?? url;
  return [...byPeer].map(([peer, list]) => {
    const first = list[0].at;
    const last = list[list.length - 1].at;
    return (
      `${list.length} on ${name(peer)} from fault${fmtOffset(first - faultAt)} to fault${fmtOffset(last - faultAt)} ` +
      `(heal at fault${fmtOffset(healAt - faultAt)}), e.g. ${list[0].what}`
    );
  });
}

const fmtOffset = (ms: number) => `${ms >= 0 ? '+' : ''}${ms} ms`;

/**
 * waits until every live peer answers a chat completion with 200 (readiness alone does not mean
 * the model is routable yet); returns how long that took
 */
async function waitServing(
  cluster: ChaosCluster,
  timeoutMs: number,
  indexes = cluster.liveIndexes(),
): Promise<number> {
  const t0 = Date.now();
  for (const i of indexes) {
    const url = cluster.peer(i).url;
    for (;;) {
      let status: number;
      try {
        status = (
          await postJson(`${url}/v1/chat/completions`, {
            model: MODEL,
            messages: [{ role: 'user', content: 'are you serving?' }],
            max_tokens: 1,
          })
        ).status;
      } catch {
        status = 0;
      }
      if (status === 200) break;
      if (Date.now() - t0 > timeoutMs)
        throw new Error(`${cluster.specs[i].name} not serving after ${timeoutMs} ms`);
      await sleep(100);
    }
  }
  return Date.now() - t0;
}

export interface RunContext {
  mocks: Proc & { urls: string[] };
  /** root mode: the namespaces the peers run in */
  netns?: NetnsNetwork;
}

const MOCK_FLAGS = ['--model', MODEL, '--ttft-ms', '2', '--output-tokens', '4'];

/**
 * starts the mock engines shared by every scenario of a run; with `netnsPeers` (root mode) first
 * creates the namespaces and binds the engines on the bridge address the peers reach
 */
export async function startEngines(count = 4, netnsPeers = 0): Promise<RunContext> {
  if (netnsPeers === 0) return { mocks: await startMockFleet(count, MOCK_FLAGS) };
  const netns = new NetnsNetwork(netnsPeers);
  netns.setup();
  try {
    const host = netns.hostIp;
    const [base] = await freePorts(count, host);
    const mocks = spawnSmg([
      'mock-worker',
      '--host',
      host,
      '--port',
      String(base),
      '--count',
      String(count),
      ...MOCK_FLAGS,
    ]);
    const urls = Array.from({ length: count }, (_, k) => `http://${host}:${base + k}`);
    await Promise.all(
      urls.map((u) =>
        waitFor(
          async () => (await fetch(`${u}/health`, { signal: AbortSignal.timeout(1000) })).status === 200,
          15_000,
          `mock ${u}`,
          mocks,
        ),
      ),
    );
    return { mocks: Object.assign(mocks, { urls }), netns };
  } catch (err) {
    netns.teardown();
    throw err;
  }
}

/** stops the engines and removes the namespaces */
export async function stopEngines(ctx: RunContext): Promise<void> {
  await stopNetnsProcs();
  await ctx.mocks.stop();
  ctx.netns?.teardown();
}

export async function runScenario(
  name: ScenarioName,
  ctx: RunContext,
  opts: ChaosOptions,
): Promise<ScenarioResult> {
  const t = TIMING[opts.length];
  const log = opts.log ?? (() => {});
  const rnd = seededRandom(opts.seed);
  const started = Date.now();
  const netns = ctx.netns;
  if (netns && netns.size !== opts.peers) throw new Error('the namespaces were made for another peer count');
  netns?.heal();
  let mode = netns ? 'netns' : 'fault-file';
  const cluster = new ChaosCluster(opts.peers, {
    ...(netns && { netns }),
    extra: ['--worker-urls', ctx.mocks.urls.join(','), '--policy', opts.policy ?? 'cache_aware'],
  });
  const client = new FailoverClient(() => cluster.allUrls());
  let load: ConversationLoad | undefined;
  let writer: AdminWriter | undefined;
  try {
    log(`${name}: starting ${opts.peers} peers`);
    await cluster.start();
    const c0 = await waitAgreement(cluster, Date.now(), 60_000);
    if (c0 === null) throw new Error('the cluster did not converge at start');
    const serving = await waitServing(cluster, 30_000);
    log(`${name}: cluster up (converged in ${c0} ms, every peer serving ${serving} ms later)`);

    load = new ConversationLoad(client, {
      seed: opts.seed,
      conversations: t.conversations,
      concurrency: t.concurrency,
      maxTurns: 10_000,
      maxRequests: t.maxRequests,
      maxMs: t.warmupMs + t.holdMs + t.convergenceTimeoutMs + t.tailMs + 120_000,
      model: MODEL,
    });
    load.start();
    await sleep(t.warmupMs);
    log(
      `${name}: warm (${load.requestsSent} requests, ${load.started()}/${t.conversations} conversations begun)`,
    );

    writer = new AdminWriter(cluster, `chaos.${name}.${opts.seed}`, t.writeIntervalMs, rnd);
    writer.start();
    await sleep(300);

    const victim = Math.floor(rnd() * opts.peers);
    const vname = cluster.specs[victim].name;
    let fault = '';
    const faultAt = Date.now();
    let healAt = faultAt;
    const parts: AgreementParts = { members: 0, config: 0, registry: 0 };
    let killAgreement: Promise<number | null> | undefined;
    const observer = new FaultObserver(cluster);
    observer.start(faultAt, t.holdMs + 10_000);
    switch (name) {
      case 'kill': {
        fault = `kill -9 ${vname}, left dead (convergence counted from the kill)`;
        await cluster.kill(victim, 'SIGKILL');
        // nothing heals: agreement (the survivors seeing the dead peer gone) is timed from the kill
        killAgreement = waitAgreement(cluster, faultAt, t.convergenceTimeoutMs, parts);
        await sleep(t.holdMs);
        break;
      }
      case 'restart': {
        fault = `kill -9 ${vname}, restarted from its data dir without seeds after ${t.holdMs} ms`;
        await cluster.kill(victim, 'SIGKILL');
        await sleep(t.holdMs);
        const t1 = Date.now();
        await cluster.startPeer(victim, [], { seeds: false });
        healAt = Date.now();
        const serving = await waitServing(cluster, 30_000, [victim]).catch(() => null);
        fault += ` (ready in ${healAt - t1} ms, serving chat ${serving === null ? 'not within 30 s' : `${serving} ms`} after ready)`;
        break;
      }
      case 'pause': {
        fault = `SIGSTOP ${vname} for ${t.holdMs} ms, then SIGCONT`;
        cluster.pause(victim);
        await sleep(t.holdMs);
        cluster.resume(victim);
        healAt = Date.now();
        break;
      }
      case 'partition': {
        const k = Math.max(1, Math.floor(opts.peers / 2));
        const order = [...Array(opts.peers).keys()].sort(() => rnd() - 0.5);
        const a = order.slice(0, k).sort();
        const b = order.slice(k).sort();
        const hosts = (ix: number[]) => ix.map((i) => cluster.specs[i].host);
        if (netns) netns.partition(a, b);
        else {
          for (const i of a) cluster.writeFaults(i, { blockHosts: hosts(b) });
          for (const i of b) cluster.writeFaults(i, { blockHosts: hosts(a) });
        }
        const side = (ix: number[]) => ix.map((i) => cluster.specs[i].name).join('+');
        const how = netns ? 'blackhole routes in the namespaces' : 'fault files';
        fault = `partition {${side(a)}} | {${side(b)}} for ${t.holdMs} ms (${how}), then healed`;
        await sleep(t.holdMs);
        if (netns) netns.heal();
        else cluster.clearFaults();
        healAt = Date.now();
        break;
      }
      case 'loss': {
        const spec = { lossRate: 0.3, delayMs: 40 };
        if (netns?.netem) {
          fault = `netem ${spec.lossRate * 100} % loss + ${spec.delayMs} ms delay on every peer's link for ${t.holdMs} ms`;
          netns.impair(spec.lossRate * 100, spec.delayMs);
        } else {
          if (netns) mode = 'netns (no netem in this kernel: loss by fault files)';
          fault = `${spec.lossRate * 100} % datagram loss + ${spec.delayMs} ms delay on every peer for ${t.holdMs} ms (fault files)`;
          for (let i = 0; i < opts.peers; i++) cluster.writeFaults(i, spec);
        }
        await sleep(t.holdMs);
        if (netns?.netem) netns.unimpair();
        else cluster.clearFaults();
        healAt = Date.now();
        break;
      }
    }
    await observer.stop();
    log(`${name}: ${fault}; first noticed after ${observer.detectionMs ?? 'never'} ms`);
    // writes go on a little past the heal, then stop so agreement can be judged
    await sleep(500);
    await writer.stop();
    const convergenceMs = await (killAgreement ??
      waitAgreement(cluster, healAt, t.convergenceTimeoutMs, parts));
    log(
      `${name}: convergence ${convergenceMs === null ? 'timed out' : `${convergenceMs} ms`} after the heal ` +
        `(last disagreement: members ${parts.members} ms, config ${parts.config} ms, registry ${parts.registry} ms)`,
    );
    await sleep(t.tailMs);
    await load.stop();

    // lost writes: read every live peer's config (after convergence, or at its timeout)
    const configs: Record<string, Record<string, string>> = {};
    for (const i of cluster.liveIndexes()) {
      configs[cluster.specs[i].name] = (await peerView(cluster.peer(i).url)).config;
    }
    const lw = lostWrites(writer.writes, configs);

    let admission: ScenarioResult['admission'] = 'not run';
    try {
      admission = await admissionPhase(cluster, client, t.admissionMs, log);
    } catch (err) {
      log(`${name}: admission phase failed: ${describe(err)}`);
      admission = 'not run';
    }

    const turns = load.turns;
    const ok = turns.filter((x) => x.ok).length;
    const routing = routingConsistency(turns, faultAt);
    return {
      scenario: name,
      mode,
      peers: opts.peers,
      seed: opts.seed,
      fault,
      durationMs: Date.now() - started,
      requests: {
        sent: turns.length,
        ok,
        failed: turns.length - ok,
        retried: client.counts.retried,
        failovers: client.counts.failovers,
      },
      latencyMs: {
        p50: percentile(load.latencies, 50),
        p99: percentile(load.latencies, 99),
        max: percentile(load.latencies, 100),
      },
      writes: {
        acked: lw.acked,
        unacked: lw.unacked,
        lost: lw.lost.length,
        lostExamples: lw.lost.slice(0, 5),
      },
      observed: {
        detectionMs: observer.detectionMs,
        maxNotAlive: observer.maxNotAlive,
        required: name !== 'loss',
      },
      convergenceMs,
      convergenceParts: parts,
      convergenceTimeoutMs: t.convergenceTimeoutMs,
      routing: { ...routing, baseline: baselineConsistency(turns, faultAt) },
      admission,
      failureSamples: failureSummary(load.failures, faultAt, healAt, cluster),
    };
  } finally {
    await writer?.stop();
    await load?.stop();
    await client.close();
    await cluster.stop();
  }
}
