/**
 * The soft state a gateway shares with its peers, on four gossip topics (wire format in
 * soft-state-codec.ts), each flushed on a timer and never per request:
 *
 *   smg/cache/1      this node's routing decisions as prefix-cache deltas      every 50 ms when any
 *   smg/load/1       this node's in-flight requests per worker (full snapshot)  every 100 ms when changed,
 *                    with a TTL; re-sent every second so a silent peer's load expires, never sticks
 *   smg/ratelimit/1  this node's rate-limit G-counter slots that changed        every 50 ms when any
 *   smg/health/1     probe observations of the workers this node probes, and    every 50 ms when any
 *                    suspect hints (connection failures seen while proxying)
 *
 * Health probing is shared: each worker is probed by PROBERS_PER_WORKER alive members chosen by
 * rendezvous hashing of (worker id, node id); a worker's status is judged over its current probers'
 * observations (src/state/registry.ts), so one peer's failing probes never take it out fleet-wide.
 * A suspect hint makes the probers probe at once.
 *
 * When a peer subscribes to the cache topic (it joined, or its connection came back), this node
 * exchanges whole prefix-cache indexes with it over the stream protocol /smg/cache/1 in pages: a
 * delta published before the peer was subscribed never reaches it, so the exchange is timed by
 * the subscription itself, not by membership (which can run ahead of gossip by seconds on a busy
 * machine). It also repairs deltas lost to a partition or a pause; this node's probe observations
 * and rate-limit slots are re-sent to a member that joins as well.
 *
 * Owns: the timers, encoding and application of these topics, prober assignment. Never: routing,
 * the merge rules (the Replica), probing itself (the worker manager).
 */
import type { Logger } from '../src/observability/logger.js';
import { chainsOf, type CacheRow } from '../src/state/cache-chains.js';
import { CHECKPOINT_STRIDE } from '../src/state/cache-index.js';
import type { CacheBlocksEvent, StateEvent } from '../src/state/events.js';
import { readGlobalRateLimit } from '../src/state/global-rate-limit.js';
import type { RateLimitUsage } from '../src/state/rate-limit.js';
import type { Replica } from '../src/state/replica.js';
import type { NodeStore } from '../store/node-store.js';
import type { Channel, GossipNode } from './gossip/node.js';
import {
  SoftKind,
  SoftStateCodecError,
  decodeSoftState,
  encodeCache,
  encodeHealth,
  encodeLoad,
  encodeSlots,
  type CacheDelta,
  type HealthItem,
  type SlotBody,
} from './soft-state-codec.js';

export const CACHE_TOPIC = 'smg/cache/1';
export const LOAD_TOPIC = 'smg/load/1';
export const RATE_LIMIT_TOPIC = 'smg/ratelimit/1';
export const HEALTH_TOPIC = 'smg/health/1';
export const SOFT_TOPICS = [CACHE_TOPIC, LOAD_TOPIC, RATE_LIMIT_TOPIC, HEALTH_TOPIC] as const;
export type SoftTopic = (typeof SOFT_TOPICS)[number];
const CACHE_PROTOCOL = 'cache';

export const PROBERS_PER_WORKER = 2;
const FLUSH_MS = 50;
const LOAD_MS = 100;
const LOAD_REFRESH_MS = 1_000;
/** a peer's load counts this long after its last snapshot (3 refreshes: survives lost messages) */
export const LOAD_TTL_MS = 3_000;
const EXPIRE_MS = 250;
/** how many recent slot delivery lags the limiter's allowance is taken from (their p90) */
const SLOT_LAG_SAMPLES = 200;
const SLOT_LAG_UPDATE_MS = 1_000;
/** own probe observations are re-sent this often (and to every member that appears) */
const HEALTH_REFRESH_MS = 10_000;
/** stored slots of finished windows are deleted this often */
const SLOT_PRUNE_MS = 10_000;
/** one suspect hint per worker per this long */
const HINT_INTERVAL_MS = 1_000;
/** keep every gossip message well below the 64 KiB batch limit */
const MAX_MESSAGE_BYTES = 48 * 1024;
/** a snapshot page: this many blocks */
const SNAPSHOT_PAGE_BLOCKS = 4_000;
/** a snapshot larger than this many blocks is refused (hostile or broken peer) */
const MAX_SNAPSHOT_BLOCKS = 2_000_000;

export interface SoftStateOptions {
  gossip: GossipNode;
  replica: Replica;
  store?: NodeStore;
  log: Logger;
}

export interface SoftStateCounters {
  /** prefix-cache deltas: recorded here and queued, handed to gossip, received from peers and applied */
  cacheDeltas: { queued: number; published: number; applied: number };
  /**
   * the latest cache message per origin node: published (this node) or applied (peers). A peer
   * whose entry for an origin has reached that origin's own has every delta it published, or had
   * the missing ones repaired by an index exchange.
   */
  cacheSeq: Map<string, number>;
  applied: Record<SoftTopic, number>;
  rejected: Record<SoftTopic, number>;
  snapshots: { pulled: number; served: number; failed: number; blocks: number };
  hintsSent: number;
  hintsReceived: number;
}

/** 32-bit FNV-1a of a string, finished with murmur3's mixer */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** the `k` members with the highest rendezvous score for `key` (ties by node id), best first */
export function rendezvous(key: string, members: readonly string[], k: number): string[] {
  return members
    .map((m) => ({ m, s: hash32(`${key}\u0000${m}`) }))
    .sort((a, b) => b.s - a.s || (a.m < b.m ? -1 : a.m > b.m ? 1 : 0))
    .slice(0, k)
    .map((x) => x.m);
}

export class SoftState {
  private readonly nodeId: string;
  /** set while applying a peer's events: they are not gossiped again */
  private remote = false;
  private seq = 0;
  private cacheQueue: CacheDelta[] = [];
  private healthQueue: HealthItem[] = [];
  private readonly lastHint = new Map<string, number>();
  private lastLoadSig = '';
  private lastLoadAt = 0;
  private lastSlotPrune = 0;
  /** alive (and suspect) members' node ids, self included, sorted */
  private members: string[];
  private readonly probers = new Map<string, string[]>();
  private readonly dutyListeners: (() => void)[] = [];
  private readonly hintListeners: ((workerId: string) => void)[] = [];
  private readonly lagObservers: ((topic: SoftTopic, seconds: number) => void)[] = [];
  private readonly timers: NodeJS.Timeout[] = [];
  /** recent delivery lags of peers' rate-limit slots (ms): the limiter's in-flight allowance */
  private readonly slotLags: number[] = [];
  private readonly offs: (() => void)[] = [];
  private closed = false;
  private readonly tally: SoftStateCounters = {
    cacheDeltas: { queued: 0, published: 0, applied: 0 },
    cacheSeq: new Map(),
    applied: zeroes(),
    rejected: zeroes(),
    snapshots: { pulled: 0, served: 0, failed: 0, blocks: 0 },
    hintsSent: 0,
    hintsReceived: 0,
  };

  constructor(private readonly o: SoftStateOptions) {
    this.nodeId = o.replica.nodeId;
    this.members = [this.nodeId];
  }

  start(): void {
    const { gossip, replica } = this.o;
    this.offs.push(replica.onApplied((ev) => this.onLocal(ev)));
    gossip.subscribe(CACHE_TOPIC, (p) => this.receive(CACHE_TOPIC, p));
    gossip.subscribe(LOAD_TOPIC, (p) => this.receive(LOAD_TOPIC, p));
    gossip.subscribe(RATE_LIMIT_TOPIC, (p) => this.receive(RATE_LIMIT_TOPIC, p));
    gossip.subscribe(HEALTH_TOPIC, (p) => this.receive(HEALTH_TOPIC, p));
    gossip.handle(CACHE_PROTOCOL, (ch) => this.serveSnapshot(ch));
    // a peer that (re)subscribes to the deltas gets this node's whole index: what was published
    // before it was subscribed never reaches it otherwise (exchanged both ways, from both sides)
    this.offs.push(gossip.onPeerSubscribed(CACHE_TOPIC, (peerId) => void this.exchangeSnapshot(peerId)));
    replica.registry.setHealthJudge((workerId, node) => this.probersOf(workerId).includes(node));
    this.every(FLUSH_MS, () => {
      this.flushCache();
      this.flushSlots();
      this.flushHealth();
    });
    this.every(LOAD_MS, () => this.flushLoad());
    this.every(SLOT_LAG_UPDATE_MS, () => this.updateSlotLag());
    // anti-entropy of this node's own observations: a peer that joined (or missed a message) learns
    // the verdict of each worker's probers without waiting for the next change
    this.every(HEALTH_REFRESH_MS, () => this.republishOwn(false));
    this.every(EXPIRE_MS, () => replica.load.expire(Date.now()));
  }

  // ---- membership and probing duty ----

  /** the node ids of the members SWIM calls alive or suspect (self included) */
  setMembers(nodeIds: readonly string[]): void {
    const next = [...new Set([...nodeIds, this.nodeId])].sort();
    if (next.length === this.members.length && next.every((m, i) => m === this.members[i])) return;
    this.members = next;
    this.probers.clear();
    for (const u of this.rateLimitUsages()) u.setPeers(next.length);
    this.o.replica.registry.rejudge();
    for (const l of this.dutyListeners) l();
  }

  /** a member was declared dead or left: its load goes at once (its rate-limit slots stay) */
  memberGone(nodeId: string): void {
    this.o.replica.load.dropOrigin(nodeId);
  }

  /** the current probers of a worker (node ids) */
  probersOf(workerId: string): string[] {
    let p = this.probers.get(workerId);
    if (!p) this.probers.set(workerId, (p = rendezvous(workerId, this.members, PROBERS_PER_WORKER)));
    return p;
  }

  isProber(workerId: string): boolean {
    return this.probersOf(workerId).includes(this.nodeId);
  }

  /** the assignment may have changed (membership) */
  onDutyChange(fn: () => void): () => void {
    return subscribe(this.dutyListeners, fn);
  }

  /** a suspect hint for a worker (from a peer, or from this node itself) */
  onSuspect(fn: (workerId: string) => void): () => void {
    return subscribe(this.hintListeners, fn);
  }

  /** this node saw a worker fail while proxying: its probers (maybe this node) probe now */
  suspect(workerId: string): void {
    const now = Date.now();
    if (now - (this.lastHint.get(workerId) ?? 0) < HINT_INTERVAL_MS) return;
    this.lastHint.set(workerId, now);
    if (this.lastHint.size > 10_000) this.lastHint.clear();
    for (const l of this.hintListeners) l(workerId);
    if (this.probersOf(workerId).some((p) => p !== this.nodeId)) {
      this.healthQueue.push({ type: 'suspect', worker: workerId });
      this.tally.hintsSent++;
    }
  }

  onLag(fn: (topic: SoftTopic, seconds: number) => void): void {
    this.lagObservers.push(fn);
  }

  counters(): SoftStateCounters {
    return this.tally;
  }

  /**
   * Re-sends this node's current probe observations (of the workers it probes) and, with `slots`,
   * its rate-limit slots of the current windows: a member that just joined or came back has not
   * seen them, and both are only published on change.
   */
  republishOwn(slots: boolean): void {
    if (this.closed) return;
    const { replica } = this.o;
    for (const w of replica.registry.list()) {
      if (!this.isProber(w.id)) continue;
      const own = replica.registry.observations(w.id).find((o) => o.node === this.nodeId);
      if (own) this.healthQueue.push({ type: 'observation', worker: w.id, status: own.status, hlc: own.hlc });
    }
    if (!slots) return;
    const mine: SlotBody[] = [];
    for (const u of this.rateLimitUsages()) {
      for (const [key, windows] of u.exportState()) {
        for (const [window, nodes] of windows) {
          for (const [node, requests, tokens] of nodes)
            if (node === this.nodeId) mine.push({ key, window, windowMs: u.windowMs, requests, tokens });
        }
      }
    }
    for (let i = 0; i < mine.length; i += 1000)
      this.publish(RATE_LIMIT_TOPIC, encodeSlots(this.header(), mine.slice(i, i + 1000)));
  }

  private updateSlotLag(): void {
    if (this.slotLags.length < 5) return;
    const sorted = [...this.slotLags].sort((a, b) => a - b);
    const p90 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.9))];
    for (const u of this.rateLimitUsages()) u.setInFlightMs(p90);
  }

  // ---- outgoing ----

  private onLocal(ev: StateEvent): void {
    if (this.remote || this.closed) return;
    if (ev.kind === 'cache.blocks') {
      const d = checkpointDelta(ev);
      if (d) {
        this.cacheQueue.push(d);
        this.tally.cacheDeltas.queued++;
      }
    } else if (ev.kind === 'worker.health' && ev.hlc.node === this.nodeId) {
      this.healthQueue.push({ type: 'observation', worker: ev.id, status: ev.status, hlc: ev.hlc });
    }
  }

  private header() {
    this.seq = Math.max(this.seq + 1, Date.now() * 1024);
    return { origin: this.nodeId, seq: this.seq, sentAt: Date.now() };
  }

  private flushCache(): void {
    if (this.cacheQueue.length === 0) return;
    const queue = this.cacheQueue;
    this.cacheQueue = [];
    let start = 0;
    let bytes = 0;
    for (let i = 0; i < queue.length; i++) {
      const size = 40 + 7 * queue[i].hashes.length;
      if (bytes + size > MAX_MESSAGE_BYTES && i > start) {
        this.publish(CACHE_TOPIC, encodeCache(this.header(), queue.slice(start, i)));
        start = i;
        bytes = 0;
      }
      bytes += size;
    }
    const last = this.header();
    this.publish(CACHE_TOPIC, encodeCache(last, queue.slice(start)));
    this.tally.cacheDeltas.published += queue.length;
    this.tally.cacheSeq.set(this.nodeId, last.seq);
  }

  private flushLoad(): void {
    const snapshot = this.o.replica.load.localSnapshot();
    const sig = JSON.stringify(snapshot);
    const now = Date.now();
    if (sig === this.lastLoadSig && now - this.lastLoadAt < LOAD_REFRESH_MS) return;
    this.lastLoadSig = sig;
    this.lastLoadAt = now;
    this.publish(LOAD_TOPIC, encodeLoad(this.header(), { ttlMs: LOAD_TTL_MS, inflight: snapshot }));
  }

  private rateLimitUsages(): RateLimitUsage[] {
    return this.o.replica.rateLimitUsages();
  }

  private flushSlots(): void {
    const slots: SlotBody[] = [];
    const { replica } = this.o;
    // the global request rate is counted on every request; peers need it only while a limit is set
    // (a limit set later starts from the counts of the next flush: windows are one second)
    const globalLimited = readGlobalRateLimit(replica.doc) > 0;
    for (const u of this.rateLimitUsages()) {
      const dirty = u.takeDirty();
      if (u === replica.globalRate && !globalLimited) continue;
      for (const ev of dirty) slots.push(ev);
    }
    if (slots.length === 0) return;
    for (let i = 0; i < slots.length; i += 1000)
      this.publish(RATE_LIMIT_TOPIC, encodeSlots(this.header(), slots.slice(i, i + 1000)));
    const store = this.o.store;
    if (store) {
      try {
        // own slots survive a restart: a node that forgot them would count from 0 again and over-admit
        // windows of both usages (1 s and 60 s) on one scale: their start in ms
        store.putRateSlots(
          slots.map((s) => ({
            key: `${s.windowMs}:${s.key}`,
            window: s.window * s.windowMs,
            requests: Math.round(s.requests),
            tokens: Math.round(s.tokens),
          })),
        );
        const now = Date.now();
        if (now - this.lastSlotPrune > SLOT_PRUNE_MS) {
          this.lastSlotPrune = now;
          const usages = this.rateLimitUsages();
          store.pruneRateSlots(Math.min(...usages.map((u) => (u.windowOf(now) - 1) * u.windowMs)));
        }
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'rate-limit slots not stored');
      }
    }
  }

  private flushHealth(): void {
    if (this.healthQueue.length === 0) return;
    const items = this.healthQueue;
    this.healthQueue = [];
    for (let i = 0; i < items.length; i += 500)
      this.publish(HEALTH_TOPIC, encodeHealth(this.header(), items.slice(i, i + 500)));
  }

  private publish(topic: SoftTopic, bytes: Uint8Array): void {
    try {
      this.o.gossip.publish(topic, bytes);
    } catch (err) {
      this.o.log.debug({ topic, err: (err as Error).message }, 'soft-state publish failed');
    }
  }

  // ---- incoming ----

  private receive(topic: SoftTopic, payload: Uint8Array): void {
    if (this.closed) return;
    let msg;
    try {
      msg = decodeSoftState(payload);
    } catch (err) {
      this.tally.rejected[topic]++;
      if (!(err instanceof SoftStateCodecError)) throw err;
      return;
    }
    if (msg.origin === this.nodeId || topicOf(msg.kind) !== topic) {
      if (msg.origin !== this.nodeId) this.tally.rejected[topic]++;
      return;
    }
    const { replica } = this.o;
    this.remote = true;
    try {
      switch (msg.kind) {
        case SoftKind.Cache:
          for (const d of msg.deltas) replica.apply({ kind: 'cache.blocks', ...d });
          this.tally.cacheDeltas.applied += msg.deltas.length;
          if (msg.seq > (this.tally.cacheSeq.get(msg.origin) ?? 0))
            this.tally.cacheSeq.set(msg.origin, msg.seq);
          break;
        case SoftKind.Load:
          replica.apply({
            kind: 'load.snapshot',
            origin: msg.origin,
            seq: msg.seq,
            // the TTL runs on this node's clock from arrival: peers' clocks may disagree
            at: Date.now(),
            ttlMs: Math.min(msg.load.ttlMs, 60_000),
            inflight: msg.load.inflight,
          });
          break;
        case SoftKind.RateLimit:
          for (const s of msg.slots) replica.apply({ kind: 'ratelimit.slots', origin: msg.origin, ...s });
          break;
        case SoftKind.Health:
          for (const it of msg.items) {
            if (it.type === 'observation') {
              replica.apply({ kind: 'worker.health', id: it.worker, status: it.status, hlc: it.hlc });
            } else {
              this.tally.hintsReceived++;
              if (this.isProber(it.worker)) for (const l of this.hintListeners) l(it.worker);
            }
          }
          break;
      }
      this.tally.applied[topic]++;
    } finally {
      this.remote = false;
    }
    const lag = (Date.now() - msg.sentAt) / 1000;
    if (lag >= 0 && lag < 3600) {
      for (const l of this.lagObservers) l(topic, lag);
      if (topic === RATE_LIMIT_TOPIC) {
        this.slotLags.push(lag * 1000);
        if (this.slotLags.length > SLOT_LAG_SAMPLES) this.slotLags.shift();
      }
    }
  }

  // ---- cache-index snapshots (/smg/cache/1) ----

  /**
   * Exchanges whole prefix-cache indexes with `peerId` over /smg/cache/1: this node sends its pages
   * and an empty end frame, then merges the peer's pages until its end frame. Both sides end up
   * with the union, whichever of them noticed the other (a join, a restart, a pause, a heal).
   */
  async exchangeSnapshot(peerId: string): Promise<number> {
    if (this.closed) return 0;
    let ch: Channel | undefined;
    try {
      ch = await this.o.gossip.open(peerId, CACHE_PROTOCOL);
      await this.sendSnapshot(ch);
      const blocks = await this.receiveSnapshot(ch);
      this.tally.snapshots.pulled++;
      return blocks;
    } catch (err) {
      this.tally.snapshots.failed++;
      this.o.log.debug({ peer: peerId, err: (err as Error).message }, 'cache snapshot exchange failed');
      return 0;
    } finally {
      await ch?.close().catch(() => undefined);
    }
  }

  private async serveSnapshot(ch: Channel): Promise<void> {
    try {
      await this.receiveSnapshot(ch);
      await this.sendSnapshot(ch);
      this.tally.snapshots.served++;
    } catch (err) {
      this.tally.snapshots.failed++;
      this.o.log.debug({ err: (err as Error).message }, 'cache snapshot exchange (answering) failed');
    }
  }

  /** merges pages until the end frame; returns the blocks merged */
  private async receiveSnapshot(ch: Channel): Promise<number> {
    let blocks = 0;
    for (;;) {
      const page = await ch.receive();
      if (page === null) throw new Error('peer closed the cache snapshot stream');
      if (page.length === 0) break;
      const msg = decodeSoftState(page);
      if (msg.kind !== SoftKind.Cache) throw new SoftStateCodecError('snapshot page is not a cache page');
      this.remote = true;
      try {
        for (const d of msg.deltas) {
          blocks += d.hashes.length;
          this.o.replica.apply({ kind: 'cache.blocks', ...d });
        }
      } finally {
        this.remote = false;
      }
      if (blocks > MAX_SNAPSHOT_BLOCKS) throw new Error(`snapshot exceeds ${MAX_SNAPSHOT_BLOCKS} blocks`);
    }
    this.tally.snapshots.blocks += blocks;
    return blocks;
  }

  private async sendSnapshot(ch: Channel): Promise<void> {
    const rows: CacheRow[] = [];
    this.o.replica.cache.forEachBlock((model, worker, hash, parent, seen) =>
      rows.push({ model, worker, hash, parent, seen }),
    );
    let page: CacheDelta[] = [];
    let blocks = 0;
    for (const d of chainsOf(rows)) {
      page.push(d);
      blocks += d.hashes.length;
      if (blocks >= SNAPSHOT_PAGE_BLOCKS) {
        await ch.send(encodeCache(this.header(), page));
        page = [];
        blocks = 0;
      }
    }
    if (page.length > 0) await ch.send(encodeCache(this.header(), page));
    await ch.send(new Uint8Array(0));
  }

  private every(ms: number, fn: () => void): void {
    const t = setInterval(() => {
      if (this.closed) return;
      try {
        fn();
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'soft-state timer failed');
      }
    }, ms);
    t.unref();
    this.timers.push(t);
  }

  stop(): void {
    if (this.closed) return;
    // the last deltas and slots go out before the gossip node stops
    this.flushCache();
    this.flushSlots();
    this.flushHealth();
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    for (const off of this.offs) off();
    this.o.replica.registry.setHealthJudge(() => true);
  }
}

/**
 * What peers learn of a routing decision's delta: only its blocks at depths that are multiples of
 * CHECKPOINT_STRIDE (see src/state/cache-index.ts), anchored at the block before `from` when that
 * is a checkpoint too. A follow-up turn appending k blocks costs ≈ k/8 hashes instead of k; peers
 * then match a prompt at most S − 1 blocks shorter than the routing node does. `undefined` when the
 * delta holds no checkpoint (peers learn its blocks with the next one). Events without `from`
 * (not a routing decision) go as they are.
 */
export function checkpointDelta(ev: CacheBlocksEvent): CacheDelta | undefined {
  const { model, worker, seen } = ev;
  if (ev.from === undefined) return { model, worker, anchor: ev.anchor, hashes: ev.hashes, seen };
  const S = CHECKPOINT_STRIDE;
  const hashes: number[] = [];
  for (let i = (S - ((ev.from + 1) % S)) % S; i < ev.hashes.length; i += S) hashes.push(ev.hashes[i]);
  if (hashes.length === 0) return undefined;
  const anchor = ev.from > 0 && ev.from % S === 0 ? ev.anchor : 0;
  return { model, worker, anchor, hashes, seen };
}

function topicOf(kind: SoftKind): SoftTopic {
  switch (kind) {
    case SoftKind.Cache:
      return CACHE_TOPIC;
    case SoftKind.Load:
      return LOAD_TOPIC;
    case SoftKind.RateLimit:
      return RATE_LIMIT_TOPIC;
    case SoftKind.Health:
      return HEALTH_TOPIC;
  }
}

function zeroes(): Record<SoftTopic, number> {
  return { [CACHE_TOPIC]: 0, [LOAD_TOPIC]: 0, [RATE_LIMIT_TOPIC]: 0, [HEALTH_TOPIC]: 0 } as Record<
    SoftTopic,
    number
  >;
}

function subscribe<T>(list: T[], item: T): () => void {
  list.push(item);
  return () => {
    const i = list.indexOf(item);
    if (i >= 0) list.splice(i, 1);
  };
}
