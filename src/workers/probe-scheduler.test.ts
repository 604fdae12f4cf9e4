import { describe, expect, it } from 'vitest';
import { ManualClock } from '../testing/manual-clock.js';
import { PENDING_PROBE_MS, ProbeScheduler, probeDelay, probePhase } from './probe-scheduler.js';

/** lets settled probe promises run their continuations */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** a scheduler whose probes stay in flight until released by hand */
function harness(maxInFlight: number) {
  const clock = new ManualClock(0);
  const started: { id: string; at: number }[] = [];
  const open = new Map<string, () => void>();
  let maxSeen = 0;
  const sched = new ProbeScheduler({
    maxInFlight,
    clock: { now: clock.now, ...clock.timers },
    run: (id) =>
      new Promise<void>((resolve) => {
        started.push({ id, at: clock.now() });
        open.set(id, resolve);
        maxSeen = Math.max(maxSeen, sched.inFlight());
      }),
  });
  const release = async (id: string) => {
    open.get(id)?.();
    open.delete(id);
    await settle();
  };
  return { clock, sched, started, open, release, maxSeen: () => maxSeen };
}

describe('ProbeScheduler', () => {
  it('never has more than maxInFlight probes running; the rest wait in due order', async () => {
    const h = harness(3);
    for (let i = 0; i < 10; i++) h.sched.schedule(`w${i}`, i);
    h.clock.advance(100);
    expect(h.started.map((s) => s.id)).toEqual(['w0', 'w1', 'w2']);
    expect(h.sched.waiting()).toBe(7);
    await h.release('w1');
    expect(h.started.map((s) => s.id)).toEqual(['w0', 'w1', 'w2', 'w3']);
    while (h.open.size > 0) await h.release([...h.open.keys()][0]);
    expect(h.started.map((s) => s.id)).toEqual([...Array(10).keys()].map((i) => `w${i}`));
    expect(h.maxSeen()).toBe(3);
    expect(h.sched.inFlight()).toBe(0);
  });

  it('runs one probe of a worker at a time: one that comes due while the last still runs follows it', async () => {
    const h = harness(8);
    h.sched.schedule('a', 0);
    h.clock.advance(1);
    h.sched.schedule('a', 10);
    h.clock.advance(20);
    expect(h.started.map((s) => s.id)).toEqual(['a']);
    expect(h.sched.isScheduled('a')).toBe(true);
    await h.release('a');
    expect(h.started.map((s) => s.id)).toEqual(['a', 'a']);
  });

  it('schedule replaces the earlier due time; cancel drops it, also while a probe runs', async () => {
    const h = harness(8);
    h.sched.schedule('a', 1000);
    h.sched.schedule('a', 10);
    h.clock.advance(10);
    expect(h.started).toEqual([{ id: 'a', at: 10 }]);
    h.clock.advance(2000);
    expect(h.started).toHaveLength(1);
    h.sched.schedule('b', 50);
    h.sched.cancel('b');
    h.sched.schedule('a', 5);
    h.sched.cancel('a');
    h.clock.advance(100);
    await h.release('a');
    expect(h.started).toHaveLength(1);
    expect(h.sched.isScheduled('a')).toBe(false);
    // one timer for the whole fleet, whatever the number of workers scheduled
    for (let i = 0; i < 500; i++) h.sched.schedule(`w${i}`, 1000 + i);
    expect(h.clock.timersPending).toBe(1);
  });

  it('with batchMs, one wake-up starts every probe due within that window', () => {
    const clock = new ManualClock(0);
    const started: [string, number, number][] = [];
    const sched = new ProbeScheduler({
      maxInFlight: 100,
      batchMs: 1000,
      clock: { now: clock.now, ...clock.timers },
      run: async (id, due) => {
        started.push([id, clock.now(), due]);
      },
    });
    sched.schedule('a', 5000);
    sched.schedule('b', 5600);
    sched.schedule('c', 6200);
    clock.advance(5000);
    // b starts early with a, and is told when it was due (to count its next interval from there)
    expect(started).toEqual([
      ['a', 5000, 5000],
      ['b', 5000, 5600],
    ]);
    clock.advance(1200);
    expect(started.map(([id]) => id)).toEqual(['a', 'b', 'c']);
  });

  it('a probe waiting for a slot is dropped by cancel and replaced by a new schedule', async () => {
    const h = harness(1);
    h.sched.schedule('a', 0);
    h.sched.schedule('b', 0);
    h.sched.schedule('c', 0);
    h.clock.advance(1);
    expect(h.started.map((s) => s.id)).toEqual(['a']);
    expect(h.sched.waiting()).toBe(2);
    expect(h.sched.isScheduled('b')).toBe(true);
    h.sched.cancel('b');
    h.sched.schedule('c', 5000);
    expect(h.sched.waiting()).toBe(0);
    await h.release('a');
    expect(h.started.map((s) => s.id)).toEqual(['a']);
    h.clock.advance(5000);
    expect(h.started.map((s) => s.id)).toEqual(['a', 'c']);
  });

  it('keeps its heap bounded under constant rescheduling', () => {
    const h = harness(1);
    for (let round = 0; round < 50; round++)
      for (let i = 0; i < 100; i++) h.sched.schedule(`w${i}`, 1000 + round);
    const heap = (h.sched as unknown as { heap: unknown[] }).heap;
    expect(heap.length).toBeLessThanOrEqual(2 * 100 + 1024);
  });

  it('close stops everything', async () => {
    const h = harness(1);
    h.sched.schedule('a', 0);
    h.sched.schedule('b', 0);
    h.clock.advance(1);
    h.sched.close();
    await h.release('a');
    h.clock.advance(10_000);
    expect(h.started.map((s) => s.id)).toEqual(['a']);
    expect(h.clock.timersPending).toBe(0);
  });
});

describe('probeDelay', () => {
  const interval = 60_000;

  it('pins interval probes to the worker phase: exactly one interval apart once in step', () => {
    const phase = 0.25;
    let now = 1_234_567;
    const dues: number[] = [];
    for (let i = 0; i < 5; i++) {
      const d = probeDelay({ now, intervalMs: interval, phase, pending: false, pendingFailures: 0 });
      expect(d).toBeGreaterThanOrEqual(interval / 2);
      expect(d).toBeLessThan((3 * interval) / 2);
      now += d;
      dues.push(now);
      expect(((now % interval) + interval) % interval).toBe(phase * interval);
    }
    for (let i = 1; i < dues.length; i++) expect(dues[i] - dues[i - 1]).toBe(interval);
  });

  it('spreads a fleet registered at one instant evenly over the interval', () => {
    const now = 5_000_000;
    const buckets = new Array<number>(10).fill(0);
    const n = 2000;
    for (let i = 0; i < n; i++) {
      const phase = probePhase(`node-a/worker-${i}`);
      const due = now + probeDelay({ now, intervalMs: interval, phase, pending: false, pendingFailures: 0 });
      buckets[Math.floor(((due % interval) / interval) * 10)]++;
    }
    // every tenth of the interval gets a share of the probes (a uniform spread puts 200 in each)
    for (const b of buckets) expect(b).toBeGreaterThan(n / 10 / 2);
    for (const b of buckets) expect(b).toBeLessThan((n / 10) * 1.5);
  });

  it('backs off a worker that never answered, doubling up to the interval', () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((f) =>
      probeDelay({ now: 0, intervalMs: interval, phase: 0.5, pending: true, pendingFailures: f }),
    );
    expect(delays.slice(0, 6)).toEqual([1000, 2000, 4000, 8000, 16000, 32000]);
    // from the 7th failure on the backoff would pass the interval: the interval cadence takes over
    for (const d of delays.slice(6)) {
      expect(d).toBeGreaterThanOrEqual(interval / 2);
      expect(d).toBeLessThan((3 * interval) / 2);
    }
    // phase spreads the backoff of workers that failed together by ±25 %
    expect(probeDelay({ now: 0, intervalMs: interval, phase: 0, pending: true, pendingFailures: 3 })).toBe(
      3000,
    );
    expect(
      probeDelay({ now: 0, intervalMs: interval, phase: 0.999, pending: true, pendingFailures: 3 }),
    ).toBeCloseTo(5000, -1);
  });

  it('a pending worker that answered is probed again a second later; never later than the interval', () => {
    expect(probeDelay({ now: 7, intervalMs: interval, phase: 0.3, pending: true, pendingFailures: 0 })).toBe(
      PENDING_PROBE_MS,
    );
    expect(probeDelay({ now: 7, intervalMs: 400, phase: 0.3, pending: true, pendingFailures: 0 })).toBe(400);
  });

  it('phases are deterministic and in [0, 1)', () => {
    expect(probePhase('x/y')).toBe(probePhase('x/y'));
    expect(probePhase('x/y')).not.toBe(probePhase('x/z'));
    for (let i = 0; i < 1000; i++) {
      const p = probePhase(`w${i}`);
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThan(1);
    }
  });
});
