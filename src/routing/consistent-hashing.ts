/**
 * consistent_hashing (SMG §3.7): header-driven affinity on a ring of 150 virtual nodes per URL.
 *
 *   1. `x-smg-target-worker` names a candidate — by index into the candidate list (SMG), by URL or
 *      by worker id ⇒ that worker (`target_worker_hit`). If it names none, SMG answers "no worker"
 *      (inventory §15.8); we count `target_worker_miss` and fall through to 2–4.
 *   2. `x-smg-routing-key` ⇒ ring (`routing_key_hit`).
 *   3. implicit key: the first non-empty of `authorization`, `x-forwarded-for`, `cookie` ⇒ ring
 *      (`routing_key_hit`, as SMG).
 *   4. random candidate (`random_fallback`).
 * Exactly one branch is counted per request. The ring walk skips URLs that are not candidates, so a
 * worker that goes unhealthy only moves its own keys, and they come back when it recovers.
 *
 * Owns: the ring. Never: I/O.
 */
import type { WorkerView } from '../state/registry.js';
import { lookupOf, randomIndex } from './candidates.js';
import { HashRing, ringPosition } from './hash-ring.js';
import { headerValue, ROUTING_KEY_HEADER, TARGET_WORKER_HEADER } from './headers.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

const IMPLICIT_KEY_HEADERS = ['authorization', 'x-forwarded-for', 'cookie'] as const;

/** resolves `x-smg-target-worker` against the candidates: index, then URL, then id */
export function resolveTargetWorker(target: string, workers: readonly WorkerView[]): WorkerView | undefined {
  const t = target.trim();
  if (/^\d+$/.test(t)) {
    const i = Number(t);
    if (i < workers.length) return workers[i];
  }
  const l = lookupOf(workers);
  return l.byUrl.get(t) ?? l.byId.get(t);
}

/**
 * A ring over a model's worker URLs that follows the candidate set: rebuilt on `update`, and
 * lazily when a candidate list shows a URL the ring lacks (checked once per candidate array).
 * Per candidate array (and ring), the candidate of each ring URL is resolved once, so a lookup is
 * a binary search and an array read.
 */
export class WorkerRing {
  private ring = new HashRing([]);
  /** candidate array → the candidate per ring URL index (undefined: not a candidate) */
  private owners = new WeakMap<readonly WorkerView[], (WorkerView | undefined)[]>();

  update(workers: readonly WorkerView[]): void {
    this.ring = new HashRing(workers.map((w) => w.url));
    this.owners = new WeakMap();
  }

  /** the first candidate clockwise from the key's position */
  lookup(workers: readonly WorkerView[], position: number): WorkerView | undefined {
    let byOwner = this.owners.get(workers);
    if (!byOwner) {
      if (workers.some((w) => !this.ring.has(w.url))) {
        this.ring = new HashRing([...this.ring.urls, ...workers.map((w) => w.url)]);
        this.owners = new WeakMap();
      }
      const byUrl = lookupOf(workers).byUrl;
      byOwner = this.ring.urls.map((u) => byUrl.get(u));
      this.owners.set(workers, byOwner);
    }
    return this.ring.walkOwners(position, byOwner);
  }
}

export function createConsistentHashingPolicy(_params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  const ring = new WorkerRing();

  return {
    name: 'consistent_hashing',
    needsText: false,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      if (workers.length === 0) {
        ctx.branch('consistent_hashing', 'no_healthy_workers');
        return undefined;
      }
      let targetMissed = false;
      const target = headerValue(req.headers, TARGET_WORKER_HEADER);
      if (target !== undefined) {
        const w = resolveTargetWorker(target, workers);
        if (w) {
          ctx.branch('consistent_hashing', 'target_worker_hit');
          return w;
        }
        targetMissed = true;
        ctx.branch('consistent_hashing', 'target_worker_miss');
      }
      let key = headerValue(req.headers, ROUTING_KEY_HEADER);
      for (let i = 0; key === undefined && i < IMPLICIT_KEY_HEADERS.length; i++) {
        key = headerValue(req.headers, IMPLICIT_KEY_HEADERS[i]);
      }
      if (key !== undefined) {
        const w = ring.lookup(workers, ringPosition(key));
        if (w) {
          if (!targetMissed) ctx.branch('consistent_hashing', 'routing_key_hit');
          return w;
        }
      }
      if (!targetMissed) ctx.branch('consistent_hashing', 'random_fallback');
      return workers[randomIndex(ctx, workers.length)];
    },
    onWorkersChanged(workers: readonly WorkerView[]): void {
      ring.update(workers);
    },
  };
}
