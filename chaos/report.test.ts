import { describe, expect, it } from 'vitest';
import { isConnectionError } from './client.js';
import {
  admissionStats,
  baselineConsistency,
  checkInvariants,
  formatReport,
  jsonLine,
  lostWrites,
  percentile,
  routingConsistency,
  windowCounts,
  type ScenarioResult,
  type TurnRecord,
} from './report.js';
import { parseArgs } from './run.js';

const turn = (conversation: number, t: number, sentAt: number, worker: string, ok = true): TurnRecord => ({
  conversation,
  turn: t,
  sentAt,
  worker,
  ok,
});

describe('routing consistency', () => {
  it('counts later turns of conversations begun before the fault on the previous engine', () => {
    const turns = [
      turn(1, 0, 10, 'w1'),
      turn(1, 1, 110, 'w1'), // after the fault, same → counted, same
      turn(1, 2, 120, 'w2'), // after, other → counted, different
      turn(1, 3, 130, 'w2'), // after, same as previous (w2) → same
      turn(2, 0, 150, 'w3'), // begun after the fault: ignored
      turn(2, 1, 160, 'w4'),
      turn(3, 0, 20, 'w1'),
      turn(3, 1, 30, 'w2'), // before the fault: not counted
      turn(3, 2, 140, '', false), // failed: ignored
      turn(3, 2, 145, 'w2'),
    ];
    expect(routingConsistency(turns, 100)).toEqual({ turns: 4, sameWorker: 3, ratio: 0.75 });
    expect(baselineConsistency(turns, 100)).toEqual({ turns: 1, sameWorker: 0, ratio: 0 });
    expect(routingConsistency([], 100)).toEqual({ turns: 0, sameWorker: 0, ratio: null });
  });
});

describe('admission', () => {
  it('counts per whole 1-s window by send time', () => {
    expect(windowCounts([1000, 1500, 1999, 2000, 4100])).toEqual([3, 1, 0, 1]);
    expect(windowCounts([])).toEqual([]);
  });

  it('takes the max admitted in a whole window over the limit, leaving partial windows out', () => {
    const sends: { sentAt: number; status: number }[] = [];
    // 500 ms of partial window, then 3 whole seconds, then a partial one
    for (let t = 500; t < 4300; t += 50) sends.push({ sentAt: t, status: t >= 2000 && t < 3000 ? 200 : 429 });
    sends.push({ sentAt: 700, status: 200 }, { sentAt: 4200, status: 503 });
    const a = admissionStats(10, sends);
    expect(a.windows).toEqual([0, 20, 0]);
    expect(a.maxAdmitted).toBe(20);
    expect(a.ratio).toBe(2);
    expect(a.admitted).toBe(21);
    expect(a.other).toBe(1);
  });
});

describe('lost writes', () => {
  it('an acknowledged write missing or different on any live peer is lost; unacknowledged ones are not', () => {
    const writes = [
      { key: 'a', value: '01', peer: 'p1', acked: true },
      { key: 'b', value: '02', peer: 'p2', acked: true },
      { key: 'c', value: '03', peer: 'p2', acked: false },
    ];
    const r = lostWrites(writes, { p1: { a: '01', b: '02' }, p2: { a: '01', b: 'ff' }, p3: { b: '02' } });
    expect(r.acked).toBe(2);
    expect(r.unacked).toBe(1);
    expect(r.lost).toEqual([
      { key: 'a', peer: 'p3' },
      { key: 'b', peer: 'p2' },
    ]);
  });
});

function result(over: Partial<ScenarioResult> = {}): ScenarioResult {
  return {
    scenario: 'kill',
    mode: 'fault-file',
    peers: 3,
    seed: 1,
    fault: 'kill -9 peer-2',
    durationMs: 1000,
    requests: { sent: 10, ok: 10, failed: 0, retried: 1, failovers: 1 },
    latencyMs: { p50: 1, p99: 2, max: 3 },
    writes: { acked: 5, unacked: 0, lost: 0, lostExamples: [] },
    observed: { detectionMs: 900, maxNotAlive: 1, required: true },
    convergenceMs: 1200,
    convergenceParts: { members: 1100, config: 0, registry: 0 },
    convergenceTimeoutMs: 30_000,
    routing: {
      turns: 100,
      sameWorker: 96,
      ratio: 0.96,
      baseline: { turns: 10, sameWorker: 10, ratio: 1 },
    },
    admission: {
      limitPerSecond: 10,
      sent: 60,
      admitted: 20,
      rejected429: 40,
      other: 0,
      windows: [10, 10],
      maxAdmitted: 10,
      ratio: 1,
    },
    failureSamples: [],
    ...over,
  };
}

describe('invariants', () => {
  const failing = (r: ScenarioResult) =>
    checkInvariants(r)
      .filter((c) => !c.ok)
      .map((c) => c.name);

  it('all hold on a good run', () => {
    const checks = checkInvariants(result());
    expect(checks.every((c) => c.ok)).toBe(true);
    expect(JSON.parse(jsonLine(result(), checks).slice('CHAOS '.length))).toMatchObject({ ok: true });
  });

  it('over-admission fails, never skips, when its phase could not measure', () => {
    const r = result({ admission: { error: 'POST /mesh/rate-limit: HTTP 503' } });
    const checks = checkInvariants(r);
    expect(checks.find((c) => c.name === 'over_admission')).toMatchObject({ ok: false });
    expect(checks.some((c) => c.skipped)).toBe(false);
    const text = formatReport(r, checks);
    expect(text).toContain('[FAIL] over_admission');
    expect(text).toContain('HTTP 503');
    expect(JSON.parse(jsonLine(r, checks).slice('CHAOS '.length))).toMatchObject({ ok: false });
  });

  it('each one fails on its own bad measurement', () => {
    expect(failing(result({ requests: { sent: 10, ok: 9, failed: 1, retried: 0, failovers: 0 } }))).toEqual([
      'failed_requests',
    ]);
    expect(failing(result({ writes: { acked: 5, unacked: 0, lost: 1, lostExamples: [] } }))).toEqual([
      'lost_writes',
    ]);
    expect(failing(result({ writes: { acked: 0, unacked: 3, lost: 0, lostExamples: [] } }))).toEqual([
      'lost_writes',
    ]);
    expect(failing(result({ convergenceMs: null }))).toEqual(['convergence']);
    expect(failing(result({ observed: { detectionMs: null, maxNotAlive: 0, required: true } }))).toEqual([
      'fault_took_effect',
    ]);
    expect(failing(result({ observed: { detectionMs: null, maxNotAlive: 0, required: false } }))).toEqual([]);
    const low = {
      turns: 100,
      sameWorker: 94,
      ratio: 0.94,
      baseline: { turns: 0, sameWorker: 0, ratio: null },
    };
    expect(failing(result({ routing: low }))).toEqual(['routing_consistency']);
    const none = { turns: 0, sameWorker: 0, ratio: null, baseline: low.baseline };
    expect(failing(result({ routing: none }))).toEqual(['routing_consistency']);
    const over = admissionStats(10, [
      ...Array.from({ length: 11 }, (_, k) => ({ sentAt: 1000 + k * 50, status: 200 })),
      { sentAt: 2500, status: 429 },
    ]);
    expect(over.ratio).toBeCloseTo(1.1);
    expect(failing(result({ admission: over }))).toEqual(['over_admission']);
  });
});

describe('helpers', () => {
  it('percentile is nearest-rank', () => {
    expect(percentile([5, 1, 3, 2, 4], 50)).toBe(3);
    expect(percentile([5, 1, 3, 2, 4], 100)).toBe(5);
    expect(percentile([], 99)).toBe(0);
  });

  it('recognises connection errors the way the failover client retries them', () => {
    const withCode = (code: string) => Object.assign(new Error('x'), { code });
    expect(isConnectionError(withCode('ECONNREFUSED'))).toBe(true);
    expect(isConnectionError(withCode('UND_ERR_SOCKET'))).toBe(true);
    expect(isConnectionError(new TypeError('fetch failed', { cause: withCode('ECONNRESET') }))).toBe(true);
    expect(isConnectionError(new Error('socket hang up'))).toBe(true);
    expect(isConnectionError(withCode('UND_ERR_HEADERS_TIMEOUT'))).toBe(false);
    expect(isConnectionError('ECONNREFUSED')).toBe(false);
  });

  it('parses the runner arguments', () => {
    expect(parseArgs(['kill', '--short', '--seed', '7'])).toEqual({
      scenarios: ['kill'],
      netns: 'auto',
      opts: { peers: 3, seed: 7, length: 'short' },
    });
    expect(parseArgs(['all', '--long'])).toMatchObject({
      scenarios: ['kill', 'restart', 'pause', 'partition', 'loss'],
      opts: { peers: 5, length: 'long' },
    });
    expect(parseArgs(['kill', '--peers', '1'])).toMatch(/2\.\.9/);
    expect(parseArgs(['pause', '--no-netns'])).toMatchObject({ netns: 'off' });
    expect(parseArgs(['nope'])).toMatch(/unknown/);
    expect(parseArgs([])).toMatch(/scenario/);
  });
});
