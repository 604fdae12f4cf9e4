import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import type { Counter } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../testing/manual-clock.js';
import type { PriorityClass } from '../../cli/config-types.js';
import { Metrics } from '../../observability/metrics.js';
import type { SmgError } from '../../protocols/errors.js';
import type { WorkerView } from '../../state/registry.js';
import type { QueuedWait } from './concurrency.js';
import {
  PriorityScheduler,
  SchedulerPermit,
  classSettings,
  desiredReservations,
  effectiveReservations,
  loadPrioritySchedulerConfig,
  parsePriority,
  prioritySettings,
  workerCapacity,
  type ClassConfigYaml,
  type PrioritySchedulerFile,
} from './priority.js';

const RANK: Record<PriorityClass, number> = { bulk: 0, default: 1, interactive: 2, system: 3 };

/** no reservations, generous queues: each test switches on what it looks at */
const PLAIN: ClassConfigYaml = {
  reserved_floor: 0,
  reserved_per_slot: 0,
  queue_size: 10,
  can_preempt: false,
};

function scheduler(
  file: PrioritySchedulerFile,
  opts: { defaultMaxClass?: PriorityClass; topN?: number; metrics?: Metrics } = {},
) {
  const clock = new ManualClock(1_000_000);
  const metrics = opts.metrics ?? new Metrics();
  const sched = new PriorityScheduler(
    prioritySettings(
      {
        ...file,
        classes: {
          bulk: { ...PLAIN, ...file.classes?.bulk },
          default: { ...PLAIN, ...file.classes?.default },
          interactive: { ...PLAIN, ...file.classes?.interactive },
          system: { ...PLAIN, ...file.classes?.system },
        },
      },
      { defaultMaxClass: opts.defaultMaxClass ?? 'system', tenantMetricTopN: opts.topN ?? 32 },
    ),
    { now: clock.now, timers: clock.timers, metrics },
  );
  interface Req {
    err?: SmgError;
    permit?: SchedulerPermit;
    wait?: QueuedWait;
    preempted: number;
  }
  const admit = (cls: PriorityClass, opts2: { preemptible?: boolean } = {}): Req => {
    const r: Req = { preempted: 0 };
    r.wait = sched.admit(RANK[cls], (err, permit) => {
      expect(r.err ?? r.permit).toBeUndefined(); // done runs once
      r.err = err;
      r.permit = permit;
      if (permit && opts2.preemptible !== false) {
        permit.onPreempt = () => {
          r.preempted++;
          permit.release();
        };
      }
    });
    return r;
  };
  return { clock, sched, admit, metrics };
}

async function count<T extends string>(c: Counter<T>, labels: Partial<Record<T, string>>): Promise<number> {
  const values = (await c.get()).values.filter((v) =>
    Object.entries(labels).every(([k, want]) => (v.labels as Record<string, unknown>)[k] === want),
  );
  return values.reduce((a, v) => a + v.value, 0);
}

function worker(id: string, routable: boolean, maxRunning?: string): WorkerView {
  return {
    id,
    url: `http://${id}`,
    routable,
    spec: { labels: maxRunning === undefined ? {} : { max_running_requests: maxRunning } },
  } as unknown as WorkerView;
}

describe('priority classes and capacity', () => {
  it('parses x-smg-priority case-insensitively; anything unknown is default and flagged', () => {
    expect(parsePriority('System')).toEqual({ rank: 3, unknown: false });
    expect(parsePriority('  INTERACTIVE ')).toEqual({ rank: 2, unknown: false });
    expect(parsePriority('bulk')).toEqual({ rank: 0, unknown: false });
    expect(parsePriority(undefined)).toEqual({ rank: 1, unknown: false });
    expect(parsePriority('')).toEqual({ rank: 1, unknown: false });
    expect(parsePriority('urgent')).toEqual({ rank: 1, unknown: true });
  });

  it('derives capacity from the routable workers', () => {
    expect(workerCapacity([worker('a', true, '100'), worker('b', true, '28')])).toBe(128);
    // mixed: reporters plus 64 per non-reporter (a bad value does not report)
    expect(workerCapacity([worker('a', true, '100'), worker('b', true), worker('c', true, 'x')])).toBe(228);
    expect(workerCapacity([worker('a', false, '100'), worker('b', true, '8')])).toBe(8);
    expect(workerCapacity([])).toBe(1024);
    expect(workerCapacity([worker('a', false, '100')], 50)).toBe(50);
  });

  it('reserves max(floor, ceil(share × capacity)), and keeps a quarter shared when that does not fit', () => {
    const defaults = classSettings(undefined);
    // [bulk, default, interactive, system]
    expect(desiredReservations(defaults, 256)).toEqual([0, 26, 128, 32]);
    expect(effectiveReservations(defaults, 256)).toEqual([0, 26, 128, 32]);
    expect(effectiveReservations(defaults, 1024)).toEqual([0, 103, 256, 32]);
    // 160 slots cannot hold 32 + 128 + 16: system first, then interactive, into 120
    expect(effectiveReservations(defaults, 160)).toEqual([0, 0, 88, 32]);
    expect(effectiveReservations(defaults, 1)).toEqual([0, 0, 0, 0]);
  });
});

describe('PriorityScheduler', () => {
  it('clamps the class to the tenant’s max class and counts it; unknown values run as default', async () => {
    const { sched, metrics } = scheduler(
      { tenant_policies: [{ tenant_key: 'auth:ops', max_class: 'system' }] },
      { defaultMaxClass: 'default', topN: 1 },
    );
    expect(sched.resolve('auth:ops', 'system')).toBe(3);
    expect(sched.resolve('auth:x', 'system')).toBe(1);
    expect(sched.resolve('auth:y', 'interactive')).toBe(1);
    expect(sched.resolve('auth:y', 'bulk')).toBe(0);
    expect(sched.resolve('auth:z', 'nope')).toBe(1);
    expect(
      await count(metrics.schedulerClamp, { requested_class: 'system', effective_class: 'default' }),
    ).toBe(1);
    // top-N = 1: the first tenant seen keeps its label, the others are `other`
    expect(await count(metrics.schedulerClamp, { tenant: 'auth:x' })).toBe(1);
    expect(await count(metrics.schedulerClamp, { tenant: 'other' })).toBe(1);
    expect(await count(metrics.schedulerUnknownPriority, { tenant: 'other' })).toBe(1);
  });

  it('admits while capacity allows, then queues FIFO per class and serves the highest class first', () => {
    const { admit } = scheduler({ capacity: 2 });
    const a = admit('bulk');
    const b = admit('bulk');
    expect(a.permit && b.permit).toBeTruthy();
    const q1 = admit('bulk');
    const q2 = admit('default');
    const q3 = admit('bulk');
    const q4 = admit('interactive');
    expect([q1, q2, q3, q4].every((r) => r.wait && !r.permit)).toBe(true);
    a.permit?.release();
    expect(q4.permit).toBeDefined();
    b.permit?.release();
    expect(q2.permit).toBeDefined();
    q4.permit?.release();
    expect(q1.permit).toBeDefined();
    expect(q3.permit).toBeUndefined();
    q2.permit?.release();
    q2.permit?.release(); // idempotent: frees one slot
    expect(q3.permit).toBeDefined();
  });

  it('keeps higher classes’ unused reservations from lower classes', () => {
    const { admit, sched } = scheduler({
      capacity: 10,
      classes: { system: { reserved_floor: 2 }, interactive: { reserved_floor: 3 } },
    });
    const bulk = Array.from({ length: 6 }, () => admit('bulk'));
    expect(bulk.filter((r) => r.permit)).toHaveLength(5);
    expect(sched.stats().classes.bulk.available).toBe(0);
    // interactive may use its own 3 but not system's 2
    const inter = Array.from({ length: 4 }, () => admit('interactive'));
    expect(inter.filter((r) => r.permit)).toHaveLength(3);
    expect(admit('system').permit).toBeDefined();
    expect(admit('system').permit).toBeDefined();
    expect(admit('system').permit).toBeUndefined();
    expect(sched.stats().classes).toMatchObject({
      bulk: { inflight: 5, queued: 1, reserved: 0 },
      interactive: { inflight: 3, queued: 1, reserved: 3 },
      system: { inflight: 2, queued: 1, reserved: 2 },
    });
  });

  it('preempts the youngest lower-class request that has not sent its first byte', async () => {
    const { admit, metrics, sched } = scheduler({ capacity: 3, classes: { system: { can_preempt: true } } });
    const answering = admit('bulk');
    const older = admit('default');
    const younger = admit('default');
    answering.permit?.firstByte();
    const sys = admit('system');
    expect(sys.permit).toBeDefined();
    expect(sys.wait).toBeUndefined();
    // not the bulk one (it answers already), and the younger of the two default ones
    expect(younger.preempted).toBe(1);
    expect(older.preempted).toBe(0);
    expect(answering.preempted).toBe(0);
    expect(sched.stats().classes).toMatchObject({ default: { inflight: 1 }, system: { inflight: 1 } });
    expect(await count(metrics.schedulerPreemption, { victim_class: 'default', by_class: 'system' })).toBe(1);
    expect(await count(metrics.schedulerAdmit, { class: 'default', outcome: 'preempted' })).toBe(1);
    // the victim's own release (called by its hook) did not free a second slot
    older.permit?.firstByte();
    const sys2 = admit('system');
    expect(sys2.wait).toBeDefined();
    expect(older.preempted).toBe(0);
  });

  it('never preempts for a class that may not, a request whose path cannot be told, or an equal class', () => {
    const { admit } = scheduler({ capacity: 2, classes: { interactive: { can_preempt: true } } });
    const silent = admit('bulk', { preemptible: false });
    const peer = admit('interactive');
    expect(admit('default').wait).toBeDefined();
    expect(admit('interactive').wait).toBeDefined();
    expect(silent.preempted + peer.preempted).toBe(0);
  });

  it('does not preempt when the freed slot would still be out of reach', () => {
    const { admit, clock } = scheduler({
      capacity: 4,
      classes: {
        system: { reserved_floor: 2 },
        interactive: { can_preempt: true },
        bulk: { starvation_threshold_secs: 1, queue_timeout_secs: 100 },
      },
    });
    const bulk = [admit('bulk'), admit('bulk'), admit('bulk')];
    clock.advance(1_000); // the third is promoted into system's reservation
    expect(bulk.every((r) => r.permit)).toBe(true);
    // interactive is 1 slot short even after a preemption (system still holds 2): it waits
    expect(admit('interactive').wait).toBeDefined();
    expect(bulk.map((r) => r.preempted)).toEqual([0, 0, 0]);
  });

  it('promotes a starved head past the reservations after its threshold', async () => {
    const { admit, clock, metrics, sched } = scheduler({
      capacity: 4,
      classes: {
        system: { reserved_floor: 2 },
        bulk: { starvation_threshold_secs: 10, queue_timeout_secs: 100 },
      },
    });
    admit('bulk');
    admit('bulk');
    const starving = admit('bulk');
    expect(starving.wait).toBeDefined();
    clock.advance(9_999);
    expect(starving.permit).toBeUndefined();
    clock.advance(1);
    expect(starving.permit).toBeDefined();
    expect(sched.stats().classes.bulk.inflight).toBe(3);
    expect(await count(metrics.schedulerStarvationPromotion, { class: 'bulk' })).toBe(1);
    // never past the capacity itself
    admit('system');
    const next = admit('bulk');
    clock.advance(20_000);
    expect(next.permit).toBeUndefined();
  });

  it('a starved head goes before a higher class on release', () => {
    const { admit, clock } = scheduler({
      capacity: 1,
      classes: { default: { starvation_threshold_secs: 5, queue_timeout_secs: 60 } },
    });
    const holder = admit('system');
    const low = admit('default');
    clock.advance(6_000);
    const high = admit('interactive');
    holder.permit?.release();
    expect(low.permit).toBeDefined();
    expect(high.permit).toBeUndefined();
  });

  it('answers 429 when the class queue is full and 408 after the class timeout', async () => {
    const { admit, clock, metrics } = scheduler({
      capacity: 1,
      classes: { default: { queue_size: 1, queue_timeout_secs: 5, starvation_threshold_secs: 100 } },
    });
    admit('default');
    const queued = admit('default');
    const full = admit('default');
    expect(full.wait).toBeUndefined();
    expect(full.err?.status).toBe(429);
    expect(full.err?.code).toBe('scheduler_queue_full');
    expect(Number(full.err?.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    clock.advance(4_999);
    expect(queued.err).toBeUndefined();
    clock.advance(1);
    expect(queued.err?.status).toBe(408);
    expect(queued.err?.code).toBe('scheduler_queue_timeout');
    expect(clock.timersPending).toBe(0);
    expect(await count(metrics.schedulerAdmit, { class: 'default', outcome: 'rejected_queue_full' })).toBe(1);
    expect(await count(metrics.schedulerAdmit, { class: 'default', outcome: 'rejected_queue_timeout' })).toBe(
      1,
    );
    const waits = (await metrics.schedulerQueueWait.get()).values.find(
      (v) => v.metricName === 'smg_scheduler_queue_wait_seconds_sum' && v.labels.class === 'default',
    );
    expect(waits?.value).toBe(5);
  });

  it('a cancelled waiter is dequeued, counted as client_cancelled and never answered', async () => {
    const { admit, clock, metrics, sched } = scheduler({ capacity: 1 });
    const holder = admit('default');
    const gone = admit('default');
    const next = admit('default');
    gone.wait?.cancel();
    gone.wait?.cancel();
    holder.permit?.release();
    expect(next.permit).toBeDefined();
    clock.advance(120_000);
    expect(gone.err ?? gone.permit).toBeUndefined();
    expect(sched.stats().classes.default.queued).toBe(0);
    expect(await count(metrics.schedulerAdmit, { outcome: 'client_cancelled' })).toBe(1);
  });

  it('follows the fleet capacity unless the file fixes it', () => {
    const dynamic = scheduler({});
    dynamic.sched.setCapacity(1);
    dynamic.admit('default');
    const q = dynamic.admit('default');
    expect(q.wait).toBeDefined();
    dynamic.sched.setCapacity(2);
    expect(q.permit).toBeDefined();
    const fixed = scheduler({ capacity: 1 });
    fixed.sched.setCapacity(100);
    expect(fixed.sched.stats().capacity).toBe(1);
  });

  it('counts admitted once per request (at the first byte or the release)', async () => {
    const { admit, metrics } = scheduler({ capacity: 5 });
    const a = admit('bulk');
    const b = admit('bulk');
    a.permit?.firstByte();
    a.permit?.release();
    b.permit?.release();
    expect(await count(metrics.schedulerAdmit, { class: 'bulk', outcome: 'admitted' })).toBe(2);
  });

  it('refreshes the gauges on demand', async () => {
    const { admit, sched, metrics } = scheduler({ capacity: 4, classes: { system: { reserved_floor: 2 } } });
    admit('bulk');
    admit('bulk');
    admit('bulk');
    sched.refreshGauges();
    const gauge = async (g: typeof metrics.schedulerInflight, cls: string) =>
      (await g.get()).values.find((v) => v.labels.class === cls)?.value;
    expect(await gauge(metrics.schedulerInflight, 'bulk')).toBe(2);
    expect(await gauge(metrics.schedulerQueueDepth, 'bulk')).toBe(1);
    expect(await gauge(metrics.schedulerQueueSizeLimit, 'bulk')).toBe(10);
    expect(await gauge(metrics.schedulerCapacityPressure, 'bulk')).toBe(1);
    expect((await metrics.schedulerUtilization.get()).values[0].value).toBe(0.5);
  });

  it('close answers every waiter and stops the timer', () => {
    const { admit, sched, clock } = scheduler({ capacity: 1 });
    admit('system');
    const q = admit('bulk');
    sched.close((cls, waited) => ({ code: 'closed', cls, waited }) as unknown as SmgError);
    expect(q.err).toMatchObject({ code: 'closed', cls: 'bulk', waited: 0 });
    expect(clock.timersPending).toBe(0);
  });

  it('never exceeds the capacity and answers every request at most once (random operations)', () => {
    type Op =
      | { kind: 'admit'; cls: PriorityClass }
      | { kind: 'release' | 'first' | 'cancel'; i: number }
      | { kind: 'tick'; ms: number };
    const classes: PriorityClass[] = ['bulk', 'default', 'interactive', 'system'];
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ kind: fc.constant('admit' as const), cls: fc.constantFrom(...classes) }),
      fc.record({
        kind: fc.constantFrom('release' as const, 'first' as const, 'cancel' as const),
        i: fc.nat(60),
      }),
      fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 3000 }) }),
    );
    const cfg: fc.Arbitrary<ClassConfigYaml> = fc.record({
      reserved_floor: fc.integer({ min: 0, max: 2 }),
      queue_size: fc.integer({ min: 0, max: 3 }),
      queue_timeout_secs: fc.integer({ min: 1, max: 8 }),
      starvation_threshold_secs: fc.integer({ min: 1, max: 8 }),
      can_preempt: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 8, max: 12 }),
        fc.tuple(cfg, cfg, cfg, cfg),
        fc.array(op, { maxLength: 80 }),
        (capacity, [bulk, dflt, inter, sys], ops) => {
          const { admit, clock, sched } = scheduler({
            capacity,
            classes: { bulk, default: dflt, interactive: inter, system: sys },
          });
          const reqs: ReturnType<typeof admit>[] = [];
          for (const o of ops) {
            if (o.kind === 'admit') reqs.push(admit(o.cls));
            else if (o.kind === 'tick') clock.advance(o.ms);
            else {
              const r = reqs[o.i % Math.max(1, reqs.length)];
              if (o.kind === 'release') r?.permit?.release();
              else if (o.kind === 'first') r?.permit?.firstByte();
              else r?.wait?.cancel();
            }
            const s = sched.stats();
            const inflight = Object.values(s.classes).reduce((a, c) => a + c.inflight, 0);
            const live = reqs.filter((r) => r.permit && !r.permit.released).length;
            expect(inflight).toBe(live);
            expect(inflight).toBeLessThanOrEqual(capacity);
            for (const r of reqs) expect(r.preempted).toBeLessThanOrEqual(1);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('priority scheduler config file', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'smg-priority-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const file = (text: string) => {
    const p = path.join(dir, `sched-${n++}.yaml`);
    writeFileSync(p, text);
    return p;
  };

  it('loads a full file and merges it over the built-in class settings', () => {
    const cfg = loadPrioritySchedulerConfig(
      file(`
capacity: 512
classes:
  interactive:
    reserved_floor: 64
    reserved_per_slot: 0.1
    queue_size: 100
    queue_timeout_secs: 15
    starvation_threshold_secs: 2.5
    can_preempt: false
  bulk: {}
tenant_policies:
  - tenant_key: auth:ops
    max_class: system
  - tenant_key: anonymous
    max_class: bulk
`),
    );
    expect(cfg.capacity).toBe(512);
    expect(cfg.tenant_policies).toEqual([
      { tenant_key: 'auth:ops', max_class: 'system' },
      { tenant_key: 'anonymous', max_class: 'bulk' },
    ]);
    const s = classSettings(cfg);
    expect(s[2]).toEqual({
      reservedFloor: 64,
      reservedPerSlot: 0.1,
      queueSize: 100,
      queueTimeoutSecs: 15,
      starvationThresholdSecs: 2.5,
      canPreempt: false,
    });
    expect(s[3].reservedFloor).toBe(32);
    expect(s[0].queueSize).toBe(1024);
    expect(loadPrioritySchedulerConfig(file(''))).toEqual({});
  });

  const bad: [string, string, RegExp][] = [
    ['invalid YAML', 'classes: [\n', /invalid YAML/],
    ['a list at the top', '- 1\n', /top level: expected a mapping/],
    ['an unknown top-level key', 'capcity: 10\n', /capcity: unknown key/],
    ['a zero capacity', 'capacity: 0\n', /capacity: expected an integer ≥ 1/],
    ['an unknown class', 'classes: { urgent: {} }\n', /classes\.urgent: unknown class/],
    ['an unknown class key', 'classes: { bulk: { reserved: 3 } }\n', /classes\.bulk\.reserved: unknown key/],
    [
      'a negative floor',
      'classes: { bulk: { reserved_floor: -1 } }\n',
      /reserved_floor: expected an integer ≥ 0/,
    ],
    [
      'a share above 1',
      'classes: { bulk: { reserved_per_slot: 2 } }\n',
      /reserved_per_slot: expected a share/,
    ],
    [
      'a zero timeout',
      'classes: { bulk: { queue_timeout_secs: 0 } }\n',
      /queue_timeout_secs: expected a number of seconds > 0/,
    ],
    [
      'a timeout beyond what a timer can wait',
      'classes: { bulk: { starvation_threshold_secs: 3000000 } }\n',
      /starvation_threshold_secs: expected a number of seconds > 0 and at most 2073600 \(24 days/,
    ],
    ['a repeated key', 'capacity: 10\ncapacity: 20\n', /invalid YAML: duplicate key "capacity" \(line 2\)/],
    ['a file over 1 MiB', `# ${'x'.repeat(1024 * 1024)}\n`, /the file is larger than 1 MiB/],
    [
      'a non-boolean can_preempt',
      'classes: { bulk: { can_preempt: "yes" } }\n',
      /can_preempt: expected true or false/,
    ],
    ['tenant_policies as a map', 'tenant_policies: { a: b }\n', /tenant_policies: expected a list/],
    [
      'an unknown max_class',
      'tenant_policies: [{ tenant_key: auth:a, max_class: urgent }]\n',
      /tenant_policies\[0\]\.max_class: expected one of bulk, default, interactive, system/,
    ],
    [
      'a duplicate tenant',
      'tenant_policies: [{ tenant_key: a, max_class: bulk }, { tenant_key: a, max_class: bulk }]\n',
      /tenant_policies\[1\]\.tenant_key: duplicate tenant "a"/,
    ],
    [
      'an unknown tenant policy key',
      'tenant_policies: [{ tenant_key: a, max_class: bulk, weight: 2 }]\n',
      /tenant_policies\[0\]\.weight: unknown key/,
    ],
    [
      'a capacity below the reservations',
      'capacity: 100\n',
      /capacity: 100 slots cannot hold the class reservations \(142 slots\)/,
    ],
  ];
  for (const [what, text, message] of bad) {
    it(`rejects ${what} with the file and key named`, () => {
      const p = file(text);
      let thrown: Error | undefined;
      try {
        loadPrioritySchedulerConfig(p);
      } catch (err) {
        thrown = err as Error;
      }
      expect(thrown?.message).toMatch(message);
      expect(thrown?.message).toContain(p);
    });
  }

  it('names a file it cannot read', () => {
    expect(() => loadPrioritySchedulerConfig(path.join(dir, 'nope.yaml'))).toThrow(/nope\.yaml: cannot read/);
  });
});
