/**
 * `smg mock-worker …`: parse the flags, start the workers, print where they listen, and close them
 * on SIGINT/SIGTERM. Bad flags exit 2, a failure to listen exits 1.
 */
import {
  MOCK_WORKER_USAGE,
  MockWorkerArgsError,
  parseMockWorkerArgs,
  type MockWorkerOptions,
} from './options.js';
import { startMockWorkers } from './server.js';

export async function runMockWorker(argv: string[]): Promise<void> {
  let opts: MockWorkerOptions;
  try {
    opts = parseMockWorkerArgs(argv, process.env);
  } catch (err) {
    if (!(err instanceof MockWorkerArgsError)) throw err;
    process.stderr.write(`smg mock-worker: ${err.message}\n`);
    process.exit(2);
  }
  if (opts.help) {
    process.stdout.write(MOCK_WORKER_USAGE);
    return;
  }
  let fleet;
  try {
    fleet = await startMockWorkers(opts);
  } catch (err) {
    process.stderr.write(`smg mock-worker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
  for (const w of fleet.workers) {
    process.stdout.write(`mock-worker listening on ${w.url} (model ${opts.model})\n`);
  }
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    fleet.close().then(
      () => process.exit(0),
      () => process.exit(0),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
