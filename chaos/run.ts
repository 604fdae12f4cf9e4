/**
 * Chaos runner:
 *
 *   npm run chaos -- <kill|restart|pause|partition|loss|all ...> [--short|--long] [--peers N] [--seed S]
 *
 * (`npm run chaos` builds first; or run a built copy directly: node <outDir>/chaos/run.js …)
 * Each scenario prints a human report to stdout, then one `CHAOS {json}` line. Progress goes to
 * stderr. Exit code 1 if an invariant failed or a scenario crashed, 2 on bad arguments.
 */
import { fileURLToPath } from 'node:url';
import { stopAll } from '../src/testing/processes.js';
import { netnsAvailable } from './netns.js';
import { checkInvariants, formatReport, jsonLine } from './report.js';
import {
  SCENARIOS,
  runScenario,
  startEngines,
  stopEngines,
  type ChaosOptions,
  type RunContext,
  type ScenarioName,
} from './scenarios.js';

const USAGE = `usage: npm run chaos -- <${SCENARIOS.join('|')}|all ...> [--short|--long] [--peers N] [--seed S]
  --short    short fault windows (the CI variant)
  --long     long fault windows, 5 peers unless --peers is given
  --peers N  peers in the mesh (default 3; 5 with --long)
  --seed S   seed of victim choice, partition sides and workload (default: time-based, printed)
  --netns    root mode: every peer in its own network namespace, partitions by blackhole routes
             (default when uid 0 and \`ip netns\` works)
  --no-netns fault-file mode only (SMG_MESH_FAULTS), the default when not root
  --policy P the peers' routing policy (default cache_aware; e.g. round_robin to see the routing
             invariant fail)
`;

export interface RunArgs {
  scenarios: ScenarioName[];
  opts: ChaosOptions;
  /** 'auto' = network namespaces when root and `ip netns` works, else fault files */
  netns: 'auto' | 'on' | 'off';
}

export function parseArgs(argv: string[]): RunArgs | string {
  const scenarios: ScenarioName[] = [];
  let length: ChaosOptions['length'] = 'normal';
  let peers: number | undefined;
  let seed = Date.now() % 1_000_000;
  let policy: string | undefined;
  let netns: RunArgs['netns'] = 'auto';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--short') length = 'short';
    else if (a === '--netns') netns = 'on';
    else if (a === '--no-netns' || a === '--fault-file') netns = 'off';
    else if (a === '--long') length = 'long';
    else if (a === '--policy') {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) return '--policy needs a policy name';
      policy = v;
    } else if (a === '--peers' || a === '--seed') {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) return `${a} needs a non-negative integer`;
      if (a === '--peers') {
        if (v < 2 || v > 9) return '--peers must be 2..9';
        peers = v;
      } else seed = v;
    } else if (a === 'all') scenarios.push(...SCENARIOS);
    else if ((SCENARIOS as readonly string[]).includes(a)) scenarios.push(a as ScenarioName);
    else return `unknown argument "${a}"`;
  }
  if (scenarios.length === 0) return 'name a scenario';
  return {
    scenarios,
    netns,
    opts: {
      peers: peers ?? (length === 'long' ? 5 : 3),
      seed,
      length,
      ...(policy !== undefined && { policy }),
    },
  };
}

/** the run's engines and namespaces, for the signal handler */
let current: RunContext | undefined;

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  const parsed = parseArgs(argv);
  if (typeof parsed === 'string') {
    process.stderr.write(`${parsed}\n${USAGE}`);
    return 2;
  }
  const log = (m: string) => process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 23)}] ${m}\n`);
  const { scenarios, opts } = parsed;
  const useNetns = parsed.netns === 'on' || (parsed.netns === 'auto' && netnsAvailable());
  if (parsed.netns === 'on' && !netnsAvailable()) {
    process.stderr.write('--netns needs root and a working `ip netns`\n');
    return 2;
  }
  log(
    `scenarios ${scenarios.join(', ')}; ${opts.peers} peers; ${opts.length}; seed ${opts.seed}; ` +
      (useNetns ? 'network namespaces' : 'fault files'),
  );
  let failed = 0;
  const ctx = await startEngines(4, useNetns ? opts.peers : 0);
  current = ctx;
  try {
    for (const name of scenarios) {
      try {
        const result = await runScenario(name, ctx, { ...opts, log });
        const checks = checkInvariants(result);
        process.stdout.write(`${formatReport(result, checks)}\n${jsonLine(result, checks)}\n`);
        if (!checks.every((c) => c.ok)) failed++;
      } catch (err) {
        failed++;
        log(`${name}: CRASHED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        process.stdout.write(`CHAOS ${JSON.stringify({ scenario: name, ok: false, error: String(err) })}\n`);
      }
    }
  } finally {
    await stopAll();
    await stopEngines(ctx);
    current = undefined;
  }
  log(failed === 0 ? 'all invariants held' : `${failed} scenario(s) failed`);
  return failed === 0 ? 0 : 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const stop = () => {
    void stopAll()
      .then(() => (current ? stopEngines(current) : undefined))
      .finally(() => process.exit(130));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      void stopAll().finally(() => process.exit(1));
    },
  );
}
