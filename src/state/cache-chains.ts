/**
 * Turns flat prefix-cache rows (model, worker, hash, parent, seen) back into `cache.blocks` deltas
 * that rebuild the same chains: one delta per unbranched run of blocks seen at the same time,
 * anchored at the block before it. Used for snapshots sent to joining peers and for restoring the index from the store.
 *
 * Owns: the grouping. Never: I/O, the index itself.
 */
import type { CacheBlocksEvent } from './events.js';

export interface CacheRow {
  model: string;
  worker: string;
  hash: number;
  /** the block before it (0: a first block or unknown) */
  parent: number;
  /** packed HLC */
  seen: number;
}

/**
 * Deltas for `rows`: every row appears in exactly one delta, after its parent when the parent is in
 * the same (model, worker) group. Malformed input (cycles, duplicate hashes) cannot loop: each row
 * is emitted once.
 */
export function chainsOf(rows: Iterable<CacheRow>): CacheBlocksEvent[] {
  const groups = new Map<string, { model: string; worker: string; rows: Map<number, CacheRow> }>();
  for (const r of rows) {
    const key = `${r.model}\u0000${r.worker}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { model: r.model, worker: r.worker, rows: new Map() }));
    const cur = g.rows.get(r.hash);
    if (!cur || r.seen > cur.seen) g.rows.set(r.hash, r);
  }
  const out: CacheBlocksEvent[] = [];
  for (const g of groups.values()) {
    const children = new Map<number, CacheRow[]>();
    const roots: CacheRow[] = [];
    for (const r of g.rows.values()) {
      if (r.parent !== 0 && r.parent !== r.hash && g.rows.has(r.parent)) {
        let list = children.get(r.parent);
        if (!list) children.set(r.parent, (list = []));
        list.push(r);
      } else roots.push(r);
    }
    const done = new Set<number>();
    const emitFrom = (start: CacheRow): void => {
      const stack: CacheRow[] = [start];
      while (stack.length > 0) {
        let node = stack.pop() as CacheRow;
        if (done.has(node.hash)) continue;
        // a branch continues from its parent; a root whose parent the worker no longer holds starts
        // fresh (claiming the parent would put an evicted block back)
        const anchor = g.rows.has(node.parent) && node.parent !== node.hash ? node.parent : 0;
        const hashes: number[] = [];
        const seen = node.seen;
        for (;;) {
          done.add(node.hash);
          hashes.push(node.hash);
          const kids = (children.get(node.hash) ?? []).filter((k) => !done.has(k.hash));
          if (kids.length === 0) break;
          for (let i = 1; i < kids.length; i++) stack.push(kids[i]);
          // a run keeps one last-seen time: a block seen at another time starts the next run
          if (kids[0].seen !== seen) {
            stack.push(kids[0]);
            break;
          }
          node = kids[0];
        }
        out.push({ kind: 'cache.blocks', model: g.model, worker: g.worker, anchor, hashes, seen });
      }
    };
    for (const r of roots) emitFrom(r);
    // rows only reachable through a cycle of parents: emitted on their own
    for (const r of g.rows.values()) if (!done.has(r.hash)) emitFrom({ ...r, parent: 0 });
  }
  return out;
}
