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
 * Cost per request: one pass over the candidates' in-flight counts, and a binary search of the
 * index for the deepest prefix any candidate holds (`CacheIndex.deepest`, O(log n) lookups),
 * hashing the text only as far as the search probes (a miss on the first block hashes one block);
 * the chosen worker's own depth only needs a second search when it is not among the deepest
 * holders. Per candidate list (the registry reuses the array until the workers change) the
 * worker ↔ index-slot mapping is built once and cached. Recording goes through
 * `ctx.recordCacheDeferred` when the context has it (it queues the delta, and a CacheRecorder
 * hashes the rest of the text and applies it after the decision, batched), else `recordCache`.
 *
 * Owns: the decision. Never: index mutation except through `ctx.recordCache`, I/O.
 */
import { PromptHashes } from '../state/block-hash.js';
import type { WorkerView } from '../state/registry.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

/** per candidate list: the CacheIndex slot of each candidate and back, and a scratch load array */
interface CandidateState {
  slotVersion: number;
  /** CacheIndex slot → candidate index, −1 when not a candidate */
  candidateOfSlot: Int32Array;
  /** candidate index → CacheIndex slot, −1 when the worker holds nothing yet */
  slotOfCandidate: Int32Array;
  /** the candidates' ids (read without touching the views) */
  ids: string[];
  /** the candidates' LoadView indices */
  lv: Int32Array;
  /** in-flight per candidate, filled by each select */
  loads: Float64Array;
  /** whether every worker holding blocks of `model` is a candidate, as of `holdersVersion` */
  model: string;
  holdersVersion: number;
  everyHolderIsCandidate: boolean;
}

export function createCacheAwarePolicy(params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  const { cacheThreshold, balanceAbsThreshold, balanceRelThreshold } = params;
  const { balanceTokenUsageThreshold, overloadTokenUsageThreshold } = params;
  const states = new WeakMap<readonly WorkerView[], CandidateState>();
  const holders: number[] = [];

  function stateOf(workers: readonly WorkerView[]): CandidateState {
    const version = ctx.cache.slotVersion;
    let st = states.get(workers);
    if (st && st.slotVersion === version) return st;
    const n = workers.length;
    const slotOfCandidate = new Int32Array(n);
    let maxSlot = -1;
    for (let i = 0; i < n; i++) {
      const s = ctx.cache.slotOfWorker(workers[i].id);
      slotOfCandidate[i] = s;
      if (s > maxSlot) maxSlot = s;
    }
    const candidateOfSlot = new Int32Array(maxSlot + 1).fill(-1);
    for (let i = n - 1; i >= 0; i--) if (slotOfCandidate[i] >= 0) candidateOfSlot[slotOfCandidate[i]] = i;
    st = {
      slotVersion: version,
      candidateOfSlot,
      slotOfCandidate,
      ids: workers.map((w) => w.id),
      lv: st?.lv ?? Int32Array.from(workers, (w) => ctx.load.workerIndex(w.id)),
      loads: st?.loads ?? new Float64Array(n),
      model: '',
      holdersVersion: -1,
      everyHolderIsCandidate: false,
    };
    states.set(workers, st);
    return st;
  }

  /** whether every worker holding blocks of the model is a candidate (recomputed on a change) */
  function everyHolderIsCandidate(st: CandidateState, model: string): boolean {
    const v = ctx.cache.holdersVersion(model);
    if (st.model !== model || st.holdersVersion !== v) {
      const held = ctx.cache.heldCounts(model);
      let all = true;
      for (let s = 0; s < held.length && all; s++) {
        if (held[s] > 0 && !(s < st.candidateOfSlot.length && st.candidateOfSlot[s] >= 0)) all = false;
      }
      st.model = model;
      st.holdersVersion = v;
      st.everyHolderIsCandidate = all;
    }
    return st.everyHolderIsCandidate;
  }

  /**
   * The least-loaded candidate; ties → the least cached (when `held` is given: a miss; not for
   * the imbalance override), then the fewest processed, then candidate order. share = held / Σ
   * held: the denominator is common, so comparing `held` gives the same order.
   */
  function leastLoaded(st: CandidateState, held?: readonly number[]): number {
    const { loads, ids, slotOfCandidate } = st;
    let best = 0;
    let bestLoad = Infinity;
    let bestHeld = Infinity;
    let bestProcessed = -1; // looked up only on a tie
    for (let i = 0; i < loads.length; i++) {
      const load = loads[i];
      if (load > bestLoad) continue;
      let h = 0;
      if (held) {
        const s = slotOfCandidate[i];
        h = s >= 0 && s < held.length ? held[s] : 0;
      }
      if (load === bestLoad) {
        if (h > bestHeld) continue;
        if (h === bestHeld) {
          if (bestProcessed < 0) bestProcessed = ctx.load.processed(ids[best]);
          const p = ctx.load.processed(ids[i]);
          if (p >= bestProcessed) continue;
          best = i;
          bestProcessed = p;
          continue;
        }
      }
      best = i;
      bestLoad = load;
      bestHeld = h;
      bestProcessed = -1;
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
      // hashed on demand: the index lookup reads only the blocks it probes
      const hashes = new PromptHashes(text, ctx.blockChars);
      const st = stateOf(workers);
      const { loads, slotOfCandidate, lv } = st;
      const inflightAt = ctx.load.inflightByIndex();
      const engineAt = ctx.load.engineByIndex();

      // one pass: in-flight spread and engine KV-usage spread
      let minLoad = Infinity;
      let maxLoad = -Infinity;
      let allEngine = true;
      let minUsage = Infinity;
      let maxUsage = -Infinity;
      for (let i = 0; i < n; i++) {
        const l = inflightAt[lv[i]];
        loads[i] = l;
        if (l < minLoad) minLoad = l;
        if (l > maxLoad) maxLoad = l;
        if (allEngine) {
          const e = engineAt[lv[i]];
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

      let chosen: number;
      /** the chosen worker's depth, −1 until known */
      let chosenDepth = -1;
      let depth = 0;
      if (imbalanced) {
        chosen = leastLoaded(st);
      } else {
        if (hashes.length > 0) {
          const all = everyHolderIsCandidate(st, model);
          depth = ctx.cache.deepest(model, hashes, st.candidateOfSlot, holders, all);
        }
        const matchRate = text.length > 0 ? (depth * ctx.blockChars) / text.length : 0;
        const held = ctx.cache.heldCounts(model);
        if (depth > 0 && holders.length > 0 && matchRate > cacheThreshold) {
          // the deepest holders: fewer in flight, then fewer blocks held, then candidate order
          chosen = -1;
          let bestLoad = Infinity;
          let bestHeld = Infinity;
          for (const i of holders) {
            const load = loads[i];
            const s = slotOfCandidate[i];
            const h = s < held.length ? held[s] : 0;
            if (load < bestLoad || (load === bestLoad && (h < bestHeld || (h === bestHeld && i < chosen)))) {
              chosen = i;
              bestLoad = load;
              bestHeld = h;
            }
          }
          chosenDepth = depth;
        } else {
          chosen = leastLoaded(st, held);
        }
      }

      const w = workers[chosen];
      if (hashes.length > 0) {
        // a full hit records no block but refreshes the deepest one's recency (LRU eviction keeps it)
        if (chosenDepth < 0) {
          if (imbalanced) chosenDepth = ctx.cache.depthOf(model, hashes, w.id);
          else if (depth === 0) chosenDepth = 0;
          else if (holders.includes(chosen)) chosenDepth = depth;
          // not among the deepest holders, so it holds block depth − 1 at most
          else chosenDepth = ctx.cache.depthOf(model, hashes, w.id, depth - 1);
        }
        if (ctx.recordCacheDeferred) ctx.recordCacheDeferred(model, w.id, hashes, chosenDepth);
        else ctx.recordCache(model, w.id, hashes.all(), chosenDepth);
      }
      return w;
    },
    maintain(): void {
      ctx.cache.evict();
    },
  };
}
