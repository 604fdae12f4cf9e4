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
 *
 * Owns: the ring. Never: I/O.
 */
import { blockHashes } from '../state/block-hash.js';
import type { WorkerView } from '../state/registry.js';
import { leastInflight } from './candidates.js';
import { WorkerRing } from './consistent-hashing.js';
import { ringPosition } from './hash-ring.js';
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

/** the routing key of a request's prefix, or undefined when it has neither tokens nor text */
export function prefixKey(
  req: RouteRequest,
  prefixTokenCount: number,
  blockChars: number,
): string | undefined {
  const count = Math.max(1, Math.floor(prefixTokenCount));
  if (req.tokens && req.tokens.length > 0) return `t:${hashTokens(req.tokens, count)}`;
  const text = req.text ?? '';
  if (text.length === 0) return undefined;
  if (text.length < blockChars) return `s:${text}`;
  const depth = Math.min(
    Math.floor(text.length / blockChars),
    Math.ceil((count * CHARS_PER_TOKEN) / blockChars),
  );
  const hashes = blockHashes(text.slice(0, depth * blockChars), blockChars);
  return `b:${hashes[depth - 1]}`;
}

export function createPrefixHashPolicy(params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  const ring = new WorkerRing();
  const loadFactor =
    Number.isFinite(params.prefixHashLoadFactor) && params.prefixHashLoadFactor > 0
      ? params.prefixHashLoadFactor
      : 1.25;

  return {
    name: 'prefix_hash',
    needsText: true,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      const n = workers.length;
      if (n === 0) {
        ctx.branch('prefix_hash', 'no_healthy_workers');
        return undefined;
      }
      const key = prefixKey(req, params.prefixTokenCount, ctx.blockChars);
      const picked = key === undefined ? undefined : ring.lookup(workers, ringPosition(key));
      if (!picked) {
        ctx.branch('prefix_hash', 'fallback_least_load');
        return leastInflight(ctx, workers);
      }
      let total = 0;
      for (const w of workers) total += ctx.load.inflight(w.id);
      const limit = ((total + 1) / n) * loadFactor;
      if (total === 0 || ctx.load.inflight(picked.id) <= limit) {
        ctx.branch('prefix_hash', 'ring_hit');
        return picked;
      }
      ctx.branch('prefix_hash', 'load_balance_walk');
      let best: WorkerView | undefined;
      let bestLoad = Infinity;
      for (const w of workers) {
        const l = ctx.load.inflight(w.id);
        if (l <= limit && l < bestLoad) {
          best = w;
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
