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
import { NodeStore, StoreError, type StoreLogger } from './node-store.js';

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
