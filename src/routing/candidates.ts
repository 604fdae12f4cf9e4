/**
 * Small helpers over a candidate list (the routable workers of a model, in registry order).
 *
 * The registry hands out the same array until its views change, so per-array lookup maps are
 * cached in a WeakMap keyed by the array: building them costs O(n) once per worker-set change, not
 * per request.
 */
import type { WorkerView } from '../state/registry.js';
import type { RoutingContext } from './types.js';

interface Lookup {
  byUrl: Map<string, WorkerView>;
  byId: Map<string, WorkerView>;
}

const lookups = new WeakMap<readonly WorkerView[], Lookup>();

export function lookupOf(workers: readonly WorkerView[]): Lookup {
  let l = lookups.get(workers);
  if (!l) {
    l = { byUrl: new Map(), byId: new Map() };
    for (const w of workers) {
      if (!l.byUrl.has(w.url)) l.byUrl.set(w.url, w);
      if (!l.byId.has(w.id)) l.byId.set(w.id, w);
    }
    lookups.set(workers, l);
  }
  return l;
}

/** uniform index in [0, n); robust to a PRNG that returns exactly 1 */
export function randomIndex(ctx: RoutingContext, n: number): number {
  const i = Math.floor(ctx.random() * n);
  return i >= n ? n - 1 : i < 0 ? 0 : i;
}

/** the candidate with the fewest cluster-wide in-flight requests; ties → earliest */
export function leastInflight(ctx: RoutingContext, workers: readonly WorkerView[]): WorkerView | undefined {
  let best: WorkerView | undefined;
  let bestLoad = Infinity;
  for (const w of workers) {
    const l = ctx.load.inflight(w.id);
    if (l < bestLoad) {
      best = w;
      bestLoad = l;
    }
  }
  return best;
}

/** the minimum of `score` over the workers, uniformly at random among ties */
export function minRandomTie(
  ctx: RoutingContext,
  workers: readonly WorkerView[],
  score: (w: WorkerView) => number,
): WorkerView | undefined {
  let best = Infinity;
  let ties = 0;
  let chosen: WorkerView | undefined;
  // reservoir sampling over the tied minimum: one pass, no allocation
  for (const w of workers) {
    const s = score(w);
    if (s < best) {
      best = s;
      ties = 1;
      chosen = w;
    } else if (s === best) {
      ties++;
      if (randomIndex(ctx, ties) === 0) chosen = w;
    }
  }
  return chosen;
}
