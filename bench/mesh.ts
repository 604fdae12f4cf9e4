/**
 * HA mesh benchmark: real `smg launch --ha-mesh` peers on loopback (MeshCluster), no workers.
 *
 * 1. Registry write → visible on every other peer (HTTP), at 3 and 8 peers: W sequential
 *    `POST /mesh/config` writes, round-robin over the peers; each other peer is polled with
 *    `GET /mesh/config/<key>` every 2 ms (keep-alive) until all answer 200. Plus the peers' own
 *    smg_mesh_apply_lag_seconds (publish → applied, in-process). Goal p99 ≤ 100 ms.
 * 2. kill -9 → `dead` on every survivor (default SWIM timings): a random peer is SIGKILLed, every
 *    survivor's /mesh/status is polled every 50 ms; then the peer is restarted from its data dir and
 *    the cluster reconverges before the next trial. Goal median ≤ 5 s.
 * 3. False positives under CPU saturation: 3 peers, 2 busy-loop child processes (one per core of
 *    the reference machine) while /mesh/status of each peer is polled every 500 ms; then the same
 *    window without hogs as the baseline.
 * 4. Idle traffic per node: smg_mesh_bytes_total deltas (swim = UDP datagrams; gossip = topic
 *    payloads) and, where `ss` can see them, the TCP bytes on the mesh connections (libp2p framing,
 *    gossipsub control, anti-entropy sessions included).
 * 5. RSS per node (VmRSS) after convergence and after the write test. Goal ≤ 200 MB.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { MeshCluster, meshStatus, type MeshPeer, type MeshStatus } from '../src/testing/mesh-cluster.js';
import { startMockFleet, type MockFleetProc } from '../src/testing/processes.js';
import {
  cpuWindow,
  distribution,
  log,
  loadAvg,
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

// ---------------------------------------------------------------- helpers

async function scrape(peer: MeshPeer): Promise<Sample[]> {
  const res = await fetch(`${peer.metricsUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  return parseMetrics(await res.text(), 'smg_mesh_');
}

function sumOf(samples: Sample[], name: string, match: (l: Record<string, string>) => boolean = () => true) {
  let s = 0;
  for (const x of samples) if (x.name === name && match(x.labels)) s += x.value;
  return s;
}

/** VmRSS of a process in MB (NaN when unreadable) */
function rssMb(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? round(Number(m[1]) / 1024, 1) : NaN;
  } catch {
    return NaN;
  }
}

function rssOf(cluster: MeshCluster): { perNodeMb: Record<string, number>; maxMb: number } {
  const perNodeMb: Record<string, number> = {};
  for (const p of cluster.running()) perNodeMb[p.spec.name] = rssMb(p.child.pid);
  return { perNodeMb, maxMb: Math.max(...Object.values(perNodeMb)) };
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `workerUrl`: peers answer /readiness 200 only with a healthy worker; the first peer adds it */
async function startCluster(size: number, workerUrl: string): Promise<MeshCluster> {
  const cluster = new MeshCluster(size, {
    extra: ['--log-level', 'warn'],
    firstExtra: ['--worker-urls', workerUrl],
  });
  const t0 = performance.now();
  try {
    await cluster.start();
    await cluster.waitConverged(60_000);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  log(`mesh: ${size} peers converged in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return cluster;
}

// ---------------------------------------------------------------- 1. write → visible everywhere

const POLL_MS = 2;
const WRITE_TIMEOUT_MS = 10_000;

interface LagHistogram {
  count: number;
  meanMs: number;
  /** upper bound (le) of the bucket holding the 99th percentile, ms */
  p99BucketLeMs: number;
  /** upper bound of the bucket holding the median, ms */
  p50BucketLeMs: number;
  /** the percentiles interpolated linearly within their bucket, ms (Prometheus histogram_quantile) */
  p50EstMs: number;
  p99EstMs: number;
}

function lagDelta(before: Sample[][], after: Sample[][]): LagHistogram {
  const name = 'smg_mesh_apply_lag_seconds';
  let count = 0;
  let sum = 0;
  const buckets = new Map<number, number>();
  for (let i = 0; i < after.length; i++) {
    count += sumOf(after[i], `${name}_count`) - sumOf(before[i], `${name}_count`);
    sum += sumOf(after[i], `${name}_sum`) - sumOf(before[i], `${name}_sum`);
    for (const s of after[i]) {
      if (s.name !== `${name}_bucket`) continue;
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      const b = sumOf(before[i], `${name}_bucket`, (l) => l.le === s.labels.le);
      buckets.set(le, (buckets.get(le) ?? 0) + s.value - b);
    }
  }
  const les = [...buckets.keys()].sort((a, b) => a - b);
  const bucketFor = (q: number) => {
    for (const le of les) if ((buckets.get(le) ?? 0) >= q * count) return round(le * 1000, 1);
    return NaN;
  };
  return {
    count,
    meanMs: round(count ? (sum / count) * 1000 : NaN, 2),
    p50BucketLeMs: count ? bucketFor(0.5) : NaN,
    p99BucketLeMs: count ? bucketFor(0.99) : NaN,
    p50EstMs: histogramQuantileMs(buckets, count, 0.5, 1),
    p99EstMs: histogramQuantileMs(buckets, count, 0.99, 1),
  };
}

interface WriteResult {
  peers: number;
  writes: number;
  timeouts: number;
  /** POST /mesh/config answered (the write is committed on the writer), ms from t0 */
  postMs: Distribution;
  /** the first other peer answers 200 */
  firstVisibleMs: Distribution;
  /** every other peer answers 200: the headline figure */
  allVisibleMs: Distribution;
  applyLag: LagHistogram;
  goalP99Ms: number;
  met: boolean;
  wallS: number;
  /** CPU over the write loop: the benchmark process (HTTP polling) and the peers */
  cpu: CpuWindow;
}

function peerPids(peers: MeshPeer[]): Record<string, number | undefined> {
  return Object.fromEntries(peers.map((p) => [p.spec.name, p.child.pid]));
}

interface QuietWriteResult {
  peers: number;
  writes: number;
  spacingMs: number;
  applyLag: LagHistogram;
  cpu: CpuWindow;
}

/**
 * The same writes without any HTTP polling, one every `spacingMs`: only the peers' own apply-lag
 * histogram, i.e. the mesh's latency when this process does not load the machine.
 */
async function quietWrites(
  cluster: MeshCluster,
  writes: number,
  spacingMs: number,
): Promise<QuietWriteResult> {
  const peers = cluster.running();
  const pools = peers.map(
    (p) => new Pool(p.url, { connections: 1, headersTimeout: 5000, bodyTimeout: 5000 }),
  );
  const value = Buffer.from('mesh-bench-quiet-0123456789abcdef').toString('hex');
  const runId = Date.now().toString(36);
  try {
    const before = await Promise.all(peers.map(scrape));
    const cpu = cpuWindow(peerPids(peers));
    for (let n = 0; n < writes; n++) {
      const start = performance.now();
      const w = n % peers.length;
      const res = await pools[w].request({
        path: '/mesh/config',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ key: `bench-quiet-${runId}-${n}`, value }),
      });
      await res.body.dump();
      if (res.statusCode !== 200)
        throw new Error(`POST /mesh/config on ${peers[w].spec.name}: ${res.statusCode}`);
      const wait = spacingMs - (performance.now() - start);
      if (wait > 0) await sleep(wait);
    }
    await sleep(1000);
    const window = cpu.end();
    const after = await Promise.all(peers.map(scrape));
    return { peers: peers.length, writes, spacingMs, applyLag: lagDelta(before, after), cpu: window };
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
}

async function writeTest(cluster: MeshCluster, writes: number): Promise<WriteResult> {
  const peers = cluster.running();
  const pools = peers.map(
    (p) => new Pool(p.url, { connections: 2, pipelining: 1, headersTimeout: 5000, bodyTimeout: 5000 }),
  );
  const post: number[] = [];
  const first: number[] = [];
  const all: number[] = [];
  let timeouts = 0;
  const value = Buffer.from('mesh-bench-value-0123456789abcdef').toString('hex');
  const t0Wall = performance.now();
  const runId = Date.now().toString(36);
  try {
    // a warm-up write: opens every keep-alive connection
    await pools[0].request({
      path: '/mesh/config',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ key: `bench-warm-${runId}`, value }),
    });
    await sleep(300);
    for (const pool of pools) {
      const r = await pool.request({ path: `/mesh/config/bench-warm-${runId}`, method: 'GET' });
      await r.body.dump();
    }
    const before = await Promise.all(peers.map(scrape));
    const cpu = cpuWindow(peerPids(peers));
    for (let n = 0; n < writes; n++) {
      const w = n % peers.length;
      const key = `bench-${runId}-${n}`;
      const t0 = performance.now();
      const res = await pools[w].request({
        path: '/mesh/config',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ key, value }),
      });
      await res.body.dump();
      if (res.statusCode !== 200)
        throw new Error(`POST /mesh/config on ${peers[w].spec.name}: ${res.statusCode}`);
      post.push(performance.now() - t0);
      const deadline = t0 + WRITE_TIMEOUT_MS;
      const seen = await Promise.all(
        pools.map(async (pool, i) => {
          if (i === w) return NaN;
          while (performance.now() < deadline) {
            const start = performance.now();
            try {
              const r = await pool.request({ path: `/mesh/config/${key}`, method: 'GET' });
              await r.body.dump();
              if (r.statusCode === 200) return performance.now() - t0;
            } catch {
              // a slow or failed poll: poll again until the deadline
            }
            const wait = POLL_MS - (performance.now() - start);
            if (wait > 0) await sleep(wait);
          }
          return Infinity;
        }),
      );
      const others = seen.filter((x) => !Number.isNaN(x));
      if (others.some((x) => !Number.isFinite(x))) {
        timeouts++;
        continue;
      }
      first.push(Math.min(...others));
      all.push(Math.max(...others));
    }
    const window = cpu.end();
    const after = await Promise.all(peers.map(scrape));
    const allVisibleMs = distribution(all, 2);
    return {
      peers: peers.length,
      writes,
      timeouts,
      postMs: distribution(post, 2),
      firstVisibleMs: distribution(first, 2),
      allVisibleMs,
      applyLag: lagDelta(before, after),
      goalP99Ms: 100,
      met: timeouts === 0 && allVisibleMs.p99 <= 100,
      wallS: round((performance.now() - t0Wall) / 1000, 1),
      cpu: window,
    };
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
}

// ---------------------------------------------------------------- 2. kill -9 → dead everywhere

const KILL_POLL_MS = 50;
const KILL_TIMEOUT_MS = 30_000;

interface KillTrial {
  victim: string;
  /** last survivor reports the victim dead, s after the kill */
  deadAllS: number | null;
  /** first survivor reports it dead */
  deadFirstS: number | null;
  /** first survivor reports it suspect (or dead), i.e. the failure detected */
  suspectFirstS: number | null;
  /** the restarted peer and the survivors agree again */
  reconvergeS: number;
}

interface KillResult {
  peers: number;
  trials: KillTrial[];
  timeouts: number;
  deadAllS: { median: number; p90: number; max: number; min: number };
  goalMedianS: number;
  met: boolean;
}

async function killTrials(cluster: MeshCluster, trials: number, rnd: () => number): Promise<KillResult> {
  const out: KillTrial[] = [];
  for (let t = 0; t < trials; t++) {
    // a random phase against the probe schedule
    await sleep(300 + rnd() * 1000);
    const victim = Math.floor(rnd() * cluster.size);
    const victimName = cluster.specs[victim].name;
    const survivors = cluster.running().filter((p) => p.spec.name !== victimName);
    const t0 = performance.now();
    await cluster.kill(victim, 'SIGKILL');
    const deadline = t0 + KILL_TIMEOUT_MS;
    let suspectFirst = Infinity;
    const deadAt = await Promise.all(
      survivors.map(async (p) => {
        while (performance.now() < deadline) {
          const start = performance.now();
          try {
            const st = await meshStatus(p.url);
            const state = st.nodes.find((n) => n.name === victimName)?.status;
            if (state === 'suspect') suspectFirst = Math.min(suspectFirst, performance.now() - t0);
            if (state === 'dead' || state === 'left' || state === undefined) {
              const at = performance.now() - t0;
              suspectFirst = Math.min(suspectFirst, at);
              return at;
            }
          } catch {
            // a slow answer: poll again
          }
          const wait = KILL_POLL_MS - (performance.now() - start);
          if (wait > 0) await sleep(wait);
        }
        return Infinity;
      }),
    );
    const s = (ms: number) => (Number.isFinite(ms) ? round(ms / 1000, 3) : null);
    const r0 = performance.now();
    await cluster.startPeer(victim);
    await cluster.waitConverged(60_000);
    const trial: KillTrial = {
      victim: victimName,
      deadAllS: s(Math.max(...deadAt)),
      deadFirstS: s(Math.min(...deadAt)),
      suspectFirstS: s(suspectFirst),
      reconvergeS: round((performance.now() - r0) / 1000, 2),
    };
    out.push(trial);
    log(
      `mesh: kill ${t + 1}/${trials} at ${cluster.size} peers: ${victimName} dead on all survivors after ` +
        `${trial.deadAllS ?? 'TIMEOUT'} s (suspect first ${trial.suspectFirstS} s), reconverged in ${trial.reconvergeS} s`,
    );
  }
  const times = out.map((t) => t.deadAllS).filter((x): x is number => x !== null);
  const sorted = [...times].sort((a, b) => a - b);
  const timeouts = out.length - times.length;
  const med = round(median(times), 3);
  return {
    peers: cluster.size,
    trials: out,
    timeouts,
    deadAllS: {
      median: med,
      p90: sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(0.9 * sorted.length) - 1)] : NaN,
      max: sorted.length ? sorted[sorted.length - 1] : NaN,
      min: sorted.length ? sorted[0] : NaN,
    },
    goalMedianS: 5,
    met: timeouts === 0 && med <= 5,
  };
}

// ---------------------------------------------------------------- 3. CPU saturation

interface WatchResult {
  hogs: number;
  durationS: number;
  polls: number;
  /** /mesh/status requests that failed or took over 2 s */
  pollErrors: number;
  /** (observer, member) pairs ever seen dead */
  deadSightings: string[];
  /** distinct members any peer ever reported dead */
  falseDeaths: number;
  /** (observer, member) pairs ever seen suspect */
  suspectSightings: string[];
  aliveCount: { min: number; max: number };
  /** smg_mesh_suspicions_total deltas summed over the peers */
  suspicions: Record<string, number>;
  /** slowest /mesh/status answer, ms */
  maxStatusMs: number;
  cpu: { loadAvg1After: number };
}

const HOG_CODE = (ms: number) => `const end = Date.now() + ${ms}; let x = 0; while (Date.now() < end) x++;`;

async function watchCluster(cluster: MeshCluster, durationS: number, hogs: number): Promise<WatchResult> {
  const peers = cluster.running();
  const children: ChildProcess[] = [];
  const before = await Promise.all(peers.map(scrape));
  const dead = new Set<string>();
  const suspect = new Set<string>();
  const deadMembers = new Set<string>();
  let minAlive = Infinity;
  let maxAlive = -Infinity;
  let polls = 0;
  let pollErrors = 0;
  let maxStatusMs = 0;
  try {
    for (let i = 0; i < hogs; i++) {
      // bounded by itself too (+5 s), in case this process dies before the finally below
      children.push(spawn(process.execPath, ['-e', HOG_CODE(durationS * 1000 + 5000)], { stdio: 'ignore' }));
    }
    const end = performance.now() + durationS * 1000;
    await Promise.all(
      peers.map(async (p) => {
        while (performance.now() < end) {
          const start = performance.now();
          polls++;
          let st: MeshStatus | undefined;
          try {
            st = await meshStatus(p.url);
          } catch {
            pollErrors++;
          }
          maxStatusMs = Math.max(maxStatusMs, performance.now() - start);
          if (st) {
            let alive = 0;
            for (const n of st.nodes) {
              if (n.status === 'alive') alive++;
              else if (n.status === 'dead') {
                dead.add(`${p.spec.name}->${n.name}`);
                deadMembers.add(n.name);
              } else if (n.status === 'suspect') suspect.add(`${p.spec.name}->${n.name}`);
            }
            minAlive = Math.min(minAlive, alive);
            maxAlive = Math.max(maxAlive, alive);
          }
          const wait = 500 - (performance.now() - start);
          if (wait > 0) await sleep(wait);
        }
      }),
    );
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  const after = await Promise.all(peers.map(scrape));
  const suspicions: Record<string, number> = {};
  for (const outcome of ['raised', 'refuted', 'self', 'declared_dead']) {
    let d = 0;
    for (let i = 0; i < peers.length; i++) {
      const m = (l: Record<string, string>) => l.outcome === outcome;
      d += sumOf(after[i], 'smg_mesh_suspicions_total', m) - sumOf(before[i], 'smg_mesh_suspicions_total', m);
    }
    suspicions[outcome] = d;
  }
  return {
    hogs,
    durationS,
    polls,
    pollErrors,
    deadSightings: [...dead].sort(),
    falseDeaths: deadMembers.size,
    suspectSightings: [...suspect].sort(),
    aliveCount: { min: minAlive, max: maxAlive },
    suspicions,
    maxStatusMs: round(maxStatusMs, 1),
    cpu: { loadAvg1After: loadAvg()[0] },
  };
}

// ---------------------------------------------------------------- 4. idle traffic

interface TcpCounters {
  sent: number;
  received: number;
}

/**
 * TCP bytes of each peer's mesh connections (libp2p over TCP on the mesh port, both directions),
 * per PID, from `ss -tinp` (tcp_info bytes_sent / bytes_received). Undefined when ss is missing.
 */
function tcpMeshBytes(meshPorts: Set<number>): Map<number, Map<string, TcpCounters>> | undefined {
  let text: string;
  try {
    text = execFileSync('ss', ['-tinpH', 'state', 'established'], { encoding: 'utf8', timeout: 5000 });
  } catch {
    return undefined;
  }
  const byPid = new Map<number, Map<string, TcpCounters>>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const pid = /pid=(\d+)/.exec(line);
    if (!pid) continue;
    const addrs = line.trim().split(/\s+/);
    // Recv-Q Send-Q Local Peer users:(…)
    const local = addrs[2] ?? '';
    const peer = addrs[3] ?? '';
    const port = (a: string) => Number(a.slice(a.lastIndexOf(':') + 1));
    if (!meshPorts.has(port(local)) && !meshPorts.has(port(peer))) continue;
    const info = lines[i + 1] ?? '';
    const sent = /bytes_sent:(\d+)/.exec(info);
    const recv = /bytes_received:(\d+)/.exec(info);
    let m = byPid.get(Number(pid[1]));
    if (!m) byPid.set(Number(pid[1]), (m = new Map()));
    m.set(`${local} ${peer}`, { sent: Number(sent?.[1] ?? 0), received: Number(recv?.[1] ?? 0) });
  }
  return byPid;
}

interface IdleNode {
  swimInBps: number;
  swimOutBps: number;
  gossipInBps: number;
  gossipOutBps: number;
  inBps: number;
  outBps: number;
  swimMsgsOutPerS: number;
  gossipMsgsOutPerS: number;
  /** TCP bytes/s on the mesh connections as the kernel counts them (null without ss) */
  tcpInBps: number | null;
  tcpOutBps: number | null;
}

interface IdleResult {
  peers: number;
  durationS: number;
  perNode: Record<string, IdleNode>;
  mean: IdleNode;
  meanTotalKBps: number;
  meanWireKBps: number | null;
  /** CPU of the peers over the window (cores) */
  cpu: CpuWindow;
}

async function idleTraffic(cluster: MeshCluster, durationS: number): Promise<IdleResult> {
  const peers = cluster.running();
  const meshPorts = new Set(cluster.specs.map((s) => s.meshPort));
  const tcp0 = tcpMeshBytes(meshPorts);
  const before = await Promise.all(peers.map(scrape));
  const t0 = performance.now();
  const cpu = cpuWindow(peerPids(peers));
  await sleep(durationS * 1000);
  const window = cpu.end();
  const after = await Promise.all(peers.map(scrape));
  const tcp1 = tcpMeshBytes(meshPorts);
  const dt = (performance.now() - t0) / 1000;
  const perNode: Record<string, IdleNode> = {};
  const rate = (i: number, fam: string, swim: boolean, dir: string) => {
    const m = (l: Record<string, string>) => (l.topic === 'swim') === swim && l.direction === dir;
    return round((sumOf(after[i], fam, m) - sumOf(before[i], fam, m)) / dt, 1);
  };
  peers.forEach((p, i) => {
    let tcpIn: number | null = null;
    let tcpOut: number | null = null;
    const pid = p.child.pid ?? -1;
    const a = tcp0?.get(pid);
    const b = tcp1?.get(pid);
    if (a && b) {
      // only the connections open at both ends of the window
      let sent = 0;
      let recv = 0;
      for (const [k, v] of b) {
        const u = a.get(k);
        if (!u) continue;
        sent += v.sent - u.sent;
        recv += v.received - u.received;
      }
      tcpIn = round(recv / dt, 1);
      tcpOut = round(sent / dt, 1);
    }
    const n: IdleNode = {
      swimInBps: rate(i, 'smg_mesh_bytes_total', true, 'in'),
      swimOutBps: rate(i, 'smg_mesh_bytes_total', true, 'out'),
      gossipInBps: rate(i, 'smg_mesh_bytes_total', false, 'in'),
      gossipOutBps: rate(i, 'smg_mesh_bytes_total', false, 'out'),
      inBps: 0,
      outBps: 0,
      swimMsgsOutPerS: rate(i, 'smg_mesh_messages_total', true, 'out'),
      gossipMsgsOutPerS: rate(i, 'smg_mesh_messages_total', false, 'out'),
      tcpInBps: tcpIn,
      tcpOutBps: tcpOut,
    };
    n.inBps = round(n.swimInBps + n.gossipInBps, 1);
    n.outBps = round(n.swimOutBps + n.gossipOutBps, 1);
    perNode[p.spec.name] = n;
  });
  const nodes = Object.values(perNode);
  const mean: Record<string, number | null> = {};
  for (const k of Object.keys(nodes[0]) as (keyof IdleNode)[]) {
    const vals = nodes.map((n) => n[k]);
    mean[k] = vals.some((v) => v === null)
      ? null
      : round(vals.reduce<number>((s, v) => s + (v ?? 0), 0) / vals.length, 1);
  }
  const m = mean as unknown as IdleNode;
  const wire = m.tcpInBps === null || m.tcpOutBps === null ? null : m.tcpInBps + m.tcpOutBps;
  return {
    peers: peers.length,
    durationS: round(dt, 1),
    perNode,
    mean: m,
    meanTotalKBps: round((m.inBps + m.outBps) / 1024, 2),
    meanWireKBps: wire === null ? null : round((wire + m.swimInBps + m.swimOutBps) / 1024, 2),
    cpu: window,
  };
}

// ---------------------------------------------------------------- the benchmark

export async function runMeshBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('mesh', opts);
  const t0 = performance.now();
  const quick = opts.quick;
  const params = {
    writes: quick ? 30 : 200,
    writePollMs: POLL_MS,
    writeTimeoutMs: WRITE_TIMEOUT_MS,
    quietWrites: quick ? 10 : 60,
    quietSpacingMs: 150,
    sizes: [3, 8],
    killTrials3: quick ? 4 : 10,
    killTrials8: quick ? 0 : 5,
    killPollMs: KILL_POLL_MS,
    killTimeoutMs: KILL_TIMEOUT_MS,
    cpuHogs: 2,
    cpuWindowS: quick ? 20 : 60,
    /** the baseline window (no hogs), also the 3-peer idle-traffic window */
    baselineWindowS: quick ? 10 : 60,
    statusPollMs: 500,
    idleWindowS8: quick ? 0 : 30,
    /** full mode: the 8-peer kill trials run only when the benchmark has used less than this */
    kill8BudgetS: 330,
    seed: 7,
    swimTimings: 'defaults',
    worker:
      'one mock engine, registered on peer-1 (a peer answers /readiness 200 only with a healthy worker)',
  };
  const rnd = seededRandom(params.seed);
  const notes = [
    'writes.*.allVisibleMs is HTTP-visible: t0 just before POST /mesh/config on the writer, end when the ' +
      `last other peer answers GET /mesh/config/<key> 200 (each polled every ${POLL_MS} ms, keep-alive); it ` +
      'includes the polling granularity and the 50 ms gossip batching window (a change is published up ' +
      'to 50 ms after it is committed). The polling itself loads the machine: see writes.*.cpu.',
    'applyLag is the peers’ own smg_mesh_apply_lag_seconds (stamped at the local commit, before batching; ' +
      'observed when applied on each receiver), summed over all peers for the window; from histogram ' +
      'buckets (…BucketLeMs = bucket bound, …EstMs = linear interpolation within the bucket).',
    'quietWrites: the same kind of writes, one every quietSpacingMs, with no HTTP polling: the apply lag ' +
      'when the benchmark does not load the machine.',
    'idle["3"] is measured over the cpuSaturation baseline window (no hogs, no writes; /mesh/status polled ' +
      'over HTTP every 500 ms, which makes no mesh traffic). gossip bytes are topic payloads (registry ' +
      'changes); tcp*Bps are the kernel’s byte counts of the libp2p TCP connections on the mesh ports ' +
      '(noise/yamux framing, gossipsub heartbeats and control, identify, anti-entropy sync every 15 s) from ' +
      'ss -tinp, null when ss is unavailable; meanWireKBps = tcp in+out + swim in+out.',
    `cpuSaturation.hogs: ${params.cpuHogs} child processes busy-looping (node -e) on a ` +
      `${os.cpus().length}-core machine; the benchmark process and the peers compete with them. The ` +
      'baseline runs first, for baselineWindowS (= cpuWindowS in full mode, shorter with --quick).',
  ];
  const writes: Record<string, WriteResult> = {};
  const quiet: Record<string, QuietWriteResult> = {};
  const kills: Record<string, KillResult> = {};
  const idle: Record<string, IdleResult> = {};
  const rss: Record<string, { perNodeMb: Record<string, number>; maxMb: number }> = {};
  const extra: Record<string, unknown> = {};
  let cpu: { baseline: WatchResult; hogs: WatchResult } | undefined;

  // one mock engine: a peer is ready (and the cluster starts) only with a healthy worker
  const engine: MockFleetProc = await startMockFleet(1, ['--model', 'mesh-bench']);
  try {
    // ---- 3 peers: everything
    let cluster = await startCluster(3, engine.urls[0]);
    try {
      rss['3-idle'] = rssOf(cluster);
      log(`mesh: baseline (no hogs) + idle traffic, 3 peers, ${params.baselineWindowS} s`);
      const [baseline, idle3] = await Promise.all([
        watchCluster(cluster, params.baselineWindowS, 0),
        idleTraffic(cluster, params.baselineWindowS),
      ]);
      idle['3'] = idle3;
      log(`mesh: CPU saturation, ${params.cpuHogs} hogs for ${params.cpuWindowS} s`);
      const hogs = await watchCluster(cluster, params.cpuWindowS, params.cpuHogs);
      cpu = { baseline, hogs };
      log(`mesh: ${params.writes} writes at 3 peers`);
      writes['3'] = await writeTest(cluster, params.writes);
      log(
        `mesh: 3 peers write→all p50 ${writes['3'].allVisibleMs.p50} ms p99 ${writes['3'].allVisibleMs.p99} ms`,
      );
      quiet['3'] = await quietWrites(cluster, params.quietWrites, params.quietSpacingMs);
      rss['3-after-writes'] = rssOf(cluster);
      log(`mesh: kill -9 trials at 3 peers (${params.killTrials3})`);
      kills['3'] = await killTrials(cluster, params.killTrials3, rnd);
    } finally {
      await cluster.stop();
    }

    // ---- 8 peers: idle (full mode), writes, RSS, kill trials (full mode, if time allows)
    cluster = await startCluster(8, engine.urls[0]);
    try {
      rss['8-idle'] = rssOf(cluster);
      if (params.idleWindowS8 > 0) {
        log(`mesh: idle traffic, 8 peers, ${params.idleWindowS8} s`);
        idle['8'] = await idleTraffic(cluster, params.idleWindowS8);
      }
      log(`mesh: ${params.writes} writes at 8 peers`);
      writes['8'] = await writeTest(cluster, params.writes);
      log(
        `mesh: 8 peers write→all p50 ${writes['8'].allVisibleMs.p50} ms p99 ${writes['8'].allVisibleMs.p99} ms`,
      );
      quiet['8'] = await quietWrites(cluster, params.quietWrites, params.quietSpacingMs);
      rss['8-after-writes'] = rssOf(cluster);
      const usedS = (performance.now() - t0) / 1000;
      if (params.killTrials8 > 0 && usedS < params.kill8BudgetS) {
        log(`mesh: kill -9 trials at 8 peers (${params.killTrials8})`);
        kills['8'] = await killTrials(cluster, params.killTrials8, rnd);
      } else if (params.killTrials8 > 0) {
        log(`mesh: skipping the 8-peer kill trials (${usedS.toFixed(0)} s used)`);
        extra.kill8Skipped = `time budget: ${usedS.toFixed(0)} s used before them (budget ${params.kill8BudgetS} s)`;
      }
    } finally {
      await cluster.stop();
    }
  } finally {
    await engine.stop();
  }

  const rssMax = Math.max(...Object.values(rss).map((r) => r.maxMb));
  const w3 = writes['3'];
  const w8 = writes['8'];
  const k3 = kills['3'];
  const k8 = kills['8'];
  const result = {
    ...header,
    params,
    notes,
    writes,
    quietWrites: quiet,
    kills,
    cpuSaturation: cpu,
    idle,
    rss: { ...rss, maxMb: rssMax, goalMaxMb: 200, met: rssMax <= 200 },
    ...extra,
    loadAvgAfter: loadAvg(),
    durationS: round((performance.now() - t0) / 1000, 1),
  };
  const kb = (x: number | null) => (x === null ? 'n/a' : String(x));
  const summary =
    `write→all p99 3p=${w3.allVisibleMs.p99} ms 8p=${w8.allVisibleMs.p99} ms ` +
    `(p50 ${w3.allVisibleMs.p50}/${w8.allVisibleMs.p50} ms, goal p99 <= 100; in-process apply lag mean ` +
    `${w3.applyLag.meanMs}/${w8.applyLag.meanMs} ms, unpolled p99≈${quiet['3'].applyLag.p99EstMs}/` +
    `${quiet['8'].applyLag.p99EstMs} ms); ` +
    `kill→dead median ${k3.deadAllS.median} s (n=${k3.trials.length}, p90 ${k3.deadAllS.p90} s, max ${k3.deadAllS.max} s)` +
    (k8 ? `, 8p ${k8.deadAllS.median} s (n=${k8.trials.length}, max ${k8.deadAllS.max} s)` : '') +
    ` (goal <= 5 s); false deaths under CPU ${cpu?.hogs.falseDeaths} (baseline ${cpu?.baseline.falseDeaths}; ` +
    `suspicions raised ${cpu?.hogs.suspicions.raised}, baseline ${cpu?.baseline.suspicions.raised}); ` +
    `idle ${idle['3'].meanTotalKBps} KB/s/node at 3p` +
    (idle['8'] ? `, ${idle['8'].meanTotalKBps} at 8p` : '') +
    ` (mesh counters; wire incl. TCP framing ${kb(idle['3'].meanWireKBps)}` +
    (idle['8'] ? `/${kb(idle['8'].meanWireKBps)}` : '') +
    `); RSS max ${rssMax} MB (goal <= 200)`;
  return { result, summary };
}
