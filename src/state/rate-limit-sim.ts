/**
 * A simulated mesh for the rate-limit share rule (tests only): `nodes` RateLimitUsage instances on
 * one manual clock, each handing its dirty slots out every `takeDirtyMs` (own phase) and receiving
 * the others' `lagMs` later; open-loop Poisson arrivals per node. Counts admissions per window.
 */
import { seededRandom } from '../testing/prng.js';
import type { RateLimitSlotsEvent } from './events.js';
import { RateLimitUsage } from './rate-limit.js';

export interface SimOptions {
  limit: number;
  windowMs: number;
  /** offered load per node as a fraction of the total (sums to 1) */
  split: number[];
  /** total offered load as a multiple of the limit (per window) */
  offered: number;
  windows: number;
  takeDirtyMs?: number;
  /** transport delay after takeDirty, uniform in [min, max] ms */
  lagMs?: [number, number];
  seed?: number;
  /** false: every node believes it is alone (no share rule) */
  shareRule?: boolean;
  /** RateLimitUsage's inFlightMs (default: its default) */
  inFlightMs?: number;
}

export interface SimResult {
  /** admitted per whole window, all nodes together */
  perWindow: number[];
  /** admitted per window per node */
  perNode: number[][];
  maxRatio: number;
  meanRatio: number;
}

export function simulateMesh(o: SimOptions): SimResult {
  const rnd = seededRandom(o.seed ?? 1);
  const takeDirtyMs = o.takeDirtyMs ?? 50;
  const [lagMin, lagMax] = o.lagMs ?? [50, 100];
  const clock = { t: 1_000_000 * o.windowMs };
  const start = clock.t;
  const n = o.split.length;
  const nodes = o.split.map((_, i) => {
    const u = new RateLimitUsage(`n${i}`, {
      windowMs: o.windowMs,
      now: () => clock.t,
      ...(o.inFlightMs !== undefined && { inFlightMs: o.inFlightMs }),
    });
    u.setPeers(o.shareRule === false ? 1 : n);
    return u;
  });
  const phase = nodes.map(() => Math.floor(rnd() * takeDirtyMs));
  const deliveries: { at: number; to: number; ev: RateLimitSlotsEvent }[] = [];
  // per node, the next arrival time (exponential gaps), in ms
  const ratePerMs = o.split.map((s) => (s * o.offered * o.limit) / o.windowMs);
  const next = ratePerMs.map((r) => (r > 0 ? start - Math.log(1 - rnd()) / r : Infinity));
  const perWindow = new Array<number>(o.windows).fill(0);
  const perNode = nodes.map(() => new Array<number>(o.windows).fill(0));
  const end = start + o.windows * o.windowMs;
  for (let t = start; t < end; t++) {
    clock.t = t;
    if (deliveries.length > 0) {
      let k = 0;
      for (const d of deliveries) {
        if (d.at <= t) nodes[d.to].apply(d.ev);
        else deliveries[k++] = d;
      }
      deliveries.length = k;
    }
    for (let i = 0; i < n; i++) {
      if ((t - start) % takeDirtyMs === phase[i]) {
        for (const ev of nodes[i].takeDirty(t)) {
          for (let j = 0; j < n; j++) {
            if (j !== i)
              deliveries.push({ at: t + lagMin + Math.floor(rnd() * (lagMax - lagMin + 1)), to: j, ev });
          }
        }
      }
      while (next[i] < t + 1) {
        next[i] += -Math.log(1 - rnd()) / ratePerMs[i];
        if (nodes[i].admits('global', 'requests', o.limit, 1, t)) {
          nodes[i].add('global', 1, 0, t);
          const w = Math.floor((t - start) / o.windowMs);
          perWindow[w]++;
          perNode[i][w]++;
        }
      }
    }
  }
  const ratios = perWindow.map((c) => c / o.limit);
  return {
    perWindow,
    perNode,
    maxRatio: Math.max(...ratios),
    meanRatio: ratios.reduce((s, x) => s + x, 0) / ratios.length,
  };
}
