/**
 * Routing policies: one file per policy (SMG's shape), a factory per name, and the per-model
 * registry. Routing text extraction lives in src/protocols.
 */
export { createPolicy, isPolicyName, POLICY_FACTORIES } from './factory.js';
export * from './types.js';
export { createBucketPolicy } from './bucket.js';
export { createCacheAwarePolicy } from './cache-aware.js';
export { CacheRecorder } from './cache-recorder.js';
export { createConsistentHashingPolicy, resolveTargetWorker } from './consistent-hashing.js';
export { createLeastLoadPolicy } from './least-load.js';
export { createManualPolicy, ManualPolicy } from './manual.js';
export { createPassthroughPolicy } from './passthrough.js';
export { createPowerOfTwoPolicy } from './power-of-two.js';
export { createPrefixHashPolicy, prefixKey, prefixPosition } from './prefix-hash.js';
export { createRandomPolicy } from './random.js';
export { createRoundRobinPolicy } from './round-robin.js';
export { HashRing, numberPosition, ringPosition, VIRTUAL_NODES } from './hash-ring.js';
export { headerValue, ROUTING_KEY_HEADER, TARGET_WORKER_HEADER } from './headers.js';
export { PolicyRegistry, POLICY_LABEL, type PolicyRegistryOptions } from './registry.js';
