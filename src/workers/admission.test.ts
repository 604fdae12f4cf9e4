/**
 * First admission of a worker added on this node, with a real (in-process) mock engine: its first
 * successful probe makes it routable whatever the success threshold, and in a mesh this node
 * admits it itself even when other peers are its probers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { HealthConfig } from '../cli/config-types.js';
import { mockWorkerOptions } from '../mock/options.js';
import { startMockWorkers, type MockFleet } from '../mock/server.js';
import { silentLogger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import { Replica } from '../state/replica.js';
import { testWorkerSpec } from '../testing/worker-spec.js';
import { WorkerManager, type ProbeDuty } from './manager.js';
import { UpstreamPools } from './upstream.js';

const HEALTH: HealthConfig = {
  failureThreshold: 3,
  successThreshold: 3,
  timeoutSecs: 5,
  intervalSecs: 60,
  endpoint: '/health',
  disabled: false,
  removeUnhealthyWorkers: false,
  drainSettleSecs: 0,
};

let fleet: MockFleet;
const managers: WorkerManager[] = [];
const pools: UpstreamPools[] = [];

beforeAll(async () => {
  fleet = await startMockWorkers(mockWorkerOptions({ count: 2, model: 'm' }));
});

afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
  for (const p of pools.splice(0)) await p.closeAll();
});

afterAll(async () => {
  await fleet.close();
});

function node(nodeId: string): { replica: Replica; manager: WorkerManager } {
  const replica = new Replica({ nodeId });
  const pool = new UpstreamPools({ requestTimeoutMs: 5_000 });
  const manager = new WorkerManager({
    replica,
    pools: pool,
    health: HEALTH,
    logger: silentLogger(),
    metrics: new Metrics(),
    loadMonitorIntervalSecs: 60,
    wantsEngineLoads: () => false,
  });
  managers.push(manager);
  pools.push(pool);
  return { replica, manager };
}

async function healthChecks(url: string): Promise<number> {
  return ((await (await fetch(`${url}/mock/stats`)).json()) as { health_checks: number }).health_checks;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not after 10 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('first admission', () => {
  it('a worker registered here is routable after its first successful probe (success threshold 3)', async () => {
    const { replica, manager } = node('solo');
    const url = fleet.workers[0].url;
    const before = await healthChecks(url);
    const id = manager.register(testWorkerSpec(url));
    await until(() => replica.registry.get(id)?.routable === true, 'routable');
    expect((await healthChecks(url)) - before).toBe(1);
    expect(replica.registry.routable('m').map((w) => w.id)).toEqual([id]);
  });

  it('in a mesh, the node a worker is added on admits it itself, though other peers probe it', async () => {
    const { replica, manager } = node('adder');
    const others: ProbeDuty = {
      isProber: () => false,
      onDutyChange: () => () => undefined,
      onSuspect: () => () => undefined,
    };
    manager.setProbeDuty(others);
    const url = fleet.workers[1].url;
    const before = await healthChecks(url);
    const id = manager.register(testWorkerSpec(url));
    await until(() => replica.registry.get(id)?.routable === true, 'routable');
    // this node's own observation made it routable: no prober has spoken
    expect(replica.registry.observations(id).map((o) => [o.node, o.status])).toEqual([['adder', 'ready']]);
    expect((await healthChecks(url)) - before).toBe(1);
  });
});
