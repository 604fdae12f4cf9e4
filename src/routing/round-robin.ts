/**
 * round_robin: a counter per policy instance, `candidates[c % n]` (SMG §3.2). The counter is
 * local to this gateway: peers of a mesh each cycle on their own, which spreads just as evenly.
 */
import type { WorkerView } from '../state/registry.js';
import type { PolicyParams, RoutingContext, RoutingPolicy } from './types.js';

export function createRoundRobinPolicy(_params: PolicyParams, _ctx: RoutingContext): RoutingPolicy {
  let counter = 0;
  return {
    name: 'round_robin',
    needsText: false,
    select(workers: readonly WorkerView[]): WorkerView | undefined {
      if (workers.length === 0) return undefined;
      const w = workers[counter % workers.length];
      // wrap well before 2^53 so `%` stays exact forever
      counter = counter >= Number.MAX_SAFE_INTEGER - 1 ? 0 : counter + 1;
      return w;
    },
  };
}
