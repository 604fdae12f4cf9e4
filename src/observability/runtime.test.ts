import { describe, expect, it } from 'vitest';
import { Replica } from '../state/replica.js';
import type { EngineLoad, WorkerSpec } from '../state/worker.js';
import { Metrics } from './metrics.js';
import {
  INFLIGHT_AGE_BOUNDS,
  inflightAgeCounts,
  refreshEngineGauges,
  samplesFromPercentiles,
  startRuntimeMetrics,
} from './runtime.js';

/** the value of one series in the registry's text output, or undefined when absent */
async function value(m: Metrics, series: string): Promise<number | undefined> {
  const text = await m.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function eventually(check: () => Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((r) => setTimeout(r, 20));
}

describe('in-flight request age buckets', () => {
  it("uses SMG's 11 bounds: 12 non-cumulative buckets (gt, le], whole seconds, the last open", () => {
    expect(INFLIGHT_AGE_BOUNDS).toEqual([30, 60, 180, 300, 600, 1200, 3600, 7200, 14400, 28800, 86400]);
    const now = 1_000_000_000;
    const ages = [0, 29.9, 30, 30.99, 31, 61, 3600, 86400.5, 86401, 200_000];
    const counts = inflightAgeCounts(
      ages.map((s) => now - s * 1000),
      now,
    );
    expect(counts).toHaveLength(12);
    // 0, 29.9, 30 and 30.99 (30 whole seconds) are in (0, 30]; 31 in (30, 60]; 61 in (60, 180]
    expect(counts.slice(0, 3)).toEqual([4, 1, 1]);
    expect(counts[6]).toBe(1); // 3600 in (1200, 3600]
    expect(counts[10]).toBe(1); // 86400.5 truncates to 86400
    expect(counts[11]).toBe(2); // over a day
    expect(counts.reduce((a, b) => a + b, 0)).toBe(ages.length);
    // a start time in the future (clock skew between callers) counts as age 0
    expect(inflightAgeCounts([now + 5000], now)[0]).toBe(1);
  });
});

describe('samplesFromPercentiles', () => {
  it('rebuilds exactly `count` samples at the percentile points', () => {
    const p = new Map([
      [0, 10],
      [50, 11],
      [75, 12],
      [100, 200],
    ]);
    const s = samplesFromPercentiles(p, 9);
    expect(s.reduce((n, [, c]) => n + c, 0)).toBe(9);
    expect(s.map(([v]) => v)).toEqual([11, 12, 200]);
    expect(samplesFromPercentiles(new Map(), 0)).toEqual([]);
    expect(samplesFromPercentiles(new Map([[100, 7]]), 3)).toEqual([[7, 3]]);
  });
});

describe('startRuntimeMetrics', () => {
  it('publishes in-flight ages at once, then event-loop, heap and resource gauges each sample', async () => {
    const m = new Metrics();
    const starts = [performance.now() - 45_000, performance.now()];
    const r = startRuntimeMetrics(m, {
      inflightStartTimes: () => starts,
      runtimeSampleMs: 30,
      inflightSampleMs: 30,
    });
    try {
      expect(await value(m, 'smg_http_inflight_request_age_count{gt="0",le="30"}')).toBe(1);
      expect(await value(m, 'smg_http_inflight_request_age_count{gt="30",le="60"}')).toBe(1);
      expect(await value(m, 'smg_http_inflight_request_age_count{gt="86400",le="+Inf"}')).toBe(0);
      await eventually(async () => ((await value(m, 'smg_node_heap_used_bytes')) ?? 0) > 0);
      await eventually(async () => ((await value(m, 'smg_node_event_loop_delay_seconds_count')) ?? 0) > 0);
      const elu = await value(m, 'smg_node_event_loop_utilization');
      expect(elu).toBeGreaterThanOrEqual(0);
      expect(elu).toBeLessThanOrEqual(1);
      expect(await value(m, 'smg_node_heap_total_bytes')).toBeGreaterThan(0);
      expect(await value(m, 'smg_node_active_resources')).toBeGreaterThan(0);
      // the requests finish: the next in-flight sample empties the buckets
      starts.length = 0;
      await eventually(
        async () => (await value(m, 'smg_http_inflight_request_age_count{gt="30",le="60"}')) === 0,
      );
    } finally {
      r.stop();
      r.stop();
    }
  });

  it('counts a blocked event loop as a stall', async () => {
    const m = new Metrics();
    const r = startRuntimeMetrics(m, { inflightStartTimes: () => [], runtimeSampleMs: 50 });
    try {
      // let the delay monitor take a few ordinary samples first
      await new Promise((resolve) => setTimeout(resolve, 60));
      const until = performance.now() + 250;
      while (performance.now() < until) {
        // block: one monitor sample is now ~250 ms late
      }
      await eventually(async () => ((await value(m, 'smg_node_event_loop_stalls_total')) ?? 0) >= 1);
      const text = await m.registry.metrics();
      // the stall also lands in the delay histogram's upper buckets
      const over = text
        .split('\n')
        .find((l) => l.startsWith('smg_node_event_loop_delay_seconds_bucket{le="0.1"}'));
      const total = await value(m, 'smg_node_event_loop_delay_seconds_count');
      expect(Number(over?.split(' ')[1])).toBeLessThan(total ?? 0);
    } finally {
      r.stop();
    }
  });
});

describe('refreshEngineGauges', () => {
  const spec = (url: string, models: string[]): WorkerSpec => ({
    url,
    models,
    worker_type: 'regular',
    connection_mode: 'http',
    runtime: 'sglang',
    labels: {},
    priority: 50,
    cost: 1,
    health: {},
    max_connection_attempts: 20,
  });
  const load = (running: number): EngineLoad => ({
    tokenUsage: 0.25,
    numRunningReqs: running,
    numWaitingReqs: 2,
    numWaitingUncachedTokens: 0,
    genThroughput: 1500,
    numUsedTokens: 100,
  });

  it('mirrors the engine loads the Replica holds and drops workers that left', async () => {
    const replica = new Replica({ nodeId: 'n1' });
    const m = new Metrics();
    replica.apply({ kind: 'worker.upsert', id: 'w1', spec: spec('http://a:1', ['m1']), hlc: replica.tick() });
    replica.apply({ kind: 'worker.upsert', id: 'w2', spec: spec('http://b:2', []), hlc: replica.tick() });
    replica.apply({ kind: 'worker.upsert', id: 'w3', spec: spec('http://c:3', ['m1']), hlc: replica.tick() });
    replica.apply({ kind: 'worker.engine_load', id: 'w1', load: load(3), hlc: replica.tick() });
    replica.apply({ kind: 'worker.engine_load', id: 'w2', load: load(7), hlc: replica.tick() });
    refreshEngineGauges(m, replica);
    const a = '{worker="http://a:1",model="m1",dp_rank="all"}';
    const b = '{worker="http://b:2",model="*",dp_rank="all"}';
    expect(await value(m, `smg_engine_running_requests${a}`)).toBe(3);
    expect(await value(m, `smg_engine_running_requests${b}`)).toBe(7);
    expect(await value(m, `smg_engine_waiting_requests${a}`)).toBe(2);
    expect(await value(m, `smg_engine_token_usage${a}`)).toBe(0.25);
    expect(await value(m, `smg_engine_gen_throughput${a}`)).toBe(1500);
    // no report yet from w3: no series rather than zeros
    expect((await m.registry.metrics()).includes('http://c:3')).toBe(false);

    replica.apply({ kind: 'worker.remove', id: 'w1', hlc: replica.tick() });
    replica.apply({ kind: 'worker.engine_load', id: 'w2', load: load(1), hlc: replica.tick() });
    refreshEngineGauges(m, replica);
    const text = await m.registry.metrics();
    expect(text.includes('http://a:1')).toBe(false);
    expect(await value(m, `smg_engine_running_requests${b}`)).toBe(1);
  });
});
