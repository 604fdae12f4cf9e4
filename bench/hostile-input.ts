/**
 * Hostile and careless input (issue 13, item 7): what the bounds hold and what they cost.
 *
 * 1. Metric series: N requests, each naming a model nobody serves, through a gateway with one mock
 *    engine. `/metrics` size and the gateway's RSS before, right after, and after an idle pause.
 *    (Before the fix: 3,000 requests grew `/metrics` from 108 KB to 37.8 MB and RSS by 180 MB.)
 * 2. Config files, in this process: a 40,000-key YAML file (refused at its first unknown key; the
 *    yaml package's O(N²) duplicate check took 11.5 s) and a YAML list just under the 1 MiB cap.
 * 3. Deep bodies: latency of the 400 answered for a prompt nested 8,000 deep, next to a normal chat
 *    request through the same gateway.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseLaunchArgs } from '../src/cli/config.js';
import { startGatewayProc, startMockFleet } from '../src/testing/processes.js';
import {
  distribution,
  loadAvg,
  log,
  procStatusKb,
  resultHeader,
  round,
  sleep,
  type BenchOptions,
  type BenchOutcome,
} from './common.js';

const CONCURRENCY = 32;

async function post(url: string, body: string): Promise<number> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  await res.arrayBuffer();
  return res.status;
}

/** ms to parse `--config path` (it is expected to fail) and the message it failed with */
function timeConfig(file: string): { ms: number; error: string } {
  const t = performance.now();
  let error = '';
  try {
    parseLaunchArgs(['--config', file], {});
  } catch (err) {
    error = (err as Error).message.split('\n')[0];
  }
  return { ms: round(performance.now() - t, 1), error };
}

export async function runHostileInputBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('hostile-input', opts);
  const params = {
    distinctModels: opts.quick ? 500 : 3_000,
    concurrency: CONCURRENCY,
    idleS: 5,
    deepRequests: 50,
  };

  // 2. config files (first, before any process competes for the CPU)
  const dir = mkdtempSync(path.join(tmpdir(), 'smg-bench-config-'));
  let config: Record<string, unknown>;
  try {
    const manyKeys = path.join(dir, 'many-keys.yaml');
    writeFileSync(manyKeys, Array.from({ length: 40_000 }, (_, i) => `key${i}: ${i}`).join('\n'));
    const nearCap = path.join(dir, 'near-cap.yaml');
    const urls: string[] = [];
    let size = 'worker-urls:\n'.length;
    for (let i = 0; size < 1024 * 1024 - 64; i++) {
      const line = `  - http://worker-${i}.example:8000\n`;
      urls.push(line);
      size += line.length;
    }
    writeFileSync(nearCap, `worker-urls:\n${urls.join('')}`);
    log(`hostile-input: config files (40,000 keys; ${urls.length} worker URLs in ${size} bytes)`);
    const t = performance.now();
    const listCfg = parseLaunchArgs(['--config', nearCap], {});
    config = {
      manyKeys: { keys: 40_000, ...timeConfig(manyKeys) },
      nearCapList: {
        bytes: size,
        workerUrls: listCfg.workerUrls.length,
        ms: round(performance.now() - t, 1),
      },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  // 1. metric series
  const mock = await startMockFleet(1, ['--model', 'known-model', '--output-tokens', '2']);
  const gw = await startGatewayProc(['--worker-urls', mock.urls[0], '--policy', 'round_robin']);
  const chatUrl = `${gw.url}/v1/chat/completions`;
  const chat = (model: string) =>
    JSON.stringify({ model, messages: [{ role: 'user', content: 'hello' }], stream: false });
  const metricsBytes = async () => (await (await fetch(`${gw.metricsUrl}/metrics`)).text()).length;
  const rssMb = () => round(procStatusKb(gw.child.pid, 'VmRSS') / 1024, 1);

  for (let i = 0; i < 50; i++) await post(chatUrl, chat('known-model'));
  const before = { metricsBytes: await metricsBytes(), rssMb: rssMb() };
  log(`hostile-input: ${params.distinctModels} requests with distinct models`);
  const statuses: Record<number, number> = {};
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < params.distinctModels) {
        const i = next++;
        const s = await post(chatUrl, chat(`client-model-${i}-${Math.floor(t0)}`));
        statuses[s] = (statuses[s] ?? 0) + 1;
      }
    }),
  );
  const after = { metricsBytes: await metricsBytes(), rssMb: rssMb() };
  await sleep(params.idleS * 1000);
  const idle = { rssMb: rssMb(), hwmMb: round(procStatusKb(gw.child.pid, 'VmHWM') / 1024, 1) };

  // 3. deep bodies
  const deep = JSON.stringify({ model: 'known-model', prompt: 'x' }).replace(
    '"x"',
    '['.repeat(8_000) + '"x"' + ']'.repeat(8_000),
  );
  const deepMs: number[] = [];
  const normalMs: number[] = [];
  const deepStatuses: Record<number, number> = {};
  for (let i = 0; i < params.deepRequests; i++) {
    let t = performance.now();
    const s = await post(`${gw.url}/v1/completions`, deep);
    deepMs.push(performance.now() - t);
    deepStatuses[s] = (deepStatuses[s] ?? 0) + 1;
    t = performance.now();
    await post(chatUrl, chat('known-model'));
    normalMs.push(performance.now() - t);
  }
  await gw.stop();
  await mock.stop();

  const result = {
    ...header,
    params,
    config,
    metrics: { before, after, idle, statuses, growthBytes: after.metricsBytes - before.metricsBytes },
    deepBodies: { statuses: deepStatuses, ms: distribution(deepMs), normalChatMs: distribution(normalMs) },
    loadAvgAfter: loadAvg(),
  };
  const summary =
    `${params.distinctModels} distinct models: /metrics ${round(before.metricsBytes / 1024, 1)} → ` +
    `${round(after.metricsBytes / 1024, 1)} KB, RSS ${before.rssMb} → ${after.rssMb} MB (${idle.rssMb} after ` +
    `${params.idleS} s idle); 40k-key config refused in ${(config.manyKeys as { ms: number }).ms} ms; ` +
    `1 MiB config parsed in ${(config.nearCapList as { ms: number }).ms} ms; 8,000-deep prompt → ` +
    `${Object.keys(deepStatuses).join('/')} in p50 ${result.deepBodies.ms.p50} ms ` +
    `(normal chat p50 ${result.deepBodies.normalChatMs.p50} ms)`;
  return { result, summary };
}
