/**
 * The building blocks SwimNode keeps per member and per node: the member record, Lifeguard's
 * suspicion timer and local-health score, and the transmit-limited broadcast queue.
 * Their rules follow hashicorp/memberlist's design (suspicion.go, awareness.go, queue.go).
 */
import type { Clock } from './transport.js';
import type { Meta, MemberState } from './messages.js';

export type { MemberState, Meta } from './messages.js';

export interface Member {
  name: string;
  address: string;
  incarnation: number;
  state: MemberState;
  meta: Meta;
  /** clock time of the last state change */
  stateChangedAt: number;
}

/**
 * Lifeguard's suspicion timeout: `min = suspicionMult × max(1, log10(N)) × probeInterval`, so larger
 * clusters, whose gossip takes longer to reach everyone, give a suspect more time to refute.
 */
export function suspicionMinTimeoutMs(suspicionMult: number, n: number, probeIntervalMs: number): number {
  const scale = Math.max(1, Math.log10(Math.max(1, n)));
  return suspicionMult * scale * probeIntervalMs;
}

/** broadcasts are retransmitted `retransmitMult × ceil(log10(N+1))` times: enough to reach N w.h.p. */
export function retransmitLimit(retransmitMult: number, n: number): number {
  return retransmitMult * Math.ceil(Math.log10(n + 1));
}

/**
 * When every other active member has suspected a member on its own, and that happens only in a
 * cluster small enough that every member re-probes a suspect, the timeout drops to `ms` (counted
 * from the start of the suspicion, like every other timeout).
 */
export interface UnanimousRule {
  /** distinct suspectors (the originator included) that make the suspicion unanimous */
  suspectors: number;
  ms: number;
}

/**
 * A running suspicion of one member. It starts at the max timeout and shrinks, on a log scale,
 * towards the min as independent members confirm it: one suspector may be the unhealthy one, several
 * rarely are. With no confirmations expected (tiny clusters) it simply runs for the min. With a
 * unanimous rule, a suspicion every other member shares runs for the rule's (shorter) timeout.
 */
export class Suspicion {
  /** every distinct suspector, the originator first */
  private readonly suspectors = new Set<string>();
  private readonly start: number;
  private handle: unknown;
  private fired = false;

  constructor(
    private readonly clock: Clock,
    from: string,
    /** confirmations that bring the timeout down to min */
    private readonly expected: number,
    private readonly minMs: number,
    private readonly maxMs: number,
    private readonly onTimeout: () => void,
    private readonly unanimous?: UnanimousRule,
  ) {
    this.start = clock.now();
    // the originator is not a confirmation of its own suspicion
    this.suspectors.add(from);
    this.schedule(this.currentTimeout());
  }

  /** the timeout after `n` confirmations */
  static timeoutMs(n: number, expected: number, minMs: number, maxMs: number): number {
    if (expected <= 0) return minMs;
    const frac = Math.log(Math.min(n, expected) + 1) / Math.log(expected + 1);
    return Math.max(minMs, Math.floor(maxMs - frac * (maxMs - minMs)));
  }

  /**
   * Records a confirmation; true when it is a new, independent one that still counts (towards the
   * expected confirmations, or towards unanimity): worth re-gossiping so others count it too.
   */
  confirm(from: string): boolean {
    if (this.fired || this.suspectors.has(from)) return false;
    const counts =
      this.confirmationCount < this.expected ||
      (this.unanimous !== undefined && this.suspectors.size < this.unanimous.suspectors);
    if (!counts) return false;
    this.suspectors.add(from);
    this.clock.clearTimeout(this.handle);
    this.schedule(Math.max(0, this.start + this.currentTimeout() - this.clock.now()));
    return true;
  }

  /** independent confirmations (suspectors other than the originator) */
  get confirmationCount(): number {
    return this.suspectors.size - 1;
  }

  /** true once every member the unanimous rule asks for has suspected */
  get isUnanimous(): boolean {
    return this.unanimous !== undefined && this.suspectors.size >= this.unanimous.suspectors;
  }

  cancel(): void {
    this.fired = true;
    this.clock.clearTimeout(this.handle);
  }

  private currentTimeout(): number {
    const t = Suspicion.timeoutMs(this.confirmationCount, this.expected, this.minMs, this.maxMs);
    return this.isUnanimous && this.unanimous ? Math.min(t, this.unanimous.ms) : t;
  }

  private schedule(ms: number): void {
    this.handle = this.clock.setTimeout(() => {
      if (this.fired) return;
      this.fired = true;
      this.onTimeout();
    }, ms);
  }
}

/**
 * Lifeguard's local health: a score in [0, max-1] that grows when this node misses acks or nacks or
 * has to refute, and shrinks on successful probes. A slow node (overloaded, paused) then probes less
 * often and waits longer before blaming others for its own slowness.
 */
export class Awareness {
  private value = 0;
  constructor(private readonly max: number) {}
  apply(delta: number): void {
    this.value = Math.min(this.max - 1, Math.max(0, this.value + delta));
  }
  get score(): number {
    return this.value;
  }
  scale(ms: number): number {
    return ms * (this.value + 1);
  }
}

interface QueueItem {
  /** the member the broadcast is about: a newer one replaces it */
  key: string;
  /** set for a suspicion: the suspector, so confirmations from different members coexist */
  sub: string | undefined;
  bytes: Uint8Array;
  transmits: number;
  /** insertion order; newer first among equally sent items */
  id: number;
  onDone?: () => void;
}

/**
 * Broadcasts waiting to be piggybacked. Least transmitted first, then newest first, so fresh news
 * spreads before old news is repeated; an item leaves after `limit` transmissions or when a newer
 * item about the same member replaces it.
 *
 * An item pushed with a `sub` (a suspicion, sub = the suspector) replaces only the member's plain
 * item and its item with the same sub, so independent confirmations of one suspicion travel side by
 * side instead of each pushing the previous one out; a plain item replaces everything about the member.
 */
export class BroadcastQueue {
  private items: QueueItem[] = [];
  /** member → (sub or '' for the plain item) → item */
  private readonly byKey = new Map<string, Map<string, QueueItem>>();
  private nextId = 0;
  private sorted = true;

  get size(): number {
    return this.items.length;
  }

  /** onDone runs once when the item is retired (sent `limit` times, replaced or cleared) */
  push(key: string, bytes: Uint8Array, onDone?: () => void, sub?: string): void {
    const entries = this.byKey.get(key);
    if (entries) {
      const replaced = sub === undefined ? [...entries.values()] : [entries.get(''), entries.get(`\0${sub}`)];
      for (const old of replaced) {
        if (!old) continue;
        this.items.splice(this.items.indexOf(old), 1);
        entries.delete(old.sub === undefined ? '' : `\0${old.sub}`);
        old.onDone?.();
      }
    }
    const item: QueueItem = { key, sub, bytes, transmits: 0, id: this.nextId++, onDone };
    const map = entries ?? new Map<string, QueueItem>();
    map.set(sub === undefined ? '' : `\0${sub}`, item);
    this.byKey.set(key, map);
    // a fresh item sorts first; keeping it at the head avoids a re-sort
    this.items.unshift(item);
  }

  /**
   * Takes broadcasts totalling at most `budget` bytes, each costing `frameBytes` extra, and counts one
   * transmission for each. At most `maxCount` items.
   */
  take(budget: number, frameBytes: number, limit: number, maxCount: number): Uint8Array[] {
    if (this.items.length === 0 || maxCount <= 0) return [];
    if (!this.sorted) {
      this.items.sort((a, b) => a.transmits - b.transmits || b.id - a.id);
      this.sorted = true;
    }
    const out: Uint8Array[] = [];
    let retired = false;
    for (const item of this.items) {
      if (out.length >= maxCount) break;
      const cost = item.bytes.length + frameBytes;
      if (cost > budget) continue;
      budget -= cost;
      out.push(item.bytes);
      item.transmits++;
      if (item.transmits >= limit) retired = true;
      this.sorted = false;
    }
    if (retired) {
      this.items = this.items.filter((item) => {
        if (item.transmits < limit) return true;
        const entries = this.byKey.get(item.key);
        entries?.delete(item.sub === undefined ? '' : `\0${item.sub}`);
        if (entries?.size === 0) this.byKey.delete(item.key);
        item.onDone?.();
        return false;
      });
    }
    return out;
  }

  clear(): void {
    const items = this.items;
    this.items = [];
    this.byKey.clear();
    for (const item of items) item.onDone?.();
  }
}
