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
 * Per candidate array (the registry reuses it until the workers change) the workers' credit
 * records are resolved once, so a decision does one LoadView lookup per candidate (its engine
 * report; its in-flight count only when it has none) and no other keyed lookup.
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

interface Credit {
  /** the engine report the credit counts from (undefined: none) */
  report: EngineLoad | undefined;
  /** token work sent since that report */
  tokens: number;
  /** from the report, computed once per report: queued tokens, throughput, KV barrier λ·k/(1−k) */
  queued: number;
  throughput: number;
  barrier: number;
}

interface CandidateState {
  /** per candidate: its worker's credit record */
  credits: Credit[];
  /** scratch: 1 for a candidate without an engine report in this decision */
  dark: Uint8Array;
  /** the candidates' LoadView indices */
  lv: Int32Array;
}

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

  /** worker id → its credit: token work sent since its engine report `report` */
  const credits = new Map<string, Credit>();
  let states = new WeakMap<readonly WorkerView[], CandidateState>();

  function stateOf(workers: readonly WorkerView[]): CandidateState {
    let st = states.get(workers);
    if (!st) {
      const byCandidate = workers.map((w) => {
        let c = credits.get(w.id);
        if (!c) {
          c = { report: undefined, tokens: 0, queued: 0, throughput: defaultThroughput, barrier: 0 };
          credits.set(w.id, c);
        }
        return c;
      });
      st = {
        credits: byCandidate,
        dark: new Uint8Array(workers.length),
        lv: Int32Array.from(workers, (w) => ctx.load.workerIndex(w.id)),
      };
      states.set(workers, st);
    }
    return st;
  }

  function requestTokens(req: RouteRequest): number {
    if (req.tokens && req.tokens.length > 0) return req.tokens.length;
    if (req.text.length > 0) return Math.ceil(req.text.length / CHARS_PER_TOKEN);
    return meanPrefill;
  }

  return {
    name: 'least_load',
    needsText: false,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      const n = workers.length;
      if (n === 0) return undefined;
      const { credits: cs, dark, lv } = stateOf(workers);
      const engineAt = ctx.load.engineByIndex();
      const inflightAt = ctx.load.inflightByIndex();
      let fleetHasLoads = false;
      let darkCount = 0;
      let tpSum = 0;
      let tpCount = 0;
      // pass 1: reports (a new one resets the credit) and the reporting workers' scores
      let best = -1;
      let bestScore = Infinity;
      for (let i = 0; i < n; i++) {
        const e = engineAt[lv[i]];
        const c = cs[i];
        if (e !== c.report) {
          // a fresh poll already reflects the work sent before it
          c.report = e;
          c.tokens = 0;
          if (e) {
            const k = Math.min(Math.max(e.tokenUsage, 0), MAX_USAGE);
            c.queued = Math.max(0, e.numWaitingUncachedTokens);
            c.throughput = e.genThroughput > 0 ? e.genThroughput : defaultThroughput;
            c.barrier = (lambda * k) / (1 - k);
          }
        }
        if (e) {
          fleetHasLoads = true;
          if (e.genThroughput > 0) {
            tpSum += e.genThroughput;
            tpCount++;
          }
          dark[i] = 0;
          const s = (c.queued + c.tokens) / c.throughput + c.barrier;
          if (s < bestScore) {
            best = i;
            bestScore = s;
          }
        } else {
          dark[i] = 1;
          darkCount++;
        }
      }
      // pass 2: the workers without a report (ties → earliest candidate overall)
      if (darkCount > 0) {
        const nominalThroughput = tpCount > 0 ? tpSum / tpCount : defaultThroughput;
        for (let i = 0; i < n; i++) {
          if (dark[i] === 0) continue;
          const l = inflightAt[lv[i]];
          const s = fleetHasLoads ? (l * meanPrefill) / nominalThroughput : l;
          if (s < bestScore || (s === bestScore && i < best)) {
            best = i;
            bestScore = s;
          }
        }
      }
      if (best < 0) best = 0; // every score NaN (malformed reports): the first, as before
      cs[best].tokens += requestTokens(req);
      return workers[best];
    },
    onWorkersChanged(workers: readonly WorkerView[]): void {
      const live = new Set(workers.map((w) => w.id));
      for (const id of credits.keys()) if (!live.has(id)) credits.delete(id);
      states = new WeakMap();
    },
  };
}
