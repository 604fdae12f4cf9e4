/**
 * Benchmark runner:
 *
 *   node dist/bench/run.js [proxy|routing|cache-aware|reliability|mesh|mesh-routing|mesh-rate-limit|hostile-input|body-memory|state|logging|scale ...] [--quick] [--profile]
 *
 * Runs the named benchmarks (default: all, in that order). Each writes its JSON to
 * bench/results/<name>.json and prints it to stdout followed by one `SUMMARY <name>: …` line.
 * Progress goes to stderr. Exit code 1 if a benchmark failed (the others still run).
 */
import { runBodyMemoryBench } from './body-memory.js';
import { runCacheAwareBench } from './cache-aware.js';
import { runHostileInputBench } from './hostile-input.js';
import { log, writeResult, type BenchOptions, type BenchOutcome } from './common.js';
import { runLoggingBench } from './logging.js';
import { runMeshBench } from './mesh.js';
import { runMeshRoutingBench } from './mesh-routing.js';
import { runMeshRateLimitBench } from './mesh-rate-limit.js';
import { stopAllNginx } from './nginx.js';
import { runProxyBench } from './proxy.js';
import { runReliabilityBench } from './reliability.js';
import { runRoutingBench } from './routing.js';
import { runScaleBench } from './scale.js';
import { runStateBench } from './state.js';
import { stopAll } from '../src/testing/processes.js';

const BENCHMARKS: Record<string, (opts: BenchOptions) => Promise<BenchOutcome>> = {
  proxy: runProxyBench,
  routing: runRoutingBench,
  'cache-aware': runCacheAwareBench,
  reliability: runReliabilityBench,
  mesh: runMeshBench,
  'mesh-routing': runMeshRoutingBench,
  'mesh-rate-limit': runMeshRateLimitBench,
  'hostile-input': runHostileInputBench,
  'body-memory': runBodyMemoryBench,
  state: runStateBench,
  logging: runLoggingBench,
  scale: runScaleBench,
};

const USAGE = `usage: node dist/bench/run.js [${Object.keys(BENCHMARKS).join('|')} ...] [--quick] [--profile]
  --quick    short runs and small sizes (a smoke run)
  --profile  proxy, scale: write V8 CPU profiles of the gateways to bench/results/profiles/ and summarise them
`;

export async function main(argv: string[]): Promise<number> {
  const names: string[] = [];
  const opts: BenchOptions = { quick: false, profile: false };
  for (const a of argv) {
    if (a === '--quick') opts.quick = true;
    else if (a === '--profile') opts.profile = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE);
      return 0;
    } else if (Object.hasOwn(BENCHMARKS, a)) names.push(a);
    else {
      process.stderr.write(`unknown argument "${a}"\n${USAGE}`);
      return 2;
    }
  }
  const selected = names.length > 0 ? names : Object.keys(BENCHMARKS);
  let failed = 0;
  for (const name of selected) {
    log(`${name}: start${opts.quick ? ' (quick)' : ''}`);
    try {
      const { result, summary } = await BENCHMARKS[name](opts);
      const file = writeResult(name, result);
      process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      process.stdout.write(`SUMMARY ${name}: ${summary}\n`);
      log(`${name}: wrote ${file}`);
    } catch (err) {
      failed++;
      const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
      log(`${name}: FAILED: ${msg}`);
      writeResult(name, { benchmark: name, error: msg, at: new Date().toISOString() });
      process.stdout.write(`SUMMARY ${name}: FAILED: ${msg.split('\n')[0]}\n`);
    } finally {
      await stopAll();
    }
  }
  return failed > 0 ? 1 : 0;
}

let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping child processes`);
    void Promise.all([stopAll(), stopAllNginx()]).finally(() => process.exit(130));
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  },
);
