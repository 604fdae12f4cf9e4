/**
 * The Replica: this node's copy of all replicated routing state. Every change arrives as an event
 * through `apply`, whose merge rules are commutative, associative and idempotent for every kind,
 * so local writes, gossip and replays from disk can interleave in any order.
 *
 * Routing reads `registry`, `load` and `cache` directly, admission reads `rateLimits` (in memory,
 * synchronous). The mesh and the store subscribe with `onApplied` and feed remote or stored events
 * back through `apply`; rate-limit usage is the exception on the way out: local increments stay in
 * memory and the mesh collects them with `rateLimits.takeDirty()` on its own timer.
 *
 * Owns: the merge. Never: I/O, timers, imports from outside src/state.
 */
import { CacheIndex } from './cache-index.js';
import type { StateEvent } from './events.js';
import { HlcClock, type Hlc } from './hlc.js';
import { LoadView } from './load-view.js';
import { RateLimitUsage } from './rate-limit.js';
import { WorkerRegistry } from './registry.js';

export type AppliedListener = (ev: StateEvent, changed: boolean) => void;

export interface ReplicaOptions {
  nodeId: string;
  now?: () => number;
  hlcHighWater?: Hlc;
  /** per model and worker, in blocks */
  cacheBlocksPerWorker?: number;
  /** rate-limit usage window (60 s: limits are per minute) */
  rateLimitWindowMs?: number;
}

export class Replica {
  readonly nodeId: string;
  readonly clock: HlcClock;
  readonly registry = new WorkerRegistry();
  readonly load: LoadView;
  readonly cache: CacheIndex;
  readonly rateLimits: RateLimitUsage;
  private readonly listeners: AppliedListener[] = [];

  constructor(opts: ReplicaOptions) {
    this.nodeId = opts.nodeId;
    this.clock = new HlcClock(opts.nodeId, opts.now, opts.hlcHighWater);
    this.load = new LoadView(opts.nodeId);
    this.cache = new CacheIndex(opts.cacheBlocksPerWorker);
    this.rateLimits = new RateLimitUsage(opts.nodeId, { windowMs: opts.rateLimitWindowMs, now: opts.now });
  }

  onApplied(listener: AppliedListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** a timestamp for a local event */
  tick(): Hlc {
    return this.clock.now();
  }

  apply(ev: StateEvent): boolean {
    const changed = this.merge(ev);
    for (const l of this.listeners) l(ev, changed);
    return changed;
  }

  /** canonical copy of everything `apply` merges: equal for replicas that saw the same events */
  exportState(): unknown {
    return {
      registry: this.registry.exportState(),
      load: this.load.exportState(),
      cache: this.cache.exportState(),
      rateLimits: this.rateLimits.exportState(),
    };
  }

  private merge(ev: StateEvent): boolean {
    switch (ev.kind) {
      case 'worker.upsert':
        this.clock.observe(ev.hlc);
        return this.registry.applyUpsert(ev);
      case 'worker.remove': {
        this.clock.observe(ev.hlc);
        const changed = this.registry.applyRemove(ev);
        if (this.registry.isRemoved(ev.id)) {
          this.cache.removeWorker(ev.id);
          this.load.forgetWorker(ev.id);
        }
        return changed;
      }
      case 'worker.health':
        this.clock.observe(ev.hlc);
        return this.registry.applyHealth(ev);
      case 'worker.engine_load':
        return this.registry.isRemoved(ev.id) ? false : this.load.applyEngineLoad(ev);
      case 'load.snapshot':
        return this.load.applySnapshot(ev);
      case 'cache.blocks':
        // a removed worker's id never comes back (re-registration mints a new id)
        return this.registry.isRemoved(ev.worker) ? false : this.cache.apply(ev);
      case 'ratelimit.slots':
        return this.rateLimits.apply(ev);
    }
  }
}
