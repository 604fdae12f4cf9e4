/**
 * Runtime gauges the gateway samples on timers rather than per request:
 *
 * - every 5 s, the Node counterparts of SMG's tokio metrics: event-loop delay (a histogram fed from
 *   `perf_hooks.monitorEventLoopDelay`), event-loop utilisation since the previous sample, stalls
 *   (delays over 100 ms), V8 heap in use / reserved, active libuv resources;
 * - every 20 s, `smg_http_inflight_request_age_count{gt,le}`: in-flight requests per age bucket,
 *   non-cumulative, with SMG's 11 bounds (30 s … 1 day) and so 12 buckets, the last `le="+Inf"`;
 * - on demand (`refreshEngineGauges`, e.g. before a scrape), the `smg_engine_*` gauges from the
 *   engine loads the Replica holds.
 *
 * Owns: the samplers' timers (unref'd: they never keep the process alive). Never: per-request work.
 */
import { monitorEventLoopDelay, performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { Replica } from '../state/replica.js';
import type { Metrics } from './metrics.js';

export const RUNTIME_SAMPLE_MS = 5_000;
export const INFLIGHT_SAMPLE_MS = 20_000;
/** monitorEventLoopDelay's timer period: its samples are this late at best */
const DELAY_RESOLUTION_MS = 10;
/** a delay past this is a stall (SMG: tokio_event_loop_stalls_total) */
export const STALL_MS = 100;
/** SMG's in-flight age bounds, seconds (observability/inflight_tracker.rs) */
export const INFLIGHT_AGE_BOUNDS = [30, 60, 180, 300, 600, 1200, 3600, 7200, 14400, 28800, 86400] as const;

export interface RuntimeMetricsOptions {
  /** performance.now() at the start of every in-flight request */
  inflightStartTimes: () => Iterable<number>;
  /** overrides for tests */
  runtimeSampleMs?: number;
  inflightSampleMs?: number;
}

/**
 * Counts per age bucket (gt, le], ages in whole seconds as SMG truncates them: bucket i holds
 * ages in (bounds[i-1], bounds[i]], the first from 0 inclusive, the last (bounds[n-1], +Inf).
 */
export function inflightAgeCounts(startTimes: Iterable<number>, nowMs: number): number[] {
  const counts = new Array<number>(INFLIGHT_AGE_BOUNDS.length + 1).fill(0);
  for (const started of startTimes) {
    const age = Math.max(0, Math.floor((nowMs - started) / 1000));
    let i = 0;
    while (i < INFLIGHT_AGE_BOUNDS.length && age > INFLIGHT_AGE_BOUNDS[i]) i++;
    counts[i]++;
  }
  return counts;
}

const AGE_LABELS = [0, ...INFLIGHT_AGE_BOUNDS].map((gt, i) => ({
  gt: String(gt),
  le: i < INFLIGHT_AGE_BOUNDS.length ? String(INFLIGHT_AGE_BOUNDS[i]) : '+Inf',
}));

/**
 * The delay samples a perf_hooks histogram holds, rebuilt from its percentile points (it keeps
 * no raw samples): each step between consecutive percentiles becomes that share of `count` at the
 * step's upper value, rounded so the total is `count`. Values are in nanoseconds.
 */
export function samplesFromPercentiles(percentiles: Map<number, number>, count: number): [number, number][] {
  const points = [...percentiles].sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  let prevP = 0;
  let carried = 0;
  let assigned = 0;
  for (const [p, v] of points) {
    const exact = (count * (p - prevP)) / 100 + carried;
    const n = Math.round(exact);
    carried = exact - n;
    prevP = p;
    if (n > 0) {
      out.push([v, n]);
      assigned += n;
    }
  }
  // rounding may leave the total one off; the difference goes to (or comes from) the largest value
  if (assigned !== count && count > 0) {
    const last = points.length > 0 ? points[points.length - 1][1] : 0;
    if (out.length > 0 && out[out.length - 1][0] === last) out[out.length - 1][1] += count - assigned;
    else if (count > assigned) out.push([last, count - assigned]);
  }
  return out.filter(([, n]) => n > 0);
}

export function startRuntimeMetrics(metrics: Metrics, opts: RuntimeMetricsOptions): { stop(): void } {
  const delay = monitorEventLoopDelay({ resolution: DELAY_RESOLUTION_MS });
  delay.enable();
  let lastElu: EventLoopUtilization = performance.eventLoopUtilization();
  const resolutionNs = DELAY_RESOLUTION_MS * 1e6;
  const stallNs = STALL_MS * 1e6;

  const sampleRuntime = () => {
    try {
      const count = delay.count;
      if (count > 0) {
        let stalls = 0;
        for (const [ns, n] of samplesFromPercentiles(delay.percentiles, count)) {
          // a sample is the timer's whole period: the delay is what exceeds the resolution
          const late = Math.max(0, ns - resolutionNs);
          for (let i = 0; i < n; i++) metrics.nodeEventLoopDelay.observe(late / 1e9);
          if (late > stallNs) stalls += n;
        }
        // the rebuilt distribution is coarse at the tail; the maximum is exact
        if (stalls === 0 && delay.max - resolutionNs > stallNs) stalls = 1;
        if (stalls > 0) metrics.nodeEventLoopStalls.inc(stalls);
        delay.reset();
      }
      const elu = performance.eventLoopUtilization();
      metrics.nodeEventLoopUtilization.set(performance.eventLoopUtilization(elu, lastElu).utilization);
      lastElu = elu;
      const mem = process.memoryUsage();
      metrics.nodeHeapUsed.set(mem.heapUsed);
      metrics.nodeHeapTotal.set(mem.heapTotal);
      metrics.nodeActiveHandles.set(process.getActiveResourcesInfo().length);
    } catch {
      // a failed sample leaves the previous values; the next one tries again
    }
  };

  const sampleInflight = () => {
    try {
      const counts = inflightAgeCounts(opts.inflightStartTimes(), performance.now());
      for (let i = 0; i < counts.length; i++) metrics.httpInflightAge.set(AGE_LABELS[i], counts[i]);
    } catch {
      // as above
    }
  };

  // every bucket exists from the start, at zero, so dashboards see the series before 20 s pass
  sampleInflight();
  const runtimeTimer = setInterval(sampleRuntime, opts.runtimeSampleMs ?? RUNTIME_SAMPLE_MS);
  const inflightTimer = setInterval(sampleInflight, opts.inflightSampleMs ?? INFLIGHT_SAMPLE_MS);
  runtimeTimer.unref();
  inflightTimer.unref();
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(runtimeTimer);
      clearInterval(inflightTimer);
      delay.disable();
    },
  };
}

// ------------------------------------------------------------------------------------ engine gauges

type EngineLabels = { worker: string; model: string; dp_rank: string };

/** the label sets set by the previous refresh, per Metrics, so workers that left lose their series */
const engineSeries = new WeakMap<Metrics, Map<string, EngineLabels>>();

/**
 * Sets `smg_engine_{running,waiting}_requests`, `_token_usage` and `_gen_throughput` for every
 * registered worker whose engine has reported its load, and removes the series of workers that
 * left or have no report. The Replica's EngineLoad is the engine's report summed over its DP ranks
 * (token usage averaged), so `dp_rank` is `all`; `model` is the worker's models joined by `,`
 * (`*` for a wildcard worker). `_cache_hit_rate` is not set: EngineLoad does not carry it.
 */
export function refreshEngineGauges(metrics: Metrics, replica: Replica): void {
  const previous = engineSeries.get(metrics) ?? new Map<string, EngineLabels>();
  const current = new Map<string, EngineLabels>();
  for (const w of replica.registry.list()) {
    const load = replica.load.engineLoad(w.id);
    if (load === undefined) continue;
    const labels: EngineLabels = {
      worker: w.url,
      model: w.models.length > 0 ? w.models.join(',') : '*',
      dp_rank: 'all',
    };
    current.set(`${labels.worker}\u0000${labels.model}`, labels);
    metrics.engineRunning.set(labels, load.numRunningReqs);
    metrics.engineWaiting.set(labels, load.numWaitingReqs);
    metrics.engineTokenUsage.set(labels, load.tokenUsage);
    metrics.engineGenThroughput.set(labels, load.genThroughput);
  }
  for (const [key, labels] of previous) {
    if (current.has(key)) continue;
    metrics.engineRunning.remove(labels);
    metrics.engineWaiting.remove(labels);
    metrics.engineTokenUsage.remove(labels);
    metrics.engineGenThroughput.remove(labels);
  }
  engineSeries.set(metrics, current);
}
