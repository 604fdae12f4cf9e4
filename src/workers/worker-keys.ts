/**
 * How this node keeps worker `api_key`s sealed in the replicated registry (the format is
 * src/state/secret-sealer.ts, the storage src/state/registry-doc.ts):
 *   - with a cluster key (`--mesh-cluster-key`, SMG_MESH_CLUSTER_KEY, `--mesh-cluster-key-file`) the
 *     sealing key is derived from it, so every peer opens what any peer sealed; during a rotation
 *     the primary seals and every listed key opens;
 *   - without one, from a node-local key: `<data dir>/sealing.key` (0600) so a restart opens its own
 *     registry again, or with no data dir a key of this process (its registry lives in memory only).
 *     Peers of a mesh without a cluster key therefore cannot open each other's worker keys;
 *   - a local key found in the data dir while a cluster key is set still opens (a node that joined
 *     a keyed mesh later), and what it opened is sealed again under the cluster key.
 * At start, keys stored in plaintext by older versions or sealed under a non-primary key are sealed
 * again under the primary key. A worker whose key this node cannot open is reported once (a
 * warning with the worker, never a value); this node then calls it without a key of its own (the
 * gateway's `--api-key` when set), so the worker answers 401 and the request fails visibly.
 *
 * Owns: the choice of sealing keys, the re-sealing at start, the warnings. Never: logs a key.
 */
import type { Logger } from 'pino';
import { parseClusterKey } from '../../mesh/swim/keyring.js';
import { openSealingKey, readSealingKey } from '../../store/sealing-key.js';
import type { Replica } from '../state/replica.js';
import { SecretSealer, type SealFailure } from '../state/secret-sealer.js';

export interface WorkerKeySealerOptions {
  /** base64 cluster keys, primary first (validated by the CLI) */
  clusterKeys: readonly string[];
  /** the node's data dir, once opened and locked */
  dataDir?: string;
  logger: Logger;
}

/** the sealer for this node (see the module comment); may create `<dataDir>/sealing.key` */
export function workerKeySealer(o: WorkerKeySealerOptions): SecretSealer {
  const local =
    o.dataDir === undefined
      ? undefined
      : o.clusterKeys.length > 0
        ? readSealingKey(o.dataDir)
        : openSealingKey(o.dataDir);
  if (local?.created)
    o.logger.info({ file: local.file }, 'sealing key created for worker api_keys (back it up with state.db)');
  if (local?.tightened)
    o.logger.warn({ file: local.file }, 'sealing key was readable by others; its mode is 0600 now');
  if (o.clusterKeys.length > 0) {
    const [primary, ...others] = o.clusterKeys.map(parseClusterKey);
    return new SecretSealer(primary, local ? [...others, local.key] : others);
  }
  return local ? new SecretSealer(local.key) : SecretSealer.ephemeral();
}

/**
 * Seals what is due (plaintext from older versions, values under a non-primary key); call once at
 * start, after the store persists registry changes and before the mesh starts. Only at start: two
 * nodes whose primaries differ mid-rotation must not take turns re-sealing each other's writes.
 */
export function resealWorkerKeys(replica: Replica, logger: Logger): void {
  const due = replica.doc.workerKeysDue();
  if (due.plaintext.length === 0 && due.rekey.length === 0) return;
  replica.writeRegistry((d) => d.resealWorkerKeys());
  if (due.rekey.length > 0)
    logger.info({ workers: due.rekey.length }, 'worker api_keys sealed again under the primary cluster key');
  if (due.plaintext.length > 0)
    logger.warn(
      { workers: due.plaintext.length, worker_ids: due.plaintext },
      'worker api_keys stored in plaintext by an older smg are sealed now; the registry history ' +
        '(state.db here, and every peer) still holds the old values: rotate those workers’ keys',
    );
}

const HINT: Record<SealFailure, string> = {
  unknown_key: 'sealed under a key this node does not hold: every peer needs the same --mesh-cluster-key',
  auth: 'the sealed value does not authenticate (damaged)',
  malformed: 'the sealed value is not in a format this smg knows (written by a newer version?)',
};

/** warns once per worker whose key this node cannot open (again if it becomes readable and then not) */
export function watchWorkerKeys(replica: Replica, logger: Logger): () => void {
  const warned = new Set<string>();
  const check = (): void => {
    const unreadable = replica.doc.unreadableWorkerKeys();
    for (const id of warned) if (!unreadable.has(id)) warned.delete(id);
    for (const [id, reason] of unreadable) {
      if (warned.has(id)) continue;
      warned.add(id);
      logger.warn(
        { worker_id: id, url: replica.doc.workers().get(id)?.url, reason, hint: HINT[reason] },
        'cannot open the api_key of a worker; calling it without its key',
      );
    }
  };
  check();
  return replica.onRegistryDiff(check);
}
