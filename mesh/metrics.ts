/**
 * `smg_mesh_*` Prometheus families. Counters live in the SWIM node, the UDP transport, the gossip
 * node and the runtime; these families read them at scrape time, so nothing on the packet path
 * touches prom-client. Probe RTT and apply lag are histograms fed as they happen.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { NodeStore } from '../store/node-store.js';
import type { TopicStats } from './gossip/node.js';
import type { MeshCounters, MeshRuntime } from './runtime.js';

const RTT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const LAG_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const STATES = ['alive', 'suspect', 'dead', 'left'] as const;

/** sets a counter to an absolute value read from elsewhere (scrape-time collection) */
function setCounter(c: Counter<string>, labels: Record<string, string>, value: number): void {
  c.remove(labels);
  c.inc(labels, value);
}

export interface MeshMetricsSource {
  runtime(): MeshRuntime | undefined;
  store(): NodeStore | undefined;
}

export interface MeshMetrics {
  /** feeds the event-driven histograms (probe RTT, apply lag) of a started runtime */
  attach(rt: MeshRuntime): void;
}

export function registerMeshMetrics(registry: Registry, src: MeshMetricsSource): MeshMetrics {
  const registers = [registry];
  new Gauge({
    name: 'smg_mesh_members',
    help: 'Mesh members this node knows, by SWIM state (itself included)',
    labelNames: ['state'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const by = rt.counters().swim.members;
      for (const s of STATES) this.set({ state: s }, by[s]);
    },
  });
  new Gauge({
    name: 'smg_mesh_joined',
    help: '1 once this node has joined a mesh (or another member joined it)',
    registers,
    collect() {
      const rt = src.runtime();
      if (rt) this.set(rt.hasJoined ? 1 : 0);
    },
  });
  new Gauge({
    name: 'smg_mesh_health_score',
    help: 'Lifeguard local health multiplier (0 = healthy; probes slow down as it grows)',
    registers,
    collect() {
      const rt = src.runtime();
      if (rt) this.set(rt.counters().swim.healthScore);
    },
  });
  const rtt = new Histogram({
    name: 'smg_mesh_probe_rtt_seconds',
    help: 'Round-trip time of successful SWIM probes',
    buckets: RTT_BUCKETS,
    registers,
  });
  const lag = new Histogram({
    name: 'smg_mesh_apply_lag_seconds',
    help: 'Delay from a registry change being published by a peer to it being applied here',
    buckets: LAG_BUCKETS,
    registers,
  });
  new Counter({
    name: 'smg_mesh_suspicions_total',
    help: 'Members this node suspected (raised), suspects seen refuting, and its own refutations (self)',
    labelNames: ['outcome'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const s = rt.counters().swim;
      setCounter(this, { outcome: 'raised' }, s.suspicionsRaised);
      setCounter(this, { outcome: 'refuted' }, s.suspicionsRefuted);
      setCounter(this, { outcome: 'self' }, s.selfRefutations);
      setCounter(this, { outcome: 'declared_dead' }, s.declaredDead);
    },
  });
  new Counter({
    name: 'smg_mesh_probes_total',
    help: 'SWIM probes sent, by result',
    labelNames: ['result'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const s = rt.counters().swim;
      setCounter(this, { result: 'ok' }, s.probes - s.probesFailed);
      setCounter(this, { result: 'failed' }, s.probesFailed);
    },
  });
  // messages and bytes per topic: SWIM datagrams as topic "swim", then every gossip topic
  const perTopic = (
    name: string,
    help: string,
    udp: (c: MeshCounters) => [number, number],
    gossip: (t: TopicStats) => [number, number],
  ) =>
    new Counter({
      name,
      help,
      labelNames: ['topic', 'direction'],
      registers,
      collect() {
        const rt = src.runtime();
        if (!rt) return;
        const c = rt.counters();
        const rows: [string, [number, number]][] = [
          ['swim', udp(c)],
          ...Object.entries(c.gossip.topics).map(([topic, t]): [string, [number, number]] => [
            topic,
            gossip(t),
          ]),
        ];
        for (const [topic, [inn, out]] of rows) {
          setCounter(this, { topic, direction: 'in' }, inn);
          setCounter(this, { topic, direction: 'out' }, out);
        }
      },
    });
  perTopic(
    'smg_mesh_messages_total',
    'Mesh messages by topic (swim = UDP datagrams) and direction',
    (c) => [c.udp.packetsIn, c.udp.packetsOut],
    (t) => [t.messagesIn, t.messagesOut],
  );
  perTopic(
    'smg_mesh_bytes_total',
    'Mesh payload bytes by topic (swim = UDP datagrams) and direction',
    (c) => [c.udp.bytesIn, c.udp.bytesOut],
    (t) => [t.bytesIn, t.bytesOut],
  );
  new Counter({
    name: 'smg_mesh_dropped_packets_total',
    help: 'Mesh input dropped, by reason (auth, replay, malformed, oversized, unknown_sender, handler_error)',
    labelNames: ['transport', 'reason'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const c = rt.counters();
      const udp: Record<string, number> = { ...c.udp.dropped };
      // the SWIM layer's own drops (e.g. unknown_sender, undecodable payloads) come on top
      for (const [reason, n] of Object.entries(c.swim.dropped))
        udp[reason] = Math.max(udp[reason] ?? 0, 0) + n;
      for (const [reason, n] of Object.entries(udp)) setCounter(this, { transport: 'udp', reason }, n);
      for (const [reason, n] of Object.entries(c.gossip.dropped))
        setCounter(this, { transport: 'gossip', reason }, n);
      setCounter(this, { transport: 'gossip', reason: 'rejected_change' }, c.registryRejected);
    },
  });
  new Counter({
    name: 'smg_mesh_sync_sessions_total',
    help: 'Registry anti-entropy (Automerge sync) sessions, by result',
    labelNames: ['result'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const s = rt.counters().sync;
      setCounter(this, { result: 'ok' }, s.ok);
      setCounter(this, { result: 'failed' }, s.failed);
      setCounter(this, { result: 'repaired' }, s.changed);
    },
  });
  new Gauge({
    name: 'smg_mesh_peers_connected',
    help: 'libp2p connections to mesh members',
    registers,
    collect() {
      const rt = src.runtime();
      if (rt) this.set(rt.counters().gossip.peersConnected);
    },
  });
  new Gauge({
    name: 'smg_mesh_store_size_bytes',
    help: "Size of this node's SQLite state (database + WAL)",
    registers,
    collect() {
      const store = src.store();
      if (!store) return;
      try {
        this.set(store.sizeBytes());
      } catch {
        // closed
      }
    },
  });
  new Gauge({
    name: 'smg_mesh_store_cache_blocks',
    help: "Prefix-index blocks committed to this node's SQLite state (restored at start)",
    registers,
    collect() {
      const store = src.store();
      if (!store) return;
      try {
        this.set(store.countCacheBlocks());
      } catch {
        // closed
      }
    },
  });
  const eventLag = new Histogram({
    name: 'smg_mesh_event_lag_seconds',
    help: 'Delay from a soft-state message (cache, load, ratelimit, health) being published by a peer to it being applied here',
    labelNames: ['topic'],
    buckets: LAG_BUCKETS,
    registers,
  });
  new Counter({
    name: 'smg_mesh_soft_state_messages_total',
    help: 'Soft-state gossip messages received, by topic and result (applied, rejected = malformed or misdirected)',
    labelNames: ['topic', 'result'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const c = rt.soft.counters();
      for (const [topic, n] of Object.entries(c.applied)) setCounter(this, { topic, result: 'applied' }, n);
      for (const [topic, n] of Object.entries(c.rejected)) setCounter(this, { topic, result: 'rejected' }, n);
    },
  });
  new Counter({
    name: 'smg_mesh_cache_deltas_total',
    help: 'Prefix-cache deltas: recorded here (queued), handed to gossip (published), received from peers (applied)',
    labelNames: ['stage'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      for (const [stage, n] of Object.entries(rt.soft.counters().cacheDeltas)) setCounter(this, { stage }, n);
    },
  });
  new Gauge({
    name: 'smg_mesh_cache_seq',
    help: 'Latest prefix-cache message per origin node: published here (this node), applied here (peers)',
    labelNames: ['origin'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      this.reset();
      for (const [origin, seq] of rt.soft.counters().cacheSeq) this.set({ origin }, seq);
    },
  });
  new Counter({
    name: 'smg_mesh_cache_snapshots_total',
    help: 'Prefix-cache index snapshots pulled from peers, served to peers, and failed pulls',
    labelNames: ['result'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const s = rt.soft.counters().snapshots;
      setCounter(this, { result: 'pulled' }, s.pulled);
      setCounter(this, { result: 'served' }, s.served);
      setCounter(this, { result: 'failed' }, s.failed);
    },
  });
  new Counter({
    name: 'smg_mesh_suspect_hints_total',
    help: 'Worker suspect hints sent to and received from peers',
    labelNames: ['direction'],
    registers,
    collect() {
      const rt = src.runtime();
      if (!rt) return;
      const c = rt.soft.counters();
      setCounter(this, { direction: 'out' }, c.hintsSent);
      setCounter(this, { direction: 'in' }, c.hintsReceived);
    },
  });
  new Gauge({
    name: 'smg_mesh_enabled',
    help: '1 when this node runs the HA mesh',
    registers,
    collect() {
      this.set(src.runtime() ? 1 : 0);
    },
  });
  return {
    attach(rt) {
      rt.swim.onProbeRtt((ms) => rtt.observe(ms / 1000));
      rt.onApplyLag((s) => lag.observe(s));
      rt.soft.onLag((topic, s) => eventLag.observe({ topic }, s));
    },
  };
}
