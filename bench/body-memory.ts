/**
 * Memory bounded before admission (issue 13, item 1): many clients uploading large bodies slowly
 * at once, against one gateway (default policy, cache_aware) and one mock engine.
 *
 * 1. `admission`: N concurrent uploads of S MiB (64 KiB every 4 ms per client, backpressure
 *    honoured) against `--max-concurrent-requests 8` (default queue of 100): the gateway's peak
 *    RSS, how many were served, refused at admission (429) or otherwise answered (`reset`: the
 *    connection died before any answer; lingering close should make that 0).
 * 2. `budget`: the same uploads with no concurrency limit and `--max-buffered-request-bytes`
 *    B MiB: what the byte budget alone holds (503 + Retry-After past it).
 *
 * Before the fix every body was read and parsed before admission was asked, so each queued upload
 * held its whole body: 200 × 8 MiB.
 */
import { startGatewayProc, startMockFleet } from '../src/testing/processes.js';
import { largeChatBody, slowUpload } from '../src/testing/slow-upload.js';
import {
  loadAvg,
  log,
  procStatusKb,
  resultHeader,
  round,
  type BenchOptions,
  type BenchOutcome,
} from './common.js';

const CHUNK = 64 * 1024;
const CHUNK_GAP_MS = 4;

interface Run {
  flags: string[];
  uploads: number;
  mib: number;
  idleRssMb: number;
  peakRssMb: number;
  seconds: number;
  statuses: Record<string, number>;
}

async function scenario(engine: string, flags: string[], uploads: number, mib: number): Promise<Run> {
  const gw = await startGatewayProc(['--worker-urls', engine, ...flags]);
  try {
    const pid = gw.child.pid;
    const idle = procStatusKb(pid, 'VmRSS') / 1024;
    let peak = idle;
    const sampler = setInterval(() => (peak = Math.max(peak, procStatusKb(pid, 'VmRSS') / 1024)), 50);
    const body = largeChatBody(mib * 1024 * 1024);
    const t0 = Date.now();
    const results = await Promise.all(
      Array.from({ length: uploads }, () => slowUpload(gw.url, body, CHUNK, CHUNK_GAP_MS)),
    );
    clearInterval(sampler);
    peak = Math.max(peak, procStatusKb(pid, 'VmRSS') / 1024);
    const statuses: Record<string, number> = {};
    for (const r of results) statuses[String(r)] = (statuses[String(r)] ?? 0) + 1;
    return {
      flags,
      uploads,
      mib,
      idleRssMb: round(idle, 1),
      peakRssMb: round(peak, 1),
      seconds: round((Date.now() - t0) / 1000, 1),
      statuses,
    };
  } finally {
    await gw.stop();
  }
}

export async function runBodyMemoryBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('body-memory', opts);
  const loadBefore = loadAvg();
  const uploads = opts.quick ? 60 : 200;
  const mib = 8;
  const budgetMib = 128;
  const mocks = await startMockFleet(1, ['--model', 'mock-model', '--output-tokens', '1']);
  try {
    const engine = mocks.urls[0];
    log(`body-memory: ${uploads} uploads of ${mib} MiB against --max-concurrent-requests 8`);
    const admission = await scenario(
      engine,
      ['--max-concurrent-requests', '8', '--queue-timeout-secs', '600'],
      uploads,
      mib,
    );
    log(`body-memory: the same with no concurrency limit and a ${budgetMib} MiB body budget`);
    const budget = await scenario(
      engine,
      ['--max-buffered-request-bytes', String(budgetMib * 1024 * 1024)],
      uploads,
      mib,
    );
    const result = { ...header, loadAfter: loadAvg(), admission, budget };
    const show = (s: Record<string, number>) =>
      Object.entries(s)
        .map(([k, v]) => `${v}×${k}`)
        .join(' ');
    const summary =
      `${uploads} × ${mib} MiB slow uploads: --max-concurrent-requests 8 → peak RSS ${admission.peakRssMb} MB ` +
      `(idle ${admission.idleRssMb}; ${show(admission.statuses)}; ${admission.seconds} s); ` +
      `no limit, ${budgetMib} MiB budget → peak RSS ${budget.peakRssMb} MB (${show(budget.statuses)}); ` +
      `load ${loadBefore.join('/')} → ${loadAvg().join('/')}`;
    return { result, summary };
  } finally {
    await mocks.stop();
  }
}
