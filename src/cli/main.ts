#!/usr/bin/env node
/**
 * `smg` entry point. Bare `smg [flags]` = `smg launch [flags]`; `smg mock-worker …` runs simulated
 * engines; `smg demo` starts three mesh peers in front of mock engines. Bad flags exit with status 2.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

function version(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(here, rel), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'smg' && pkg.version) return pkg.version;
    } catch {
      // try the next candidate
    }
  }
  return 'unknown';
}

async function launch(argv: string[]): Promise<void> {
  const { parseLaunchArgs, ConfigError } = await import('./config.js');
  const { LAUNCH_HELP } = await import('./help.js');
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(LAUNCH_HELP);
    return;
  }
  let cfg;
  try {
    cfg = parseLaunchArgs(argv, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`smg: ${err.message}\nRun 'smg --help' for the list of flags.\n`);
      process.exit(2);
    }
    throw err;
  }
  const { settleMsFor, startGateway } = await import('../server/gateway.js');
  const { closeLogger } = await import('../observability/logger.js');
  const gw = await startGateway(cfg);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    gw.logger.info({ signal, grace_secs: cfg.shutdownGracePeriodSecs }, 'shutting down');
    // the drain itself is bounded by the grace period; this only guards against a hang after it
    const force = setTimeout(() => process.exit(1), cfg.shutdownGracePeriodSecs * 1000 + 10_000);
    force.unref();
    gw.close(settleMsFor(cfg))
      .then(
        () => 0,
        () => 1,
      )
      // the log transport writes out its last lines (the drain's among them) before the exit
      .then((code) => closeLogger(gw.logger).then(() => process.exit(code)));
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (cmd === '--version' || cmd === '-V') {
    process.stdout.write(`smg ${version()}\n`);
    return;
  }
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
    const { TOP_HELP } = await import('./help.js');
    process.stdout.write(TOP_HELP);
    return;
  }
  switch (cmd) {
    case 'launch':
    case 'start':
      return launch(rest);
    case 'mock-worker': {
      const { runMockWorker } = await import('../mock/main.js');
      return runMockWorker(rest);
    }
    case 'demo': {
      const { runDemo } = await import('./demo.js');
      return runDemo(rest);
    }
    default:
      if (cmd !== undefined && !cmd.startsWith('-')) {
        process.stderr.write(
          `smg: unknown command "${cmd}"; commands: launch, mock-worker, demo (see smg --help)\n`,
        );
        process.exit(2);
      }
      return launch(argv);
  }
}

process.on('unhandledRejection', (reason) => {
  process.stderr.write(
    `smg: unhandled rejection: ${reason instanceof Error ? reason.stack : String(reason)}\n`,
  );
});

main(process.argv.slice(2)).catch((err: unknown) => {
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'EADDRINUSE') process.stderr.write(`smg: address already in use: ${e.message}\n`);
  else if (e?.name === 'StoreError' || e?.name === 'LogDirError') process.stderr.write(`smg: ${e.message}\n`);
  else process.stderr.write(`smg: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
