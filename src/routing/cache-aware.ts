/**
 * cache_aware (SMG's default, §3.6) over the replicated block-hash prefix index (ARCHITECTURE §3)
 * instead of SMG's per-gateway radix tree.
 *
 * Per request: hash the routing text into chained blocks (`blockChars` characters each), then
 *   1. imbalanced load ⇒ the least-loaded candidate;
 *   2. else the candidate holding the deepest run of leading blocks, if it covers more than
 *      `cacheThreshold` of the text (ties: fewer in flight, then fewer blocks held);
 *   3. else (a miss) the least-loaded candidate, ties → the smallest share of the cache, then the
 *      fewest requests routed, then candidate order. SMG sends a miss to min-load and ignores its
 *      own "smallest tree" intent (inventory §15.9); we keep min-load and add the cache share as
 *      the tie-break, so new prefixes land where they displace the least.
 * The chosen worker then holds the prompt's blocks: only the blocks it did not already hold are
 * recorded (the delta that is gossiped), anchored at the deepest one it had.
 *
 * Owns: the decision. Never: index mutation except through `ctx.recordCache`, I/O.
 */
import { blockHashes } from '../state/block-hash.js';
import type { WorkerView } from '../state/registry.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

export function createCacheAwarePolicy(params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  const { cacheThreshold, balanceAbsThreshold, balanceRelThreshold } = params;
  const { balanceTokenUsageThreshold, overloadTokenUsageThreshold } = params;

  /** the least-loaded candidate; ties → least cached, then fewest processed, then order */
  function leastLoaded(workers: readonly WorkerView[], model: string, byCacheShare: boolean): WorkerView {
    let best = workers[0];
    let bestLoad = Infinity;
    let bestHeld = Infinity;
    let bestProcessed = Infinity;
    for (const w of workers) {
      const load = ctx.load.inflight(w.id);
      if (load > bestLoad) continue;
      // share = held / Σ held: the denominator is common, so comparing `held` is the same order
      const held = byCacheShare ? ctx.cache.heldBy(model, w.id) : 0;
      const processed = ctx.load.processed(w.id);
      if (load < bestLoad || held < bestHeld || (held === bestHeld && processed < bestProcessed)) {
        best = w;
        bestLoad = load;
        bestHeld = held;
        bestProcessed = processed;
      }
    }
    return best;
  }

  return {
    name: 'cache_aware',
    needsText: true,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      const n = workers.length;
      if (n === 0) return undefined;
      const model = req.model;
      const text = req.text ?? '';
      const hashes = text.length >= ctx.blockChars ? blockHashes(text, ctx.blockChars) : [];

      // one pass: in-flight spread and engine KV-usage spread
      let minLoad = Infinity;
      let maxLoad = -Infinity;
      let allEngine = true;
      let minUsage = Infinity;
      let maxUsage = -Infinity;
      for (const w of workers) {
        const l = ctx.load.inflight(w.id);
        if (l < minLoad) minLoad = l;
        if (l > maxLoad) maxLoad = l;
        if (allEngine) {
          const e = ctx.load.engineLoad(w.id);
          if (e) {
            if (e.tokenUsage < minUsage) minUsage = e.tokenUsage;
            if (e.tokenUsage > maxUsage) maxUsage = e.tokenUsage;
          } else {
            allEngine = false;
          }
        }
      }
      const imbalanced =
        (allEngine &&
          (maxUsage > overloadTokenUsageThreshold || maxUsage - minUsage > balanceTokenUsageThreshold)) ||
        (maxLoad - minLoad > balanceAbsThreshold && maxLoad > minLoad * balanceRelThreshold);

      let chosen: WorkerView;
      let depths: Map<string, number> | undefined;
      if (hashes.length > 0) depths = ctx.cache.match(model, hashes).depths;

      if (imbalanced) {
        chosen = leastLoaded(workers, model, false);
      } else {
        let best: WorkerView | undefined;
        let bestDepth = 0;
        let bestLoad = Infinity;
        let bestHeld = Infinity;
        if (depths && depths.size > 0) {
          for (const w of workers) {
            const d = depths.get(w.id) ?? 0;
            if (d === 0 || d < bestDepth) continue;
            const load = ctx.load.inflight(w.id);
            if (d === bestDepth && load > bestLoad) continue;
            const held = ctx.cache.heldBy(model, w.id);
            if (d > bestDepth || load < bestLoad || held < bestHeld) {
              best = w;
              bestDepth = d;
              bestLoad = load;
              bestHeld = held;
            }
          }
        }
        const matchRate = text.length > 0 ? (bestDepth * ctx.blockChars) / text.length : 0;
        chosen = best && matchRate > cacheThreshold ? best : leastLoaded(workers, model, true);
      }

      // a full hit records no block but refreshes the deepest one's recency (LRU eviction keeps it)
      if (hashes.length > 0) ctx.recordCache(model, chosen.id, hashes, depths?.get(chosen.id) ?? 0);
      return chosen;
    },
    maintain(): void {
      ctx.cache.evict();
    },
  };
}
