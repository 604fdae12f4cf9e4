/**
 * Rate-limit usage as a CRDT: per (key, window) a G-counter with one slot per node, each slot
 * counting `{requests, tokens}` that node admitted in that window. A node only ever increments its
 * own slot (in memory, no event per request); `takeDirty()` hands the changed own slots to the mesh,
 * and a remote slot merges by per-field max, so replicas converge whatever the order or duplication
 * of the slot events. The cluster's usage of a key is the sum over the slots.
 *
 * Limits are enforced on Cloudflare's sliding-window estimate: the current window's count plus the
 * previous window's count weighted by the part of it that still overlaps a window-long look-back.
 * On top of that sits this node's `pending` usage (reserved for requests it admitted but has not
 * settled yet): local only, never replicated, because a G-counter cannot give a reservation back.
 *
 * In a mesh (`setPeers(n > 1)`) `admits` adds a share rule on top of the window rule: the usage
 * this node has not yet handed to the peers, or handed out within the transport lag, is held to its
 * share of what is left, which bounds what N peers admit on each other's late counts.
 *
 * Windows older than the previous one are useless to the estimate: they are pruned lazily (on
 * access to a key, and in one sweep per window) and slot events for them are ignored.
 *
 * Owns: counters, the merge, the estimate. Never: I/O, timers, limits or policies.
 */
import type { RateLimitSlotsEvent } from './events.js';

export const DEFAULT_RATE_LIMIT_WINDOW_MS = 60_000;
export const DEFAULT_IN_FLIGHT_MS = 100;
/** the cluster-wide request rate limit counts per second */
export const GLOBAL_RATE_WINDOW_MS = 1000;

/** float noise in the window estimate must not reject a request that exactly fits */
const SLACK = 1e-9;

/** whole milliseconds, rounding up, without float noise turning 80000.00000000001 into 80001 */
function wholeMs(ms: number): number {
  return Math.max(0, Math.ceil(ms - 1e-6));
}

export interface UsageCounts {
  requests: number;
  tokens: number;
}

export type UsageDimension = keyof UsageCounts;

interface Slot {
  requests: number;
  tokens: number;
}

class WindowCounts {
  readonly slots = new Map<string, Slot>();
  /** Σ over `slots`, kept in step so the estimate never iterates nodes */
  requests = 0;
  tokens = 0;
  /** what this node added to its own slot since the last `takeDirty`: not seen by any peer yet */
  unsentRequests = 0;
  unsentTokens = 0;
  /**
   * What `takeDirty` handed out within the last `inFlightMs`, still on its way to the peers:
   * [at, requests, tokens] triples, oldest first, with their sums.
   */
  readonly inFlight: number[] = [];
  inFlightRequests = 0;
  inFlightTokens = 0;

  /** forgets the hand-outs the peers have had time to receive */
  expire(before: number): void {
    let i = 0;
    const q = this.inFlight;
    while (i < q.length && q[i] <= before) {
      this.inFlightRequests -= q[i + 1];
      this.inFlightTokens -= q[i + 2];
      i += 3;
    }
    if (i > 0) q.splice(0, i);
    if (q.length === 0) {
      this.inFlightRequests = 0;
      this.inFlightTokens = 0;
    }
  }
  /** the own slot changed since the last `takeDirty` */
  dirty = false;
}

class KeyUsage {
  readonly windows = new Map<number, WindowCounts>();
  pendingRequests = 0;
  pendingTokens = 0;
  /** windows below this index have been dropped from `windows` */
  prunedBelow = -Infinity;
}

export interface RateLimitUsageOptions {
  /** window length (60 s for per-minute limits) */
  windowMs?: number;
  now?: () => number;
  /**
   * How long after `takeDirty` hands a slot out the share rule still counts it as unseen by the
   * peers (the transport lag; default 100 ms, 0 = seen at once)
   */
  inFlightMs?: number;
}

/** canonical, JSON-able copy of the replicated slots: [key, [window, [node, requests, tokens][]][]][] */
export type RateLimitUsageState = [string, [number, [string, number, number][]][]][];

export class RateLimitUsage {
  readonly windowMs: number;
  private inFlightLagMs: number;
  private readonly now: () => number;
  private readonly keys = new Map<string, KeyUsage>();
  private readonly dirty: { key: string; window: number; counts: WindowCounts }[] = [];
  private peerCount = 1;
  /** the window in which the last full sweep of idle keys ran */
  private sweptWindow = -Infinity;

  constructor(
    readonly nodeId: string,
    opts: RateLimitUsageOptions = {},
  ) {
    const windowMs = opts.windowMs ?? DEFAULT_RATE_LIMIT_WINDOW_MS;
    if (!Number.isFinite(windowMs) || windowMs <= 0) throw new Error(`windowMs must be > 0, got ${windowMs}`);
    this.windowMs = windowMs;
    this.inFlightLagMs = Math.max(0, opts.inFlightMs ?? DEFAULT_IN_FLIGHT_MS);
    this.now = opts.now ?? Date.now;
  }

  windowOf(t: number): number {
    return Math.floor(t / this.windowMs);
  }

  /**
   * The sliding-window estimate of the cluster's usage of `key` at `now`, plus this node's pending
   * reservations. Writes into `out` so the hot path allocates nothing.
   */
  estimate(key: string, now = this.now(), out: UsageCounts = { requests: 0, tokens: 0 }): UsageCounts {
    out.requests = 0;
    out.tokens = 0;
    const k = this.keys.get(key);
    if (!k) return out;
    const w = this.windowOf(now);
    this.pruneKey(k, w);
    const weight = 1 - (now - w * this.windowMs) / this.windowMs;
    const cur = k.windows.get(w);
    const prev = k.windows.get(w - 1);
    out.requests = (cur?.requests ?? 0) + (prev ? prev.requests * weight : 0) + k.pendingRequests;
    out.tokens = (cur?.tokens ?? 0) + (prev ? prev.tokens * weight : 0) + k.pendingTokens;
    return out;
  }

  /**
   * Whole milliseconds from `now` until the estimate of `dimension` leaves room for `need` more under
   * `limit`, assuming nothing else is admitted meanwhile and pending usage settles into the
   * current window (where it will land). 0 when there is room now; Infinity when `need > limit`.
   */
  waitMs(key: string, dimension: UsageDimension, limit: number, need: number, now = this.now()): number {
    const budget = limit - need;
    if (budget < 0) return Infinity;
    const k = this.keys.get(key);
    if (!k) return 0;
    const w = this.windowOf(now);
    this.pruneKey(k, w);
    const elapsed = (now - w * this.windowMs) / this.windowMs;
    const cur =
      (k.windows.get(w)?.[dimension] ?? 0) + (dimension === 'requests' ? k.pendingRequests : k.pendingTokens);
    const prev = k.windows.get(w - 1)?.[dimension] ?? 0;
    if (cur + prev * (1 - elapsed) <= budget) return 0;
    if (cur <= budget) {
      // the previous window's weight has to fall far enough within this window
      const until = 1 - (budget - cur) / prev;
      return wholeMs((until - elapsed) * this.windowMs);
    }
    // only the next window helps: then today's count is the one fading out
    const until = 1 - budget / cur;
    return wholeMs((1 - elapsed + until) * this.windowMs);
  }

  /**
   * The number of alive peers including this node (the mesh sets it on every membership change; 1
   * without a mesh). With more than one, `admits` adds the share rule.
   */
  setPeers(n: number): void {
    this.peerCount = Number.isFinite(n) && n >= 1 ? Math.floor(n) : 1;
  }

  get peers(): number {
    return this.peerCount;
  }

  /**
   * How long a handed-out slot still counts as unseen by the peers: the mesh may set it from the
   * lag it observes (hand-out interval excluded); clamped to 0..10 s
   */
  setInFlightMs(ms: number): void {
    this.inFlightLagMs = Number.isFinite(ms) ? Math.min(10_000, Math.max(0, ms)) : DEFAULT_IN_FLIGHT_MS;
  }

  get inFlightMs(): number {
    return this.inFlightLagMs;
  }

  /**
   * Whether `need` more of `dimension` may be admitted under `limit` on this node now.
   *
   * Alone (peers = 1) that is the window rule: E + need ≤ limit, E being the sliding-window
   * estimate (pending included). In a mesh the peers see each other's admissions only after the
   * next `takeDirty` plus the transport lag, so N peers admitting up to the limit on stale views
   * would over-admit by (offered rate × lag). The share rule bounds that. Let U be this node's
   * usage no peer can have seen yet: its admissions since the last `takeDirty`, what `takeDirty`
   * handed out within the last `inFlightMs`, and pending reservations. The request also needs
   * U + need ≤ (limit − (E − U)) × share: each peer may hold unseen at most its share of what is
   * left of the usage everyone has seen, so together they pass the limit by at most what is in
   * transit for longer than `inFlightMs`. share = ½ · 1/N + ½ · (this node's part of the seen
   * usage E − U): the seen numbers are the same on every peer, so the shares sum to 1, and the peer
   * that carries most of the traffic gets most of the room. The first unseen admission (U = 0)
   * needs only the window rule, so a request bigger than a share, or a limit smaller than the peer
   * count, still gets through (one per peer per lag).
   */
  admits(key: string, dimension: UsageDimension, limit: number, need: number, now = this.now()): boolean {
    const k = this.keys.get(key);
    if (!k) return need <= limit + SLACK;
    const w = this.windowOf(now);
    this.pruneKey(k, w);
    const weight = 1 - (now - w * this.windowMs) / this.windowMs;
    const cur = k.windows.get(w);
    const prev = k.windows.get(w - 1);
    const requests = dimension === 'requests';
    const pending = requests ? k.pendingRequests : k.pendingTokens;
    let e = pending;
    let u = pending;
    const seenBy = now - this.inFlightLagMs;
    if (cur) {
      e += requests ? cur.requests : cur.tokens;
      if (cur.inFlight.length > 0) cur.expire(seenBy);
      u += requests ? cur.unsentRequests + cur.inFlightRequests : cur.unsentTokens + cur.inFlightTokens;
    }
    if (prev) {
      e += (requests ? prev.requests : prev.tokens) * weight;
      if (prev.inFlight.length > 0) prev.expire(seenBy);
      u +=
        (requests ? prev.unsentRequests + prev.inFlightRequests : prev.unsentTokens + prev.inFlightTokens) *
        weight;
    }
    if (e + need > limit + SLACK) return false;
    if (this.peerCount <= 1 || u <= SLACK) return true;
    const n = this.peerCount;
    // half an equal share, half this node's part of the usage the peers have all seen (its own
    // unseen usage must not inflate it)
    const seen = e - u;
    let ownSeen = pending - u;
    const curOwn = cur?.slots.get(this.nodeId);
    const prevOwn = prev?.slots.get(this.nodeId);
    if (curOwn) ownSeen += requests ? curOwn.requests : curOwn.tokens;
    if (prevOwn) ownSeen += (requests ? prevOwn.requests : prevOwn.tokens) * weight;
    const share = seen > SLACK ? (1 / n + Math.max(0, ownSeen) / seen) / 2 : 1 / n;
    return u + need <= (limit - (e - u)) * share + SLACK;
  }

  /** a local increment: adds to this node's slot of the current window (a G-counter only grows) */
  add(key: string, requests: number, tokens: number, now = this.now()): void {
    if (!(requests > 0) && !(tokens > 0)) return;
    const w = this.windowOf(now);
    this.maybeSweep(w);
    const k = this.keyUsage(key);
    this.pruneKey(k, w);
    let counts = k.windows.get(w);
    if (!counts) k.windows.set(w, (counts = new WindowCounts()));
    let own = counts.slots.get(this.nodeId);
    if (!own) counts.slots.set(this.nodeId, (own = { requests: 0, tokens: 0 }));
    const r = requests > 0 ? requests : 0;
    const t = tokens > 0 ? tokens : 0;
    own.requests += r;
    own.tokens += t;
    counts.requests += r;
    counts.tokens += t;
    counts.unsentRequests += r;
    counts.unsentTokens += t;
    if (!counts.dirty) {
      counts.dirty = true;
      this.dirty.push({ key, window: w, counts });
    }
  }

  /** holds usage for an admitted, not yet settled request (local only, not replicated) */
  reserve(key: string, requests: number, tokens: number): void {
    const k = this.keyUsage(key);
    k.pendingRequests += requests;
    k.pendingTokens += tokens;
  }

  /** gives back what `reserve` held */
  unreserve(key: string, requests: number, tokens: number): void {
    const k = this.keys.get(key);
    if (!k) return;
    k.pendingRequests = Math.max(0, k.pendingRequests - requests);
    k.pendingTokens = Math.max(0, k.pendingTokens - tokens);
  }

  /** merges a slot (remote, or this node's own replayed from disk): per-field max */
  apply(ev: RateLimitSlotsEvent): boolean {
    if (ev.windowMs !== this.windowMs) return false;
    if (!Number.isSafeInteger(ev.window) || !(ev.requests >= 0) || !(ev.tokens >= 0)) return false;
    const w = this.windowOf(this.now());
    if (ev.window < w - 1) return false;
    if (!Number.isFinite(ev.requests) || !Number.isFinite(ev.tokens)) return false;
    const k = this.keyUsage(ev.key);
    this.pruneKey(k, w);
    let counts = k.windows.get(ev.window);
    if (!counts) k.windows.set(ev.window, (counts = new WindowCounts()));
    let slot = counts.slots.get(ev.origin);
    if (!slot) counts.slots.set(ev.origin, (slot = { requests: 0, tokens: 0 }));
    let changed = false;
    if (ev.requests > slot.requests) {
      counts.requests += ev.requests - slot.requests;
      slot.requests = ev.requests;
      changed = true;
    }
    if (ev.tokens > slot.tokens) {
      counts.tokens += ev.tokens - slot.tokens;
      slot.tokens = ev.tokens;
      changed = true;
    }
    return changed;
  }

  /** this node's slots that changed since the last call, as events to gossip (and store) */
  takeDirty(now = this.now()): RateLimitSlotsEvent[] {
    const w = this.windowOf(now);
    this.maybeSweep(w);
    const out: RateLimitSlotsEvent[] = [];
    for (const d of this.dirty) {
      const c = d.counts;
      c.dirty = false;
      if (this.inFlightLagMs > 0 && (c.unsentRequests > 0 || c.unsentTokens > 0)) {
        c.expire(now - this.inFlightLagMs);
        c.inFlight.push(now, c.unsentRequests, c.unsentTokens);
        c.inFlightRequests += c.unsentRequests;
        c.inFlightTokens += c.unsentTokens;
      }
      c.unsentRequests = 0;
      c.unsentTokens = 0;
      if (d.window < w - 1) continue;
      const own = d.counts.slots.get(this.nodeId);
      if (!own) continue;
      out.push({
        kind: 'ratelimit.slots',
        origin: this.nodeId,
        key: d.key,
        window: d.window,
        windowMs: this.windowMs,
        requests: own.requests,
        tokens: own.tokens,
      });
    }
    this.dirty.length = 0;
    return out;
  }

  /** drops windows the estimate no longer reads and keys with nothing left */
  prune(now = this.now()): void {
    const w = this.windowOf(now);
    this.sweptWindow = w;
    for (const [key, k] of this.keys) {
      this.pruneKey(k, w);
      if (k.windows.size === 0 && k.pendingRequests === 0 && k.pendingTokens === 0) this.keys.delete(key);
    }
    // without a mesh nobody calls takeDirty: forget entries that could never be sent anyway
    let n = 0;
    for (const d of this.dirty) {
      if (d.window >= w - 1) this.dirty[n++] = d;
      else d.counts.dirty = false;
    }
    this.dirty.length = n;
  }

  /** number of keys tracked (for stats) */
  size(): number {
    return this.keys.size;
  }

  /** canonical copy of the replicated slots still in use at `now` (pending usage is local and left out) */
  exportState(now = this.now()): RateLimitUsageState {
    const w = this.windowOf(now);
    const byFirst = (a: { 0: string | number }, b: { 0: string | number }) =>
      a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
    const out: RateLimitUsageState = [];
    for (const [key, k] of this.keys) {
      const windows: [number, [string, number, number][]][] = [];
      for (const [win, counts] of k.windows) {
        if (win < w - 1) continue;
        const slots: [string, number, number][] = [];
        for (const [node, s] of counts.slots) slots.push([node, s.requests, s.tokens]);
        slots.sort(byFirst);
        windows.push([win, slots]);
      }
      if (windows.length === 0) continue;
      windows.sort(byFirst);
      out.push([key, windows]);
    }
    return out.sort(byFirst);
  }

  private keyUsage(key: string): KeyUsage {
    let k = this.keys.get(key);
    if (!k) this.keys.set(key, (k = new KeyUsage()));
    return k;
  }

  private pruneKey(k: KeyUsage, w: number): void {
    const keep = w - 1;
    if (k.prunedBelow >= keep) return;
    for (const win of k.windows.keys()) if (win < keep) k.windows.delete(win);
    k.prunedBelow = keep;
  }

  /** one sweep per window keeps keys that are never touched again (an ip: tenant) from piling up */
  private maybeSweep(w: number): void {
    if (w > this.sweptWindow) this.prune(w * this.windowMs);
  }
}
