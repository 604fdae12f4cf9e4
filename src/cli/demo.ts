/**
 * `npm run demo` / `smg demo`: three mock engines (child processes) behind one gateway on port
 * 30000 with the cache_aware policy. Prints the commands to try; Ctrl-C stops everything.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseLaunchArgs } from './config.js';

const MOCK_BASE_PORT = 31001;
const MOCK_COUNT = 3;

function waitForLine(child: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = 0;
    const timer = setTimeout(() => reject(new Error('mock engines did not start in time')), timeoutMs);
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += (chunk.toString().match(new RegExp(pattern, 'g')) ?? []).length;
      if (seen >= MOCK_COUNT) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`mock engines exited with code ${code}`));
    });
  });
}

export async function runDemo(argv: string[]): Promise<void> {
  const port = argv.includes('--port') ? argv[argv.indexOf('--port') + 1] : '30000';
  const entry = fileURLToPath(new URL('./main.js', import.meta.url));
  const mocks = spawn(
    process.execPath,
    [
      entry,
      'mock-worker',
      '--port',
      String(MOCK_BASE_PORT),
      '--count',
      String(MOCK_COUNT),
      '--model',
      'mock-model',
      '--ttft-ms',
      '20',
      '--prefill-tokens-per-s',
      '4000',
      '--itl-ms',
      '15',
      '--output-tokens',
      '24',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await waitForLine(mocks, /listening/, 15_000);

  const workerUrls = Array.from({ length: MOCK_COUNT }, (_, i) => `http://127.0.0.1:${MOCK_BASE_PORT + i}`);
  const cfg = parseLaunchArgs(
    ['--port', port, '--policy', 'cache_aware', '--worker-urls', ...workerUrls, '--log-level', 'warn'],
    process.env,
  );
  const { startGateway } = await import('../server/gateway.js');
  const gw = await startGateway(cfg);
  const base = `http://127.0.0.1:${port}`;
  process.stdout.write(
    [
      '',
      `smg demo: gateway ${base} (policy cache_aware) → mock engines ${workerUrls.join(', ')}`,
      `metrics: ${gw.metricsUrl ?? 'off'}/metrics`,
      '',
      'Try:',
      `  curl -s ${base}/v1/models`,
      `  curl -s ${base}/v1/chat/completions -H 'content-type: application/json' \\`,
      `    -d '{"model":"mock-model","messages":[{"role":"user","content":"Hello from the demo"}]}'`,
      `  curl -sN ${base}/v1/chat/completions -H 'content-type: application/json' \\`,
      `    -d '{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Stream please"}]}'`,
      `  curl -s ${base}/workers`,
      '',
      'Ctrl-C stops the gateway and the engines.',
      '',
    ].join('\n'),
  );

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    mocks.kill('SIGTERM');
    gw.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  mocks.once('exit', () => {
    if (!stopping) {
      process.stderr.write('smg demo: mock engines exited; stopping\n');
      stop();
    }
  });
}
