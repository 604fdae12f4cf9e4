/**
 * Where `POST /flush_cache` is recorded so that every peer forgets the flushed workers' prefix
 * blocks: one registry config entry per (worker, flushing node), `cache_flush/<worker>/<node>`, the
 * hex of `{"seen":N}` like every /mesh/config value, N being the packed HLC of the flush (its
 * "cache epoch"). The registry document is replicated reliably (gossip, then Automerge sync with
 * every peer that joins or heals from a partition) and stored, so a peer that was down or cut off
 * when the flush happened, and a restarted one, learn it too; soft-state deltas are lossy.
 *
 * A worker's epoch is the largest N over its entries. Prefix blocks of the worker seen at or
 * before it are dropped from the index, and ones that arrive later with such a `seen` (a delta
 * still in flight, a peer's snapshot, the store) are ignored: they describe a cache that was
 * emptied. Blocks recorded after the flush (whose HLC is later, clocks having observed the epoch)
 * are kept. One entry per flushing node means two peers flushing at once never overwrite each
 * other; a flush replaces the entries of the worker it can see (all older) with its own.
 *
 * Owns: the key and value format. Never: I/O.
 */
export const CACHE_FLUSH_PREFIX = 'cache_flush/';

/** the config key of `node`'s flush of `worker` */
export function cacheFlushKey(worker: string, node: string): string {
  return `${CACHE_FLUSH_PREFIX}${worker}/${node}`;
}

/** the worker id a cache-flush key names, or undefined for any other key */
export function cacheFlushWorker(key: string): string | undefined {
  if (!key.startsWith(CACHE_FLUSH_PREFIX)) return undefined;
  const rest = key.slice(CACHE_FLUSH_PREFIX.length);
  const slash = rest.indexOf('/');
  return slash > 0 ? rest.slice(0, slash) : undefined;
}

export function encodeCacheFlush(seen: number): string {
  return Buffer.from(JSON.stringify({ seen }), 'utf8').toString('hex');
}

/** the epoch in a stored value; undefined when unreadable (written by a foreign or newer peer) */
export function decodeCacheFlush(hex: string): number | undefined {
  if (hex.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(hex)) return undefined;
  try {
    const v = (JSON.parse(Buffer.from(hex, 'hex').toString('utf8')) as { seen?: unknown })?.seen;
    return typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : undefined;
  } catch {
    return undefined;
  }
}

/** worker id → its cache epoch, over every cache-flush entry of the registry config */
export function cacheFlushEpochs(config: ReadonlyMap<string, string>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [key, value] of config) {
    const worker = cacheFlushWorker(key);
    if (worker === undefined) continue;
    const seen = decodeCacheFlush(value);
    if (seen !== undefined && seen > (out.get(worker) ?? 0)) out.set(worker, seen);
  }
  return out;
}
