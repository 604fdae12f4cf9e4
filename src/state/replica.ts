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
import { cacheFlushEpochs, cacheFlushKey, cacheFlushWorker, encodeCacheFlush } from './cache-flush.js';
import { CacheIndex } from './cache-index.js';
import type { StateEvent } from './events.js';
import { HlcClock, packHlc, unpackHlc, type Hlc } from './hlc.js';
import { LoadView } from './load-view.js';
import { GLOBAL_RATE_WINDOW_MS, RateLimitUsage } from './rate-limit.js';
import { RegistryDoc, actorIdFor, type RegistryDocDiff, type WorkerSpecCheck } from './registry-doc.js';
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
/** a worker's prefix cache was flushed: its blocks seen at or before `epoch` (packed HLC) are void */
export type CacheFlushListener = (worker: string, epoch: number) => void;

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
  /**
   * The full validation of worker specs read from the document (the gateway's WorkerSpec schema):
   * a spec it refuses, from a peer or from disk, never reaches the routing registry.
   */
  workerSpecCheck?: WorkerSpecCheck;
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
  private readonly flushListeners: CacheFlushListener[] = [];
  /** worker id → cache epoch (see cache-flush.ts): its blocks seen at or before it are void */
  private flushEpochs: ReadonlyMap<string, number> = new Map();
  /** removed duplicate registrations → the id of the same URL that survived */
  private readonly mergedInto = new Map<string, string>();

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
    if (opts.workerSpecCheck) this.doc.setSpecCheck(opts.workerSpecCheck);
    this.doc.onChange((diff) => this.onDocChange(diff));
    this.refreshCacheEpochs();
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
    if (diff.configChanged) this.refreshCacheEpochs();
    for (const l of this.diffListeners) l(diff);
  }

  /**
   * `POST /flush_cache`: the workers' caches were emptied now. Records one cache epoch for all of
   * them in the registry (so every peer, and every restart, forgets their prefix blocks up to now)
   * and drops this node's entries they supersede, or that name removed workers.
   */
  flushCacheIndex(workers: readonly string[]): void {
    if (workers.length === 0) return;
    const epoch = packHlc(this.tick());
    const flushed = new Set(workers);
    const entries = new Map<string, string | undefined>();
    for (const key of this.doc.config().keys()) {
      const worker = cacheFlushWorker(key);
      if (worker !== undefined && (flushed.has(worker) || this.doc.isRemoved(worker)))
        entries.set(key, undefined);
    }
    for (const w of flushed) entries.set(cacheFlushKey(w, this.nodeId), encodeCacheFlush(epoch));
    this.writeRegistry((d) => d.writeConfig(entries));
  }

  /** worker id → cache epoch (packed HLC), for the workers whose cache was ever flushed */
  cacheEpochs(): ReadonlyMap<string, number> {
    return this.flushEpochs;
  }

  /** a flushed cache (here, on a peer, or read back from the store) */
  onCacheFlushed(listener: CacheFlushListener): () => void {
    return subscribe(this.flushListeners, listener);
  }

  /** applies epochs that moved: the clock passes them (so what this node records next is newer) */
  private refreshCacheEpochs(): void {
    const next = cacheFlushEpochs(this.doc.config());
    const prev = this.flushEpochs;
    this.flushEpochs = next;
    for (const [worker, epoch] of next) {
      if (epoch <= (prev.get(worker) ?? 0)) continue;
      this.clock.observe(unpackHlc(epoch, this.nodeId));
      this.cache.dropWorkerBlocks(worker, epoch);
      for (const l of this.flushListeners) l(worker, epoch);
    }
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
        const url = this.registry.get(ev.id)?.url;
        const changed = this.registry.applyRemove(ev);
        if (this.registry.isRemoved(ev.id)) {
          // a duplicate registration of a URL that collapsed into the surviving id: the engine, its
          // health and its KV cache are the same, so the survivor takes the loser's observations
          // (it stays routable here) and prefix blocks (early traffic keeps its affinity).
          // Registry events come from the document in causal order, so the survivor is known here.
          // (Moved blocks are not persisted under the survivor until it is routed to again.)
          const survivor = url === undefined ? undefined : this.registry.getByUrl(url);
          if (survivor) {
            this.cache.moveWorker(ev.id, survivor.id);
            this.registry.adoptHealth(ev.id, survivor.id);
            this.mergedInto.set(ev.id, survivor.id);
          } else this.cache.removeWorker(ev.id);
          this.load.forgetWorker(ev.id);
        }
        return changed;
      }
      case 'worker.health': {
        this.clock.observe(ev.hlc);
        // a prober still probing a duplicate registration: the word is about the surviving id
        const into = this.mergedInto.get(ev.id);
        return this.registry.applyHealth(into === undefined ? ev : { ...ev, id: into });
      }
      case 'worker.engine_load':
        return this.registry.isRemoved(ev.id) ? false : this.load.applyEngineLoad(ev);
      case 'load.snapshot':
        return this.load.applySnapshot(ev);
      case 'cache.blocks': {
        // a late delta of a duplicate registration goes to the id it collapsed into
        const into = this.mergedInto.get(ev.worker);
        if (into !== undefined) return this.merge({ ...ev, worker: into });
        // a removed worker's id never comes back (re-registration mints a new id)
        if (this.registry.isRemoved(ev.worker)) return false;
        // blocks of a cache emptied since (a late delta, a snapshot, the store) are void
        if (this.flushEpochs.size > 0 && ev.seen <= (this.flushEpochs.get(ev.worker) ?? 0)) return false;
        return this.cache.apply(ev);
      }
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
