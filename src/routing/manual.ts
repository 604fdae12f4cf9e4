/**
 * manual (SMG §3.9): sticky sessions keyed by `x-smg-routing-key`.
 *
 * Map routing key → { up to 2 candidate worker ids (oldest first), last access }.
 *   hit, a candidate is available   ⇒ the first available one      (`occupied_hit`)
 *   hit, none available             ⇒ choose, append, keep last 2  (`occupied_miss`)
 *   new key                         ⇒ choose and store             (`vacant`)
 *   no (or empty) key               ⇒ choose, store nothing        (`no_routing_id`)
 * Choice by assignment mode: `random`; `min_load` (fewest in flight, random among ties);
 * `min_group` (fewest routing keys assigned, random among ties).
 *
 * Candidates are worker ids, not URLs as in SMG: a worker re-registered at the same URL gets a new
 * id and an empty KV cache, so its sessions are rightly re-placed. "Routing keys on a worker"
 * (min_group, `activeKeys`) counts the map entries that list the worker — SMG counts keys with
 * requests in flight, which the gateway does not report back to policies.
 *
 * Owns: the sticky map (local to this gateway; entries idle ≥ maxIdleSecs are dropped by
 * `maintain`). Never: I/O, timers.
 */
import type { WorkerView } from '../state/registry.js';
import { lookupOf, minRandomTie, randomIndex } from './candidates.js';
import { routingKey } from './headers.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

const MAX_CANDIDATES = 2;

interface StickyEntry {
  /** worker ids, oldest first */
  ids: string[];
  lastAccess: number;
}

export class ManualPolicy implements RoutingPolicy {
  readonly name = 'manual' as const;
  readonly needsText = false;
  private readonly entries = new Map<string, StickyEntry>();
  private readonly keysPerWorker = new Map<string, number>();

  constructor(
    private readonly params: PolicyParams,
    private readonly ctx: RoutingContext,
  ) {}

  /** sticky-map entries (`smg_manual_policy_cache_entries`) */
  size(): number {
    return this.entries.size;
  }

  /** routing keys whose entry lists this worker */
  activeKeys(workerId: string): number {
    return this.keysPerWorker.get(workerId) ?? 0;
  }

  select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
    if (workers.length === 0) {
      this.ctx.branch('manual', 'no_healthy_workers');
      return undefined;
    }
    const key = routingKey(req);
    if (key === undefined) {
      this.ctx.branch('manual', 'no_routing_id');
      return this.choose(workers);
    }
    const now = this.ctx.now();
    const entry = this.entries.get(key);
    if (entry) {
      entry.lastAccess = now;
      const byId = lookupOf(workers).byId;
      for (const id of entry.ids) {
        const w = byId.get(id);
        if (w) {
          this.ctx.branch('manual', 'occupied_hit');
          return w;
        }
      }
      const w = this.choose(workers);
      while (entry.ids.length >= MAX_CANDIDATES) this.unlink(entry.ids.shift() as string);
      entry.ids.push(w.id);
      this.link(w.id);
      this.ctx.branch('manual', 'occupied_miss');
      return w;
    }
    const w = this.choose(workers);
    this.entries.set(key, { ids: [w.id], lastAccess: now });
    this.link(w.id);
    this.ctx.branch('manual', 'vacant');
    return w;
  }

  /** drops entries idle for `maxIdleSecs` or more */
  maintain(): void {
    const maxIdleMs = this.params.maxIdleSecs * 1000;
    if (!(maxIdleMs > 0)) return;
    const now = this.ctx.now();
    for (const [key, e] of this.entries) {
      if (now - e.lastAccess >= maxIdleMs) {
        for (const id of e.ids) this.unlink(id);
        this.entries.delete(key);
      }
    }
  }

  private choose(workers: readonly WorkerView[]): WorkerView {
    switch (this.params.assignmentMode) {
      case 'min_load':
        return minRandomTie(this.ctx, workers, (w) => this.ctx.load.inflight(w.id)) ?? workers[0];
      case 'min_group':
        return minRandomTie(this.ctx, workers, (w) => this.activeKeys(w.id)) ?? workers[0];
      default:
        return workers[randomIndex(this.ctx, workers.length)];
    }
  }

  private link(id: string): void {
    this.keysPerWorker.set(id, (this.keysPerWorker.get(id) ?? 0) + 1);
  }

  private unlink(id: string): void {
    const n = (this.keysPerWorker.get(id) ?? 0) - 1;
    if (n > 0) this.keysPerWorker.set(id, n);
    else this.keysPerWorker.delete(id);
  }
}

export function createManualPolicy(params: PolicyParams, ctx: RoutingContext): ManualPolicy {
  return new ManualPolicy(params, ctx);
}
