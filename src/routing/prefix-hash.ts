/**
 * prefix_hash (SMG §3.8): a lighter cache affinity than cache_aware — hash the prompt's prefix,
 * place it on the consistent-hash ring, and bound the load.
 *
 * SMG hashes the first `prefix_token_count` token ids and so needs token ids: its HTTP path has
 * none and answers 503 (inventory §15.8). Here HTTP mode keys on characters: the chained block hash
 * at depth min(#blocks, ceil(prefixTokenCount × 4 / blockChars)) (≈ 4 characters per token), or a
 * hash of the whole text when it is shorter than one block. Token ids, when present, win.
 *
 * Bounded load: ok(w) ⇔ total == 0 or inflight(w) ≤ (total + 1) / n × prefixHashLoadFactor.
 * The ring's pick if ok (`ring_hit`), else the least-loaded ok candidate (`load_balance_walk`),
 * else the ring's pick anyway; no key ⇒ the least-loaded candidate (`fallback_least_load`).
 * The bound only grows with `total`, so the sum stops as soon as it admits the pick (an idle pick
 * needs none); only a pick that is over the bound costs a full pass over the candidates.
 *
 * The key's ring position is computed from the key's number directly (`numberPosition`), with no
 * string in between; `prefixKey` names the same key as a string (tests, diagnostics).
 *
 * Owns: the ring. Never: I/O.
 */
import { blockHashes } from '../state/block-hash.js';
import type { WorkerView } from '../state/registry.js';
import { leastInflight } from './candidates.js';
import { WorkerRing } from './consistent-hashing.js';
import { numberPosition, ringPosition } from './hash-ring.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

const CHARS_PER_TOKEN = 4;

/** FNV-1a over the 32-bit token ids, two lanes folded to 53 bits (as block-hash does) */
function hashTokens(tokens: readonly number[], count: number): number {
  let a = 0x811c9dc5;
  let b = 0x9e3779b9;
  const end = Math.min(tokens.length, count);
  for (let i = 0; i < end; i++) {
    const t = tokens[i] | 0;
    for (let s = 0; s < 32; s += 8) {
      const byte = (t >>> s) & 0xff;
      a = Math.imul(a ^ byte, 0x01000193);
      b = Math.imul(b ^ byte, 0x85ebca6b);
      b ^= b >>> 15;
    }
  }
  return (a >>> 0) * 2 ** 21 + ((b >>> 0) >>> 11);
}

/**
 * The key of a request's prefix: `t` token hash, `b` chained block hash (a number), or `s` the
 * whole text when it is shorter than a block; undefined when it has neither tokens nor text.
 */
function prefixParts(
  req: RouteRequest,
  prefixTokenCount: number,
  blockChars: number,
): { kind: 't' | 'b'; hash: number } | { kind: 's'; text: string } | undefined {
  const count = Math.max(1, Math.floor(prefixTokenCount));
  if (req.tokens && req.tokens.length > 0) return { kind: 't', hash: hashTokens(req.tokens, count) };
  const text = req.text ?? '';
  if (text.length === 0) return undefined;
  if (text.length < blockChars) return { kind: 's', text };
  const depth = Math.min(
    Math.floor(text.length / blockChars),
    Math.ceil((count * CHARS_PER_TOKEN) / blockChars),
  );
  return { kind: 'b', hash: blockHashes(text, blockChars, depth)[depth - 1] };
}

/** the routing key of a request's prefix, or undefined when it has neither tokens nor text */
export function prefixKey(
  req: RouteRequest,
  prefixTokenCount: number,
  blockChars: number,
): string | undefined {
  const k = prefixParts(req, prefixTokenCount, blockChars);
  if (k === undefined) return undefined;
  return k.kind === 's' ? `s:${k.text}` : `${k.kind}:${k.hash}`;
}

/** the ring position of a request's prefix key, or undefined when it has none */
export function prefixPosition(
  req: RouteRequest,
  prefixTokenCount: number,
  blockChars: number,
): number | undefined {
  const k = prefixParts(req, prefixTokenCount, blockChars);
  if (k === undefined) return undefined;
  if (k.kind === 's') return ringPosition(`s:${k.text}`);
  // token and block hashes live in different spaces: keep them apart on the ring
  return numberPosition(k.kind === 't' ? k.hash + 1 : k.hash);
}

export function createPrefixHashPolicy(params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  const ring = new WorkerRing();
  const loadFactor =
    Number.isFinite(params.prefixHashLoadFactor) && params.prefixHashLoadFactor > 0
      ? params.prefixHashLoadFactor
      : 1.25;
  /** per candidate array: in-flight per candidate, filled by a full pass; LoadView indices */
  const scratch = new WeakMap<readonly WorkerView[], Float64Array>();
  const lvOf = new WeakMap<readonly WorkerView[], Int32Array>();

  return {
    name: 'prefix_hash',
    needsText: true,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      const n = workers.length;
      if (n === 0) {
        ctx.branch('prefix_hash', 'no_healthy_workers');
        return undefined;
      }
      const pos = prefixPosition(req, params.prefixTokenCount, ctx.blockChars);
      const picked = pos === undefined ? undefined : ring.lookup(workers, pos);
      if (!picked) {
        ctx.branch('prefix_hash', 'fallback_least_load');
        return leastInflight(ctx, workers);
      }
      const pickedLoad = ctx.load.inflight(picked.id);
      // ok ⇔ total == 0 or pickedLoad ≤ (total + 1) / n × loadFactor; a partial sum that admits
      // the pick decides (the bound only grows), and pickedLoad == 0 is always admitted
      if (pickedLoad <= (1 / n) * loadFactor) {
        ctx.branch('prefix_hash', 'ring_hit');
        return picked;
      }
      let loads = scratch.get(workers);
      if (!loads) {
        loads = new Float64Array(n);
        scratch.set(workers, loads);
      }
      let lv = lvOf.get(workers);
      if (!lv) {
        lv = Int32Array.from(workers, (w) => ctx.load.workerIndex(w.id));
        lvOf.set(workers, lv);
      }
      const inflightAt = ctx.load.inflightByIndex();
      let total = 0;
      for (let i = 0; i < n; i++) {
        const l = inflightAt[lv[i]];
        loads[i] = l;
        total += l;
        if (pickedLoad <= ((total + 1) / n) * loadFactor) {
          ctx.branch('prefix_hash', 'ring_hit');
          return picked;
        }
      }
      ctx.branch('prefix_hash', 'load_balance_walk');
      const limit = ((total + 1) / n) * loadFactor;
      let best: WorkerView | undefined;
      let bestLoad = Infinity;
      for (let i = 0; i < n; i++) {
        const l = loads[i];
        if (l <= limit && l < bestLoad) {
          best = workers[i];
          bestLoad = l;
        }
      }
      return best ?? picked;
    },
    onWorkersChanged(workers: readonly WorkerView[]): void {
      ring.update(workers);
    },
  };
}
