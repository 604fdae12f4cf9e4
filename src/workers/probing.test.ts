/**
 * The WorkerManager's probing schedule with a manual clock: backoff for workers that never
 * answered, the pending budget in wall time, a dead worker coming back, and the mesh's probe duty.
 * Workers answer through undici's MockAgent (no sockets); time moves only in `run`.
 */
import pino from 'pino';
import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { HealthConfig } from '../cli/config-types.js';
import { Metrics } from '../observability/metrics.js';
import { Replica } from '../state/replica.js';
import type { WorkerSpec, WorkerStatus } from '../state/worker.js';
import { ManualClock } from '../testing/manual-clock.js';
import { testWorkerSpec } from '../testing/worker-spec.js';
import { WorkerManager, type ProbeDuty } from './manager.js';
import type { UpstreamPools } from './upstream.js';

const INTERVAL_MS = 60_000;
/** the clock moves in steps of this; a probe's reply (and the next schedule) lands at a step's end */
const STEP_MS = 50;

/** equal up to `steps` of the clock's step, as probe times are seen at the end of a step */
function near(actual: number, expected: number, steps = 1): void {
  expect(Math.abs(actual - expected)).toBeLessThanOrEqual(steps * STEP_MS);
}

interface Fleet {
  clock: ManualClock;
  replica: Replica;
  manager: WorkerManager;
  /** probe times per worker URL */
  probes: Map<string, number[]>;
  alive: Set<string>;
  status(id: string): WorkerStatus | undefined;
  /** moves the clock to `ms` from now in small steps, letting probe replies land in between */
  run(ms: number): Promise<void>;
}

const agents: MockAgent[] = [];
const managers: WorkerManager[] = [];

afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
  for (const a of agents.splice(0)) await a.close();
});

async function settle(): Promise<void> {
  for (let i = 0; i < 6; i++) await new Promise((r) => setImmediate(r));
}

function fleet(health: Partial<HealthConfig> = {}, urls: string[] = ['http://w1:8000']): Fleet {
  const clock = new ManualClock(1_000_000);
  const agent = new MockAgent();
  agent.disableNetConnect();
  agents.push(agent);
  const probes = new Map<string, number[]>();
  const alive = new Set<string>();
  for (const url of urls) {
    probes.set(url, []);
    agent
      .get(url)
      .intercept({ path: '/health', method: 'GET' })
      .reply(() => {
        probes.get(url)?.push(clock.now());
        return { statusCode: alive.has(url) ? 200 : 503, data: '' };
      })
      .persist();
    // the model an engine serves is named after its host (w1 → model-w1)
    agent
      .get(url)
      .intercept({ path: '/v1/models', method: 'GET' })
      .reply(200, { data: [{ id: `model-${new URL(url).hostname}`, owned_by: 'sglang' }] })
      .persist();
  }
  const pools = {
    control: () => agent,
    authHeaders: () => ({}),
    close: async () => undefined,
  } as unknown as UpstreamPools;
  const replica = new Replica({
    nodeId: 'node-a',
    now: clock.now,
    // a spec naming `model-refused` never passes (as a spec the API would refuse)
    workerSpecCheck: (v) => {
      const spec = v as WorkerSpec;
      return spec.models.includes('model-refused') ? undefined : spec;
    },
  });
  const manager = new WorkerManager({
    replica,
    pools,
    health: {
      failureThreshold: 3,
      successThreshold: 1,
      timeoutSecs: 5,
      intervalSecs: INTERVAL_MS / 1000,
      endpoint: '/health',
      disabled: false,
      removeUnhealthyWorkers: false,
      drainSettleSecs: 5,
      ...health,
    },
    logger: pino({ level: 'silent' }),
    metrics: new Metrics(),
    loadMonitorIntervalSecs: 10,
    wantsEngineLoads: () => false,
    clock: { now: clock.now, ...clock.timers },
  });
  managers.push(manager);
  return {
    clock,
    replica,
    manager,
    probes,
    alive,
    status: (id) => replica.registry.get(id)?.status,
    async run(ms) {
      await settle();
      for (let t = 0; t < ms; t += STEP_MS) {
        clock.advance(Math.min(STEP_MS, ms - t));
        await settle();
      }
    },
  };
}

function gaps(times: number[]): number[] {
  return times.slice(1).map((t, i) => t - times[i]);
}

describe('WorkerManager probing', () => {
  it('probes a new worker at once and backs off while it never answers, up to the interval', async () => {
    const f = fleet();
    f.manager.register(testWorkerSpec('http://w1:8000'));
    await f.run(10 * 60_000);
    const times = f.probes.get('http://w1:8000') ?? [];
    expect(times[0]).toBe(1_000_000);
    const g = gaps(times);
    // doubling from ~1 s (±25 % by phase) while below the interval
    expect(g[0]).toBeGreaterThanOrEqual(750);
    expect(g[0]).toBeLessThanOrEqual(1250 + STEP_MS);
    let doublings = 0;
    for (let i = 1; i < g.length && g[i - 1] * 2 < INTERVAL_MS / 2; i++, doublings++)
      near(g[i], 2 * g[i - 1], 3);
    expect(doublings).toBeGreaterThanOrEqual(4);
    // then the interval cadence: one interval apart once pinned to its phase
    for (const gap of g.slice(-3)) near(gap, INTERVAL_MS);
    // about a dozen probes in 10 minutes, where probing every second would have made 600
    expect(times.length).toBeLessThan(20);
    expect(f.status(f.replica.registry.list()[0].id)).toBe('pending');
  });

  it('a dead worker that comes back is ready by its next (backed-off) probe', async () => {
    const f = fleet();
    const id = f.manager.register(testWorkerSpec('http://w1:8000'));
    await f.run(20_000);
    const times = f.probes.get('http://w1:8000') ?? [];
    const lastGap = gaps(times).at(-1) ?? 0;
    expect(lastGap).toBeGreaterThan(1000);
    f.alive.add('http://w1:8000');
    const revivedAt = f.clock.now();
    // its next probe is at most twice the last gap away (the backoff doubles), plus the ±25 %
    const bound = Math.min(INTERVAL_MS * 1.5, lastGap * 2 * 1.25) + 100;
    await f.run(bound);
    expect(f.status(id)).toBe('ready');
    const firstOk = (f.probes.get('http://w1:8000') ?? []).find((t) => t >= revivedAt) ?? Infinity;
    expect(firstOk - revivedAt).toBeLessThanOrEqual(bound);
    // and from then on it is probed at the interval, not at the backoff
    const n = f.probes.get('http://w1:8000')?.length ?? 0;
    await f.run(INTERVAL_MS * 1.5 + 100);
    expect((f.probes.get('http://w1:8000')?.length ?? 0) - n).toBeLessThanOrEqual(2);
  });

  it('a pending worker fails after 10·f intervals of wall time from its first probe, however few probes that was', async () => {
    const f = fleet({ intervalSecs: 10, failureThreshold: 1 });
    const id = f.manager.register(testWorkerSpec('http://w1:8000'));
    await f.run(99_000);
    expect(f.status(id)).toBe('pending');
    await f.run(12_000);
    expect(f.status(id)).toBe('failed');
    const times = f.probes.get('http://w1:8000') ?? [];
    // the budget ran out on the probe at or after 100 s: fewer than 100 probes were made
    expect(times.at(-1)! - times[0]).toBeGreaterThanOrEqual(100_000);
    expect(times.length).toBeLessThan(20);
    // failed is terminal: no more probes
    const n = times.length;
    await f.run(60_000);
    expect(f.probes.get('http://w1:8000')?.length).toBe(n);
  });

  it('spreads the interval probes of a fleet registered at once over the interval', async () => {
    const urls = Array.from({ length: 50 }, (_, i) => `http://w${i}:8000`);
    const f = fleet({}, urls);
    for (const u of urls) f.alive.add(u);
    for (const u of urls) f.manager.register(testWorkerSpec(u));
    await f.run(3 * INTERVAL_MS);
    // the first probes all came at once (new workers are probed at once); the next ones do not
    const second = urls.map((u) => (f.probes.get(u) ?? [])[1]);
    const windows = new Set(second.map((t) => Math.floor((t % INTERVAL_MS) / (INTERVAL_MS / 10))));
    expect(windows.size).toBeGreaterThanOrEqual(8);
    // one interval apart, give or take the scheduler's batching of probes due within 1 s
    for (const u of urls) {
      const gap = (f.probes.get(u) ?? [])[2] - second[urls.indexOf(u)];
      expect(Math.abs(gap - INTERVAL_MS)).toBeLessThanOrEqual(1000 + STEP_MS);
    }
  });

  it('probes started early to share a wake-up never shorten a worker interval', async () => {
    const urls = Array.from({ length: 40 }, (_, i) => `http://w${i}:8000`);
    const f = fleet({ intervalSecs: 1 }, urls);
    for (const u of urls) f.alive.add(u);
    for (const u of urls) f.manager.register(testWorkerSpec(u));
    await f.run(30_000);
    // one probe per second and worker (the first at once), give or take one
    for (const u of urls) {
      const n = f.probes.get(u)?.length ?? 0;
      expect(n).toBeGreaterThanOrEqual(29);
      expect(n).toBeLessThanOrEqual(32);
    }
  });

  it('writes the models discoveries found together in one change, and a refused spec loses no other', async () => {
    const urls = ['http://w1:8000', 'http://w2:8000', 'http://refused:8000'];
    const f = fleet({}, urls);
    let changes = 0;
    f.replica.onRegistryChanges((c, source) => {
      if (source === 'local') changes += c.length;
    });
    // no models given: each is discovered (the engines list model-<host>)
    const ids = f.manager.registerAll(urls.map((u) => testWorkerSpec(u, [])));
    expect(changes).toBe(1);
    await f.run(200);
    expect(f.replica.registry.get(ids[0])?.models).toEqual(['model-w1']);
    expect(f.replica.registry.get(ids[1])?.models).toEqual(['model-w2']);
    expect(f.replica.registry.get(ids[0])?.spec.runtime).toBe('sglang');
    // the refused one keeps serving any model, and says why
    expect(f.replica.registry.get(ids[2])?.models).toEqual([]);
    expect(f.manager.jobStatus(ids[2])?.message).toMatch(/discovered models not recorded/);
    // registration, then the discoveries: a few changes, not one per worker and write
    expect(changes).toBeLessThanOrEqual(4);
  });

  it('probes only the workers its duty assigns, takes over when the duty changes, and probes at once on a hint', async () => {
    const f = fleet({}, ['http://w1:8000', 'http://w2:8000']);
    const mine = new Set<string>();
    const dutyListeners: (() => void)[] = [];
    const hintListeners: ((id: string) => void)[] = [];
    const duty: ProbeDuty = {
      isProber: (id) => mine.has(id),
      onDutyChange: (fn) => {
        dutyListeners.push(fn);
        return () => undefined;
      },
      onSuspect: (fn) => {
        hintListeners.push(fn);
        return () => undefined;
      },
    };
    f.manager.setProbeDuty(duty);
    f.alive.add('http://w1:8000');
    f.alive.add('http://w2:8000');
    // registered by a peer (it arrives through the registry): another peer's duty, never probed here
    const id = 'a1b2c3d4-0000-4000-8000-000000000001';
    f.replica.writeRegistry((d) => d.upsertWorker(id, testWorkerSpec('http://w1:8000')));
    await f.run(3 * INTERVAL_MS);
    expect(f.probes.get('http://w1:8000')).toEqual([]);

    mine.add(id);
    const takeover = f.clock.now();
    for (const l of dutyListeners) l();
    await f.run(300);
    expect(f.probes.get('http://w1:8000')).toHaveLength(1);
    expect(f.probes.get('http://w1:8000')![0] - takeover).toBeLessThanOrEqual(200);
    expect(f.status(id)).toBe('ready');

    // a suspect hint probes now instead of an interval later
    await f.run(5_000);
    for (const l of hintListeners) l(id);
    await f.run(100);
    expect(f.probes.get('http://w1:8000')).toHaveLength(2);

    mine.delete(id);
    for (const l of dutyListeners) l();
    await f.run(3 * INTERVAL_MS);
    expect(f.probes.get('http://w1:8000')).toHaveLength(2);

    // registered on this node: probed here until its first verdict (admission), then only by its probers
    const own = f.manager.register(testWorkerSpec('http://w2:8000'));
    await f.run(300);
    expect(f.status(own)).toBe('ready');
    expect(f.probes.get('http://w2:8000')).toHaveLength(1);
    await f.run(3 * INTERVAL_MS);
    expect(f.probes.get('http://w2:8000')).toHaveLength(1);
  });
});
