/**
 * Reliability-layer benchmarks (issue 3):
 *
 * 1. Cost: the proxy benchmark's closed loop (autocannon, 32 connections, non-streaming chat) and
 *    its paced 1,000 req/s run against two gateways on the same mock engine:
 *      off — `--disable-retries --disable-circuit-breaker`, no admission, no tracing;
 *      on  — retries and breakers (defaults), admission (`--max-concurrent-requests 4096`, queue),
 *            and tracing to a local OTLP/HTTP sink (a separate process).
 *    Runs alternate off/on several times (sequential), then both gateways are loaded at the same
 *    time in paired rounds; the figure is the median paired ratio on / off, which this VM's
 *    minute-to-minute speed drift cannot skew. Goal: on ≥ 95 % of off.
 * 2. Faults: four engines that each answer 503 to 10 % of requests; paced load through a gateway
 *    with default reliability settings. Reports the client success rate and the extra upstream
 *    requests (Σ engine requests / client requests − 1). Goals: ≥ 99.9 % success, ≤ 15 % extra.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  freePort,
  startGatewayProc,
  startMockFleet,
  type GatewayProc,
  type MockFleetProc,
} from '../src/testing/processes.js';
import { log, resultHeader, round, sleep, type BenchOptions, type BenchOutcome } from './common.js';
import { cannon, CHAT_BODY, expect200, paced, type LoadRun } from './proxy.js';

/** an OTLP/HTTP sink in its own process: accepts and discards trace exports */
async function startOtlpSink(): Promise<{
  url: string;
  child: ChildProcess;
  received: () => Promise<number>;
}> {
  const port = await freePort();
  const code = `
    let n = 0;
    require('node:http').createServer((req, res) => {
      if (req.url === '/count') { res.end(String(n)); return; }
      req.on('data', () => {});
      req.on('end', () => { n++; res.writeHead(200, {'content-type': 'application/json'}); res.end('{}'); });
    }).listen(${port}, '127.0.0.1');`;
  const child = spawn(process.execPath, ['-e', code], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${url}/count`)).ok) break;
    } catch {
      await sleep(50);
    }
  }
  return { url, child, received: async () => Number(await (await fetch(`${url}/count`)).text()) };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function engineRequests(fleet: MockFleetProc): Promise<number> {
  let n = 0;
  for (const u of fleet.urls)
    n += ((await (await fetch(`${u}/mock/stats`)).json()) as { requests: number }).requests;
  return n;
}

export async function runReliabilityBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('reliability', opts);
  const durationS = opts.quick ? 2 : 8;
  const rounds = opts.quick ? 1 : 3;
  const sink = await startOtlpSink();
  try {
    // ---- 1. cost of the layer
    log('reliability: starting engine and two gateways');
    const engine = await startMockFleet(1, ['--output-tokens', '8']);
    const common = ['--worker-urls', engine.urls[0], '--policy', 'round_robin', '--log-level', 'warn'];
    const off = await startGatewayProc([...common, '--disable-retries', '--disable-circuit-breaker']);
    const on = await startGatewayProc([
      ...common,
      '--max-concurrent-requests',
      '4096',
      '--queue-size',
      '256',
      '--enable-trace',
      '--otlp-traces-endpoint',
      `${sink.url}/v1/traces`,
    ]);
    await expect200(off.url, CHAT_BODY, 15_000);
    await expect200(on.url, CHAT_BODY, 15_000);
    const runs: Record<'off' | 'on', LoadRun[]> = { off: [], on: [] };
    const pacedRuns: Record<'off' | 'on', LoadRun[]> = { off: [], on: [] };
    const gws: Record<'off' | 'on', GatewayProc> = { off, on };
    for (const name of ['off', 'on'] as const) {
      // warm-up
      await cannon(
        { name, url: gws[name].url },
        { connections: 32, durationS: 2, body: CHAT_BODY, mode: 'closed' },
        {},
      );
    }
    for (let r = 0; r < rounds; r++) {
      for (const name of r % 2 === 0 ? (['off', 'on'] as const) : (['on', 'off'] as const)) {
        log(`reliability: closed loop, layer ${name}, round ${r + 1}/${rounds}`);
        runs[name].push(
          await cannon(
            { name, url: gws[name].url },
            { connections: 32, durationS, body: CHAT_BODY, mode: 'closed' },
            { smg: gws[name].child.pid, mock: engine.child.pid },
          ),
        );
      }
    }
    // paired: both gateways loaded at the same time, so both see the same machine speed (this VM's
    // speed drifts by tens of percent from one minute to the next, which swamps sequential runs)
    const paired: { off: number; on: number; ratio: number }[] = [];
    for (let r = 0; r < rounds + 2; r++) {
      log(`reliability: paired closed loop, round ${r + 1}/${rounds + 2}`);
      const [a, b] = await Promise.all(
        (['off', 'on'] as const).map((name) =>
          cannon(
            { name, url: gws[name].url },
            { connections: 16, durationS: Math.max(2, durationS / 2), body: CHAT_BODY, mode: 'closed' },
            { smg: gws[name].child.pid },
          ),
        ),
      );
      paired.push({ off: a.rps, on: b.rps, ratio: round(b.rps / a.rps, 3) });
    }
    for (const name of ['off', 'on'] as const) {
      log(`reliability: paced 1000 req/s, layer ${name}`);
      pacedRuns[name].push(
        await paced(
          { name, url: gws[name].url },
          { rate: 1000, durationS: Math.min(durationS, 5), connections: 16, body: CHAT_BODY },
          { smg: gws[name].child.pid, mock: engine.child.pid },
        ),
      );
    }
    await sleep(1200);
    const spansExported = await sink.received();
    await on.stop();

    // which part costs what: each part alone against `off`, paired the same way
    const parts: Record<string, string[]> = {
      'retries+breakers': [],
      admission: ['--disable-retries', '--disable-circuit-breaker', '--max-concurrent-requests', '4096'],
      tracing: [
        '--disable-retries',
        '--disable-circuit-breaker',
        '--enable-trace',
        '--otlp-traces-endpoint',
        `${sink.url}/v1/traces`,
      ],
    };
    const byPart: Record<string, number> = {};
    for (const [part, args] of Object.entries(parts)) {
      const gw = await startGatewayProc([...common, ...args]);
      await expect200(gw.url, CHAT_BODY, 15_000);
      const ratios: number[] = [];
      for (let r = 0; r < rounds + 2; r++) {
        log(`reliability: paired, ${part} alone, round ${r + 1}/${rounds + 2}`);
        const [a, b] = await Promise.all(
          [off, gw].map((g) =>
            cannon(
              { name: part, url: g.url },
              { connections: 16, durationS: Math.max(2, durationS / 2), body: CHAT_BODY, mode: 'closed' },
              {},
            ),
          ),
        );
        ratios.push(b.rps / a.rps);
      }
      byPart[part] = round(median(ratios), 3);
      await gw.stop();
    }
    await off.stop();
    await engine.stop();
    const rpsOff = median(runs.off.map((x) => x.rps));
    const rpsOn = median(runs.on.map((x) => x.rps));
    const pairedRatio = median(paired.map((p) => p.ratio));
    const cost = {
      rounds,
      durationS,
      rpsOff,
      rpsOn,
      sequentialRatio: round(rpsOn / rpsOff, 3),
      paired,
      ratio: round(pairedRatio, 3),
      pairedRatioByPart: byPart,
      goal: '>= 0.95 (paired ratio)',
      met: pairedRatio >= 0.95,
      p50Off: median(runs.off.map((x) => x.latencyMs.p50)),
      p50On: median(runs.on.map((x) => x.latencyMs.p50)),
      paced1000: {
        off: pacedRuns.off[0].latencyMs,
        on: pacedRuns.on[0].latencyMs,
      },
      traceExportRequests: spansExported,
      runs,
    };

    // ---- 2. 10 % injected 503s
    log('reliability: four engines with 10% 503s');
    const fleet = await startMockFleet(4, [
      '--output-tokens',
      '8',
      '--fail-rate',
      '0.1',
      '--fail-status',
      '503',
    ]);
    const gw = await startGatewayProc([
      '--worker-urls',
      ...fleet.urls,
      '--policy',
      'round_robin',
      '--log-level',
      'error',
      '--disable-health-check',
    ]);
    // warm-up until a 200 (the engine may answer 503 on the first try)
    await expect200(gw.url, CHAT_BODY, 15_000);
    const before = await engineRequests(fleet);
    const rate = opts.quick ? 300 : 500;
    const faultS = opts.quick ? 3 : 10;
    log(`reliability: paced ${rate} req/s for ${faultS} s`);
    const run = await paced(
      { name: 'smg-503', url: gw.url },
      { rate, durationS: faultS, connections: 32, body: CHAT_BODY },
      { smg: gw.child.pid, mock: fleet.child.pid },
    );
    await sleep(300);
    const upstream = (await engineRequests(fleet)) - before;
    const clientTotal = run.requests + run.errors + run.non2xx;
    const success = run.requests / clientTotal;
    const extra = upstream / clientTotal - 1;
    await gw.stop();
    await fleet.stop();
    const faults = {
      injected: '503 on 10% of requests at each of 4 engines',
      rate,
      durationS: faultS,
      clientRequests: clientTotal,
      succeeded: run.requests,
      failed: run.errors + run.non2xx,
      successRate: round(success, 5),
      upstreamRequests: upstream,
      extraUpstream: round(extra, 4),
      goals: { successRate: '>= 0.999', extraUpstream: '<= 0.15' },
      met: success >= 0.999 && extra <= 0.15,
      latencyMs: run.latencyMs,
    };

    const summary =
      `layer on/off paired ${(100 * cost.ratio).toFixed(1)}% (goal >= 95%), ` +
      `sequential ${rpsOn}/${rpsOff} req/s = ${(100 * cost.sequentialRatio).toFixed(1)}%; ` +
      `by part ${Object.entries(byPart)
        .map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`)
        .join(', ')}; ` +
      `10% 503s: success ${(100 * success).toFixed(2)}% (goal >= 99.9%), ` +
      `extra upstream ${(100 * extra).toFixed(1)}% (goal <= 15%)`;
    return { result: { ...header, cost, faults }, summary };
  } finally {
    sink.child.kill('SIGKILL');
  }
}
