/**
 * The Replica: this node's copy of all replicated routing state. Every change arrives as an event
 * through `apply`, whose merge rules are commutative, associative and idempotent for every kind,
 * so local writes, gossip and replays from disk can interleave in any order.
 *
 * Routing reads `registry`, `load` and `cache` directly, admission reads `rateLimits` and
 * `globalRate` (in memory, synchronous). The mesh and the store subscribe with `onApplied` and feed
 * remote or stored events back through `apply`; rate-limit usage is the exception on the way out:
 * local increments stay in memory and the mesh collects them with `takeDirty()` on every
 * `rateLimitUsages()` instance on its own timer.
 *
 * Owns: the merge. Never: I/O, timers, imports from outside src/state.
 */
import { CacheIndex } from './cache-index.js';
import type { StateEvent } from './events.js';
import { HlcClock, type Hlc } from './hlc.js';
import { LoadView } from './load-view.js';
import { GLOBAL_RATE_WINDOW_MS, RateLimitUsage } from './rate-limit.js';
import { RegistryDoc, actorIdFor, type RegistryDocDiff } from './registry-doc.js';
import { WorkerRegistry } from './registry.js';
import type { SecretSealer } from './secret-sealer.js';

export type AppliedListener = (ev: StateEvent, changed: boolean) => void;

/**
 * Where registry changes came from: `local` (an admin write on this node: store, then gossip),
 * `remote` (gossip or a sync session: store only).
 */
export type RegistrySource = 'local' | 'remote';
export type RegistryChangesListener = (changes: Uint8Array[], source: RegistrySource) => void;
export type RegistryDiffListener = (diff: RegistryDocDiff) => void;

export interface ReplicaOptions {
  nodeId: string;
  now?: () => number;
  hlcHighWater?: Hlc;
  /** per model and worker, in blocks */
  cacheBlocksPerWorker?: number;
  /** rate-limit usage window (60 s: limits are per minute) */
  rateLimitWindowMs?: number;
  /** the registry document (restored from the store); default: a fresh one for incarnation 0 */
  registryDoc?: RegistryDoc;
  /** seals worker keys in the registry document (given or fresh); default: a key of this process */
  sealer?: SecretSealer;
}

export class Replica {
  readonly nodeId: string;
  readonly clock: HlcClock;
  readonly registry = new WorkerRegistry();
  readonly load: LoadView;
  readonly cache: CacheIndex;
  readonly rateLimits: RateLimitUsage;
  /**
   * The cluster-wide request rate (1 s windows, key `global`): admission counts every admitted
   * inference request here when a global limit is set (`/mesh/rate-limit`).
   */
  readonly globalRate: RateLimitUsage;
  /**
   * Workers, per-model policies and config as an Automerge document: the source of truth of the
   * registry. Its changes feed `registry` (the routing view) through worker.upsert/remove events.
   */
  readonly doc: RegistryDoc;
  private readonly listeners: AppliedListener[] = [];
  private readonly registryListeners: RegistryChangesListener[] = [];
  private readonly diffListeners: RegistryDiffListener[] = [];

  constructor(opts: ReplicaOptions) {
    this.nodeId = opts.nodeId;
    this.clock = new HlcClock(opts.nodeId, opts.now, opts.hlcHighWater);
    this.load = new LoadView(opts.nodeId);
    this.cache = new CacheIndex(opts.cacheBlocksPerWorker);
    this.rateLimits = new RateLimitUsage(opts.nodeId, { windowMs: opts.rateLimitWindowMs, now: opts.now });
    this.globalRate = new RateLimitUsage(opts.nodeId, { windowMs: GLOBAL_RATE_WINDOW_MS, now: opts.now });
    this.doc = opts.registryDoc ?? RegistryDoc.create(actorIdFor(opts.nodeId, 0), { sealer: opts.sealer });
    // a restored document opens its keys with this node's sealer before anything reads it
    if (opts.registryDoc && opts.sealer) opts.registryDoc.setSealer(opts.sealer);
    this.doc.onChange((diff) => this.onDocChange(diff));
    // a document restored from disk: its workers are the registry before any peer answers
    const restored = this.doc.workers();
    if (restored.size > 0 || this.doc.removed().size > 0)
      this.onDocChange({
        upserted: [...restored.keys()],
        removed: [...this.doc.removed()],
        policiesChanged: true,
        configChanged: true,
      });
  }

  /** registry change bytes, local or remote, in the order they entered the document */
  onRegistryChanges(listener: RegistryChangesListener): () => void {
    return subscribe(this.registryListeners, listener);
  }

  /** what moved in the registry document (workers, policies, config) after any change */
  onRegistryDiff(listener: RegistryDiffListener): () => void {
    return subscribe(this.diffListeners, listener);
  }

  /**
   * A local registry write: `write` mutates the document (e.g. `(d) => d.upsertWorker(id, spec)`) and
   * returns its change bytes; the views update at once, then listeners store and gossip the changes.
   */
  writeRegistry(write: (doc: RegistryDoc) => Uint8Array[]): Uint8Array[] {
    const changes = write(this.doc);
    if (changes.length > 0) for (const l of this.registryListeners) l(changes, 'local');
    return changes;
  }

  /** registry changes from a peer (gossip); throws RegistryDocError on malformed bytes, doc intact */
  applyRegistryChanges(changes: Uint8Array[]): boolean {
    // the new changes are the ones given (no need to ask Automerge which): reported when the
    // document moved; changes still waiting for their dependencies are stored once a sync applies them
    return this.mutateRemote(() => this.doc.applyChanges(changes).changed, changes);
  }

  /** one Automerge sync message from `peer`; the changes it carried are reported as `remote` */
  receiveRegistrySync(peer: string, msg: Uint8Array): boolean {
    return this.mutateRemote(() => this.doc.receiveSyncMessage(peer, msg).changed);
  }

  private mutateRemote(fn: () => boolean, known?: Uint8Array[]): boolean {
    const before = this.doc.heads();
    const changed = fn();
    if (this.registryListeners.length > 0) {
      const heads = this.doc.heads();
      if (heads.length !== before.length || heads.some((h, i) => h !== before[i])) {
        const added = known ?? this.doc.getChangesSince(before);
        if (added.length > 0) for (const l of this.registryListeners) l(added, 'remote');
      }
    }
    return changed;
  }

  private onDocChange(diff: RegistryDocDiff): void {
    const specs = this.doc.workers();
    for (const id of diff.upserted) {
      const spec = specs.get(id);
      if (spec) this.apply({ kind: 'worker.upsert', id, spec, hlc: this.tick() });
    }
    for (const id of diff.removed) this.apply({ kind: 'worker.remove', id, hlc: this.tick() });
    for (const l of this.diffListeners) l(diff);
  }

  /** every rate-limit usage this node keeps (the mesh gossips their slots) */
  rateLimitUsages(): RateLimitUsage[] {
    return [this.rateLimits, this.globalRate];
  }

  onApplied(listener: AppliedListener): () => void {
    return subscribe(this.listeners, listener);
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
      globalRate: this.globalRate.exportState(),
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
        // each usage takes only slots of its own window length
        return ev.windowMs === this.globalRate.windowMs && ev.windowMs !== this.rateLimits.windowMs
          ? this.globalRate.apply(ev)
          : this.rateLimits.apply(ev);
    }
  }
}

function subscribe<T>(list: T[], listener: T): () => void {
  list.push(listener);
  return () => {
    const i = list.indexOf(listener);
    if (i >= 0) list.splice(i, 1);
  };
}
