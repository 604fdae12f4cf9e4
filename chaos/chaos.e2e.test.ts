/**
 * The short chaos run of CI: kill, restart, pause and partition (fault-file mode) against real
 * `smg` processes from the built dist/ CLI, each with its invariants asserted. About 2 minutes
 * on 2 cores (up to ~4 on a busy machine); `npm run chaos -- all` runs the longer variants by
 * hand (docs/chaos.md).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stopAll } from '../src/testing/processes.js';
import { checkInvariants, formatReport } from './report.js';
import { runScenario, startEngines, stopEngines, type RunContext, type ScenarioName } from './scenarios.js';

let ctx: RunContext;

beforeAll(async () => {
  ctx = await startEngines();
}, 30_000);

afterAll(async () => {
  await stopAll();
  if (ctx) await stopEngines(ctx);
});

describe('chaos (short, 3 peers, fault-file mode)', () => {
  const scenarios: ScenarioName[] = ['kill', 'restart', 'pause', 'partition'];
  for (const [k, name] of scenarios.entries()) {
    it(`${name}: no failed request, no lost write, convergence, consistent routing`, async () => {
      const r = await runScenario(name, ctx, { peers: 3, seed: 1000 + k, length: 'short' });
      const checks = checkInvariants(r);
      // the report is the failure message: every measured number is in it
      const report = formatReport(r, checks);
      expect(
        checks.filter((c) => !c.ok).map((c) => c.name),
        report,
      ).toEqual([]);
      expect(r.requests.sent, report).toBeGreaterThan(100);
    }, 90_000);
  }
});
