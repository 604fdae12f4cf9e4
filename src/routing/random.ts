/** random: a uniform choice among the candidates (SMG §3.1). */
import type { WorkerView } from '../state/registry.js';
import { randomIndex } from './candidates.js';
import type { PolicyParams, RoutingContext, RoutingPolicy } from './types.js';

export function createRandomPolicy(_params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  return {
    name: 'random',
    needsText: false,
    select(workers: readonly WorkerView[]): WorkerView | undefined {
      if (workers.length === 0) return undefined;
      return workers[randomIndex(ctx, workers.length)];
    },
  };
}
