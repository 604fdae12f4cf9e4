/**
 * power_of_two: draw two distinct random candidates, keep the less loaded (SMG §3.4). Load is the
 * engine-reported KV token usage when both have a report, else the cluster-wide in-flight count
 * (which the gateway tracks for every policy here; SMG's HTTP router tracked it only for
 * cache_aware and manual, so its power_of_two degraded to random — inventory §15.8).
 */
import type { WorkerView } from '../state/registry.js';
import { randomIndex } from './candidates.js';
import type { PolicyParams, RoutingContext, RoutingPolicy } from './types.js';

export function createPowerOfTwoPolicy(_params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  return {
    name: 'power_of_two',
    needsText: false,
    select(workers: readonly WorkerView[]): WorkerView | undefined {
      const n = workers.length;
      if (n <= 1) return workers[0];
      const i = randomIndex(ctx, n);
      let j = randomIndex(ctx, n - 1);
      if (j >= i) j++;
      const a = workers[i];
      const b = workers[j];
      const ea = ctx.load.engineLoad(a.id);
      const eb = ctx.load.engineLoad(b.id);
      const la = ea && eb ? ea.tokenUsage : ctx.load.inflight(a.id);
      const lb = ea && eb ? eb.tokenUsage : ctx.load.inflight(b.id);
      return la <= lb ? a : b;
    },
  };
}
