/** Policy name → factory. */
import { createBucketPolicy } from './bucket.js';
import { createCacheAwarePolicy } from './cache-aware.js';
import { createConsistentHashingPolicy } from './consistent-hashing.js';
import { createLeastLoadPolicy } from './least-load.js';
import { createManualPolicy } from './manual.js';
import { createPassthroughPolicy } from './passthrough.js';
import { createPowerOfTwoPolicy } from './power-of-two.js';
import { createPrefixHashPolicy } from './prefix-hash.js';
import { createRandomPolicy } from './random.js';
import { createRoundRobinPolicy } from './round-robin.js';
import {
  POLICY_NAMES,
  type PolicyFactory,
  type PolicyName,
  type PolicyParams,
  type RoutingContext,
  type RoutingPolicy,
} from './types.js';

export const POLICY_FACTORIES: Readonly<Record<PolicyName, PolicyFactory>> = {
  random: createRandomPolicy,
  round_robin: createRoundRobinPolicy,
  passthrough: createPassthroughPolicy,
  cache_aware: createCacheAwarePolicy,
  power_of_two: createPowerOfTwoPolicy,
  least_load: createLeastLoadPolicy,
  prefix_hash: createPrefixHashPolicy,
  consistent_hashing: createConsistentHashingPolicy,
  manual: createManualPolicy,
  bucket: createBucketPolicy,
};

export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}

export function createPolicy(name: PolicyName, params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  return POLICY_FACTORIES[name](params, ctx);
}
