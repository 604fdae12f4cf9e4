/**
 * pino logger configuration. `--log-json` writes JSON lines; otherwise one human-readable line per
 * record (pino-pretty). `--log-dir` additionally writes to a file per UTC day,
 * `smg.YYYY-MM-DD.log`, switching files at midnight. The outputs live in log-output.ts and run as a
 * pino transport in a worker thread, so neither formatting nor a slow disk costs the event loop.
 *
 * Memory stays bounded end to end: the transport's outputs drop (and count) what they cannot
 * write, and in front of the transport at most FRONT_BUFFER_BYTES wait while the worker lags
 * (a starved CPU); past that, lines are dropped and the count is reported on stderr. Errors of
 * the outputs or of the worker are reported on stderr, never swallowed. `closeLogger` flushes
 * everything at shutdown, so the last lines survive the exit.
 *
 * Owns: pino's options, the transport's life. Never: writes log lines itself.
 */
import { existsSync, mkdirSync, accessSync, constants as fsConstants } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { EventEmitter } from 'node:events';
import pino, { type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from '../cli/config-types.js';
import { buildLogOutput, report as reportOnStderr, type LogOutputOptions } from './log-output.js';

export type { Logger };

/** bytes of log lines held in front of the transport while its worker lags, before dropping */
export const FRONT_BUFFER_BYTES = 8 * 1024 * 1024;
const REPORT_EVERY_MS = 10_000;
/** the worker's own flush is bounded (log-output.ts); this only guards against a wedged worker */
const CLOSE_TIMEOUT_MS = 10_000;

export class LogDirError extends Error {
  override readonly name = 'LogDirError';
}

export interface LoggerOptions {
  level: LogLevel;
  json: boolean;
  dir?: string;
  /** where console lines go: a file descriptor (default 1, stdout) or a file path (tests) */
  console?: number | string;
}

/** what a logger writes into, and how it is flushed and closed */
export interface LogSink extends DestinationStream {
  close(): Promise<void>;
}

const sinks = new WeakMap<Logger, LogSink>();

/**
 * The transport's stream (thread-stream) as pino sees it, with a bound: thread-stream itself
 * buffers without limit in front of its worker when the worker falls behind. Should the worker
 * die, the outputs are rebuilt on this thread (`fallback`) and logging goes on.
 */
export class TransportSink implements LogSink {
  private congested = false;
  private heldBytes = 0;
  private dropped = 0;
  private reportTimer: NodeJS.Timeout | undefined;
  private fallbackSink: LogSink | undefined;
  private closed: Promise<void> | undefined;

  constructor(
    private readonly stream: EventEmitter & {
      write(data: string): boolean;
      end(): void;
      ref(): void;
      flush(cb: (err?: Error | null) => void): void;
    },
    private readonly fallback: () => LogSink,
    private readonly report: (message: string) => void = reportOnStderr,
  ) {
    stream.on('drain', () => {
      this.congested = false;
      this.heldBytes = 0;
    });
    stream.on('error', (err: Error) => {
      if (this.fallbackSink || this.closed) return;
      try {
        this.fallbackSink = this.fallback();
        this.report(
          `the log transport's worker failed (${err.message}); logging on the main thread from now on`,
        );
      } catch (e) {
        this.fallbackSink = { write: () => undefined, close: () => Promise.resolve() };
        this.report(
          `logging stopped: the log transport failed (${err.message}) and so did its fallback (${(e as Error).message})`,
        );
      }
    });
  }

  write(line: string): void {
    if (this.closed) return;
    if (this.fallbackSink) return this.fallbackSink.write(line);
    if (this.congested) {
      if (this.heldBytes + line.length > FRONT_BUFFER_BYTES) {
        this.dropped++;
        this.scheduleReport();
        return;
      }
      this.heldBytes += line.length;
    }
    if (!this.stream.write(line)) this.congested = true;
  }

  /** pino's `logger.flush(cb)` */
  flush(cb?: (err?: Error | null) => void): void {
    if (this.fallbackSink || this.closed) return cb?.();
    this.stream.flush(cb ?? (() => undefined));
  }

  private scheduleReport(): void {
    if (this.reportTimer) return;
    this.reportTimer = setTimeout(() => this.flushReport(), REPORT_EVERY_MS);
    this.reportTimer.unref();
  }

  private flushReport(): void {
    if (this.reportTimer) clearTimeout(this.reportTimer);
    this.reportTimer = undefined;
    if (this.dropped === 0) return;
    this.report(
      `${this.dropped} log lines dropped (the log writer fell ${FRONT_BUFFER_BYTES >> 20} MiB behind)`,
    );
    this.dropped = 0;
  }

  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      this.flushReport();
      if (this.fallbackSink) return void this.fallbackSink.close().then(resolve);
      const timer = setTimeout(resolve, CLOSE_TIMEOUT_MS);
      this.stream.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      // pino unrefs the worker; until it has closed its outputs, it is what the process waits for
      this.stream.ref();
      // thread-stream's end() waits for the worker to write out and close its outputs
      this.stream.end();
    });
    return this.closed;
  }
}

/** the outputs on this thread (running from the TypeScript sources, where no worker script exists) */
class InThreadSink implements LogSink {
  private closed: Promise<void> | undefined;

  constructor(private readonly output: ReturnType<typeof buildLogOutput>) {
    output.on('error', (err: Error) => reportOnStderr(`log output failed: ${err.message}`));
  }

  write(line: string): void {
    if (!this.closed) this.output.write(line);
  }

  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      this.output.once('close', () => resolve());
      this.output.end();
    });
    return this.closed;
  }
}

/** creates `dir` (and parents) and checks it is writable: a bad --log-dir stops start-up */
function prepareLogDir(dir: string): string {
  const abs = path.resolve(dir);
  try {
    mkdirSync(abs, { recursive: true });
    accessSync(abs, fsConstants.W_OK);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new LogDirError(`--log-dir ${abs}: ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' '));
  }
  return abs;
}

export function createLogger(opts: LoggerOptions): Logger {
  const output: LogOutputOptions = {
    json: opts.json,
    ...(opts.dir !== undefined && { dir: prepareLogDir(opts.dir) }),
    ...(opts.console !== undefined && {
      console: typeof opts.console === 'string' ? path.resolve(opts.console) : opts.console,
    }),
  };
  const script = fileURLToPath(new URL('./log-output.js', import.meta.url));
  const inThread = () => new InThreadSink(buildLogOutput(output));
  const sink: LogSink = existsSync(script)
    ? new TransportSink(pino.transport({ target: script, options: output }), inThread)
    : inThread();
  const logger = pino(
    { level: opts.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.epochTime },
    sink,
  );
  sinks.set(logger, sink);
  return logger;
}

/**
 * Writes out everything logged so far and closes the outputs (at shutdown, before exiting); later
 * records are discarded. Loggers not made by createLogger are left alone.
 */
export function closeLogger(logger: Logger): Promise<void> {
  return sinks.get(logger)?.close() ?? Promise.resolve();
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
