/**
 * least_load: SMG's token-work score (§3.5), lowest wins, ties → earliest candidate.
 *
 *   with an engine report:   (queued_tokens + inflight_tokens) / throughput + λ · k / (1 − k)
 *   no report, fleet has:    inflight() · mean_prefill_tokens / nominal_throughput
 *   whole fleet dark:        inflight()   (join-shortest-queue)
 *
 * `inflight_tokens` is the token work this policy sent to a worker since the engine's last report
 * (the report is stale between polls; crediting each dispatch water-fills instead of sending a
 * whole poll interval to one worker). A new report is a new `EngineLoad` object in the LoadView,
 * so the credit resets when the object identity changes.
 *
 * Owns: the per-worker token credit. Never: I/O; it only reads the LoadView.
 */
import type { WorkerView } from '../state/registry.js';
import type { EngineLoad } from '../state/worker.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

const DEFAULT_KV_PRESSURE_WEIGHT = 0.15;
const DEFAULT_THROUGHPUT = 2000;
const DEFAULT_MEAN_PREFILL_TOKENS = 1024;
/** KV usage is clamped below 1 so the barrier k/(1−k) stays finite */
const MAX_USAGE = 0.999;
/** HTTP mode has no token ids: ~4 characters per token */
const CHARS_PER_TOKEN = 4;

export function createLeastLoadPolicy(params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  const lambda =
    Number.isFinite(params.leastLoadKvPressureWeight) && params.leastLoadKvPressureWeight >= 0
      ? params.leastLoadKvPressureWeight
      : DEFAULT_KV_PRESSURE_WEIGHT;
  const defaultThroughput =
    Number.isFinite(params.leastLoadDefaultThroughput) && params.leastLoadDefaultThroughput > 0
      ? params.leastLoadDefaultThroughput
      : DEFAULT_THROUGHPUT;
  const meanPrefill =
    Number.isFinite(params.leastLoadMeanPrefillTokens) && params.leastLoadMeanPrefillTokens >= 1
      ? params.leastLoadMeanPrefillTokens
      : DEFAULT_MEAN_PREFILL_TOKENS;

  const inflightTokens = new Map<string, number>();
  const lastReport = new Map<string, EngineLoad>();

  function requestTokens(req: RouteRequest): number {
    if (req.tokens && req.tokens.length > 0) return req.tokens.length;
    if (req.text.length > 0) return Math.ceil(req.text.length / CHARS_PER_TOKEN);
    return meanPrefill;
  }

  return {
    name: 'least_load',
    needsText: false,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      if (workers.length === 0) return undefined;
      let fleetHasLoads = false;
      let tpSum = 0;
      let tpCount = 0;
      for (const w of workers) {
        const e = ctx.load.engineLoad(w.id);
        if (e !== lastReport.get(w.id)) {
          // a fresh poll already reflects the work sent before it
          if (e) lastReport.set(w.id, e);
          else lastReport.delete(w.id);
          inflightTokens.delete(w.id);
        }
        if (e) {
          fleetHasLoads = true;
          if (e.genThroughput > 0) {
            tpSum += e.genThroughput;
            tpCount++;
          }
        }
      }
      const nominalThroughput = tpCount > 0 ? tpSum / tpCount : defaultThroughput;

      let best = workers[0];
      let bestScore = Infinity;
      for (const w of workers) {
        const e = ctx.load.engineLoad(w.id);
        let s: number;
        if (e) {
          const throughput = e.genThroughput > 0 ? e.genThroughput : defaultThroughput;
          const k = Math.min(Math.max(e.tokenUsage, 0), MAX_USAGE);
          const queued = Math.max(0, e.numWaitingUncachedTokens);
          s = (queued + (inflightTokens.get(w.id) ?? 0)) / throughput + (lambda * k) / (1 - k);
        } else if (fleetHasLoads) {
          s = (ctx.load.inflight(w.id) * meanPrefill) / nominalThroughput;
        } else {
          s = ctx.load.inflight(w.id);
        }
        if (s < bestScore) {
          best = w;
          bestScore = s;
        }
      }
      inflightTokens.set(best.id, (inflightTokens.get(best.id) ?? 0) + requestTokens(req));
      return best;
    },
    onWorkersChanged(workers: readonly WorkerView[]): void {
      const live = new Set(workers.map((w) => w.id));
      for (const id of inflightTokens.keys()) if (!live.has(id)) inflightTokens.delete(id);
      for (const id of lastReport.keys()) if (!live.has(id)) lastReport.delete(id);
    },
  };
}
