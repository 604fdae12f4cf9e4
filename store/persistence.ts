/**
 * A node's durable state, opened before anything listens: identity (node id, incarnation, HLC
 * high-water mark, libp2p key) and the registry document (snapshot + changes since), from which
 * the Replica is rebuilt. A node restarted from its data dir therefore serves its last known
 * registry before any peer answers; the mesh then catches up on what changed while it was away.
 *
 * `persistReplica` keeps the file current: every registry change (local, gossiped or synced) is
 * appended and committed before a local one is gossiped; the HLC high-water mark is leased ahead
 * of the clock so a restarted node never repeats a timestamp; the change log is compacted into a
 * snapshot when it grows.
 */
import type { Hlc } from '../src/state/hlc.js';
import { RegistryDoc, RegistryDocError, actorIdFor } from '../src/state/registry-doc.js';
import type { Replica } from '../src/state/replica.js';
import { chainsOf } from '../src/state/cache-chains.js';
import { NodeStore, StoreError, type CacheBlockRow, type StoreLogger } from './node-store.js';

/** compact once this many changes follow the snapshot */
export const COMPACT_THRESHOLD = 500;
/** the stored HLC high-water mark runs this far ahead of the clock */
const HLC_LEASE_MS = 2_000;
const MAINTENANCE_INTERVAL_MS = 1_000;

export interface NodeState {
  store: NodeStore;
  nodeId: string;
  /** this run's incarnation (already bumped and stored) */
  incarnation: number;
  /** restore point of the HLC: above every timestamp the previous run can have issued */
  hlcHighWater: Hlc;
  doc: RegistryDoc;
  libp2pKey?: Uint8Array;
  /** registry changes read back (snapshot excluded) */
  restoredChanges: number;
}

/**
 * Opens `<dir>/state.db`, bumps the incarnation and restores the registry document. Throws
 * StoreError (foreign, corrupt, locked or newer file) or a StoreError wrapping the
 * RegistryDocError of an unreadable document — never an empty registry in place of a bad file.
 */
export function openNodeState(dir: string, opts: { nodeName: string; logger?: StoreLogger }): NodeState {
  const store = NodeStore.open(dir, { nodeName: opts.nodeName, logger: opts.logger });
  try {
    const incarnation = store.bumpIncarnation();
    const id = store.identity();
    const stored = store.loadDoc();
    let doc: RegistryDoc;
    try {
      doc = RegistryDoc.load(actorIdFor(id.nodeId, incarnation), stored.snapshot, stored.changes);
    } catch (err) {
      if (err instanceof RegistryDocError)
        throw new StoreError(
          store.file,
          `store ${store.file}: registry document unreadable: ${err.message}`,
          {
            cause: err,
          },
        );
      throw err;
    }
    if (stored.changes.length > COMPACT_THRESHOLD) {
      store.saveDocSnapshot(doc.save(), doc.heads());
      store.flush();
    }
    return {
      store,
      nodeId: id.nodeId,
      incarnation,
      hlcHighWater: { wall: id.hlcHighWater, counter: 0, node: id.nodeId },
      doc,
      ...(id.libp2pKey && { libp2pKey: id.libp2pKey }),
      restoredChanges: stored.changes.length,
    };
  } catch (err) {
    store.close();
    throw err;
  }
}

/** keeps the store current with the Replica; returns a stop function (flushes) */
export function persistReplica(store: NodeStore, replica: Replica): () => void {
  const off = replica.onRegistryChanges((changes, source) => {
    store.appendDocChanges(changes);
    // a local write is committed before the outbox can gossip it
    if (source === 'local') store.flush();
  });
  let leased = 0;
  const maintain = (): void => {
    const wall = replica.clock.highWater().wall;
    if (wall + HLC_LEASE_MS / 2 > leased) {
      leased = wall + HLC_LEASE_MS;
      store.setHlcHighWater(leased);
    }
    store.compactIfNeeded(COMPACT_THRESHOLD, () => ({
      bytes: replica.doc.save(),
      heads: replica.doc.heads(),
    }));
  };
  maintain();
  store.flush();
  const timer = setInterval(maintain, MAINTENANCE_INTERVAL_MS);
  timer.unref();
  return () => {
    clearInterval(timer);
    off();
    maintain();
    store.flush();
  };
}

/** the prefix-cache index keeps at most this many blocks on disk */
export const CACHE_ROWS_MAX = 200_000;
const CACHE_FLUSH_MS = 1_000;
const CACHE_PRUNE_MS = 30_000;

/**
 * Restores the prefix-cache index from the store (the `maxRows` most recently seen blocks), so a
 * restarted node keeps conversations on the workers that hold their prefixes before any peer
 * answers. Blocks of workers no longer registered are skipped. Returns the blocks restored.
 */
export function restoreCacheIndex(store: NodeStore, replica: Replica, maxRows = CACHE_ROWS_MAX): number {
  // rows of flushed caches (a crash between the flush and the store's next tick) go first
  dropFlushedRows(store, replica.cacheEpochs());
  const rows = store
    .loadCacheBlocks(maxRows)
    .filter(
      (r) => !replica.registry.isRemoved(r.worker) && r.seen > (replica.cacheEpochs().get(r.worker) ?? 0),
    );
  for (const ev of chainsOf(rows)) replica.apply(ev);
  return rows.length;
}

/** deletes the stored blocks each worker's cache epoch voids: one statement per distinct epoch */
function dropFlushedRows(store: NodeStore, epochs: ReadonlyMap<string, number>): void {
  const byEpoch = new Map<number, string[]>();
  for (const [worker, epoch] of epochs) {
    const list = byEpoch.get(epoch);
    if (list) list.push(worker);
    else byEpoch.set(epoch, [worker]);
  }
  for (const [epoch, workers] of byEpoch) store.dropCacheBlocks(workers, epoch);
}

/**
 * Keeps the stored prefix-cache index current: every applied `cache.blocks` event (local routing
 * decisions, gossip, snapshots) becomes rows, written once per second in one transaction (a block
 * touched many times in that second is written once) and pruned to `maxRows` now and then.
 */
export function persistCacheIndex(store: NodeStore, replica: Replica, maxRows = CACHE_ROWS_MAX): () => void {
  let pending = new Map<string, CacheBlockRow>();
  const put = (model: string, worker: string, hash: number, parent: number, seen: number): void => {
    const key = `${model}\u0000${worker}\u0000${hash}`;
    const cur = pending.get(key);
    if (!cur) pending.set(key, { model, worker, hash, parent, seen });
    else {
      if (seen > cur.seen) cur.seen = seen;
      if (cur.parent === 0) cur.parent = parent;
    }
  };
  // a flush (here or on a peer) voids the worker's blocks up to its epoch, queued ones included
  const flushed = new Map<string, number>();
  const offFlush = replica.onCacheFlushed((worker, epoch) => {
    for (const [key, row] of pending) if (row.worker === worker && row.seen <= epoch) pending.delete(key);
    flushed.set(worker, epoch);
  });
  const dropFlushed = (): void => {
    if (flushed.size === 0) return;
    const epochs = new Map(flushed);
    flushed.clear();
    try {
      dropFlushedRows(store, epochs);
    } catch {
      // a closed or failing store: restore filters by the epochs in the registry anyway
    }
  };
  const off = replica.onApplied((ev, changed) => {
    if (ev.kind !== 'cache.blocks' || !changed) return;
    if (ev.anchor > 0) put(ev.model, ev.worker, ev.anchor, 0, ev.seen);
    let parent = ev.anchor;
    for (const h of ev.hashes) {
      if (h > 0) put(ev.model, ev.worker, h, parent, ev.seen);
      parent = h;
    }
  });
  const flush = (): void => {
    dropFlushed();
    if (pending.size === 0) return;
    const rows = [...pending.values()];
    pending = new Map();
    try {
      store.putCacheBlocks(rows);
    } catch {
      // a closed or failing store: the index lives on in memory; lastError() reports the store
    }
  };
  const flushTimer = setInterval(flush, CACHE_FLUSH_MS);
  flushTimer.unref();
  const pruneTimer = setInterval(() => {
    try {
      store.pruneCacheBlocks(maxRows);
    } catch {
      // as above
    }
  }, CACHE_PRUNE_MS);
  pruneTimer.unref();
  return () => {
    off();
    offFlush();
    clearInterval(flushTimer);
    clearInterval(pruneTimer);
    flush();
  };
}

/**
 * This node's own rate-limit slots of the current windows, as stored by the mesh (key
 * `<windowMs>:<key>`, window as its start in ms), merged back so a restarted node does not count
 * from 0 again (which would over-admit until its window ends). Returns the slots restored.
 */
export function restoreRateSlots(store: NodeStore, replica: Replica, now = Date.now()): number {
  let n = 0;
  const usages = replica.rateLimitUsages();
  if (usages.length === 0) return 0;
  const oldestMs = Math.min(...usages.map((u) => (u.windowOf(now) - 1) * u.windowMs));
  const rows = store.loadRateSlots(oldestMs);
  for (const u of usages) {
    const prefix = `${u.windowMs}:`;
    for (const r of rows) {
      if (!r.key.startsWith(prefix) || r.window % u.windowMs !== 0) continue;
      const changed = replica.apply({
        kind: 'ratelimit.slots',
        origin: replica.nodeId,
        key: r.key.slice(prefix.length),
        window: r.window / u.windowMs,
        windowMs: u.windowMs,
        requests: r.requests,
        tokens: r.tokens,
      });
      if (changed) n++;
    }
  }
  store.pruneRateSlots(oldestMs);
  return n;
}
