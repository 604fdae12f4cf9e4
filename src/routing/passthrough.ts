/** passthrough: the first candidate (SMG §3.3; meant for a single worker). */
import type { WorkerView } from '../state/registry.js';
import type { PolicyParams, RoutingContext, RoutingPolicy } from './types.js';

export function createPassthroughPolicy(_params: PolicyParams, _ctx: RoutingContext): RoutingPolicy {
  return {
    name: 'passthrough',
    needsText: false,
    select(workers: readonly WorkerView[]): WorkerView | undefined {
      return workers[0];
    },
  };
}
