/**
 * Where log records go: the console (stdout) and, with `--log-dir`, one file per UTC day,
 * `smg.YYYY-MM-DD.log`. The default export is a pino transport target: logger.ts runs it in a
 * worker thread through `pino.transport`, so formatting and writes stay off the event loop that
 * serves requests (in-thread only when running from the TypeScript sources, in unit tests).
 *
 * Text mode formats each JSON record with pino-pretty, one line per record
 * (`[time] LEVEL: message {"key":"value",…}`); JSON mode passes pino's lines through untouched.
 *
 * Each output is a pino destination (SonicBoom) whose buffer is capped at OUTPUT_BUFFER_BYTES: a
 * slow disk or a stdout reader that stops reading never blocks the gateway and never grows its
 * memory past the cap — lines beyond it are dropped and counted. Drops and write errors (a full
 * disk, a closed pipe, a file that cannot be opened) are reported on stderr, throttled; a failing
 * output keeps retrying and never stops the others.
 *
 * Owns: formatting, the outputs, the daily file switch. Never: throws from a write, exits the
 * process, writes anything but log lines to stdout.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import type PinoPretty from 'pino-pretty';

/** most bytes an output holds while its destination is slower than the log rate */
export const OUTPUT_BUFFER_BYTES = 16 * 1024 * 1024;
/** drops and repeated errors are summed up at most this often */
const REPORT_EVERY_MS = 10_000;
/** a log file that cannot be opened is tried again after this long */
const REOPEN_RETRY_MS = 10_000;
/** closing waits this long for an output to flush (a stuck disk or reader cannot hold shutdown) */
const CLOSE_TIMEOUT_MS = 3_000;

export interface LogOutputOptions {
  /** JSON lines as pino writes them; else one human-readable line per record */
  json: boolean;
  /** absolute directory for the daily files (`--log-dir`) */
  dir?: string;
  /** the console: a file descriptor (default 1, stdout) or a file path */
  console?: number | string;
}

/** `smg: …` on stderr, synchronously: works from a worker thread and right before exit */
export function report(message: string): void {
  try {
    fs.writeSync(2, `smg: ${message}\n`);
  } catch {
    // stderr itself is gone: nothing left to tell
  }
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ? `${e.code} (${e.message})` : err instanceof Error ? err.message : String(err);
}

function countLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) n++;
  return Math.max(n, 1);
}

type Sonic = ReturnType<typeof pino.destination>;

/** what the outputs need from their surroundings; tests replace them */
export interface LogOutputEnv {
  now: () => number;
  /** a problem of the outputs themselves (drops, write errors), for the operator */
  report: (message: string) => void;
}

/** one pino destination over an open file descriptor, with a bounded buffer and reported failures */
class Output {
  private readonly sonic: Sonic;
  private droppedLines = 0;
  private errors = 0;
  private lastError = '';
  private reportTimer: NodeJS.Timeout | undefined;
  /** the reader closed the pipe (EPIPE): nothing written there can arrive any more */
  private gone = false;
  private closing: Promise<void> | undefined;
  /** the destination closed (ended or destroyed): writes would throw */
  private finished = false;
  /** while closing: gives up on what is still buffered */
  private abandon: ((why: string) => void) | undefined;
  /** lines dropped since start (the reports reset their own count) */
  droppedTotal = 0;

  constructor(
    private readonly label: string,
    fd: number,
    private readonly report: (message: string) => void,
  ) {
    this.sonic = pino.destination({ fd, sync: false, maxLength: OUTPUT_BUFFER_BYTES });
    this.sonic.on('drop', (data: unknown) => {
      const lines = countLines(String(data));
      this.droppedLines += lines;
      this.droppedTotal += lines;
      this.scheduleReport();
    });
    this.sonic.on('error', (err: unknown) => this.onError(err));
    this.sonic.once('close', () => (this.finished = true));
  }

  write(text: string): void {
    if (this.gone || this.finished || this.closing) return;
    try {
      this.sonic.write(text);
    } catch (err) {
      this.onError(err);
    }
  }

  private onError(err: unknown): void {
    if (this.abandon) {
      this.abandon(`write failed: ${errText(err)}`);
      return;
    }
    if ((err as NodeJS.ErrnoException)?.code === 'EPIPE') {
      if (!this.gone)
        this.report(`log output ${this.label}: the reader closed it (EPIPE); no more log lines go there`);
      this.gone = true;
      return;
    }
    this.errors++;
    this.lastError = errText(err);
    if (this.errors === 1) {
      this.report(
        `log output ${this.label}: write failed: ${this.lastError}; retrying with each new line ` +
          `(at most ${OUTPUT_BUFFER_BYTES >> 20} MiB held, then lines are dropped)`,
      );
    } else this.scheduleReport();
  }

  private scheduleReport(): void {
    if (this.reportTimer) return;
    this.reportTimer = setTimeout(() => this.flushReport(), REPORT_EVERY_MS);
    this.reportTimer.unref();
  }

  private flushReport(): void {
    if (this.reportTimer) clearTimeout(this.reportTimer);
    this.reportTimer = undefined;
    const parts: string[] = [];
    if (this.droppedLines > 0) {
      parts.push(
        `${this.droppedLines} log lines dropped (the output is slower than the log rate; ` +
          `${OUTPUT_BUFFER_BYTES >> 20} MiB buffer full)`,
      );
    }
    // the first error was reported when it happened
    if (this.errors > 1) parts.push(`${this.errors - 1} more write errors, the last: ${this.lastError}`);
    if (parts.length > 0) this.report(`log output ${this.label}: ${parts.join('; ')}`);
    this.droppedLines = 0;
    this.errors = Math.min(this.errors, 1);
  }

  /**
   * Writes what is buffered and closes. Bounded: a write error while closing, or CLOSE_TIMEOUT_MS
   * without the buffer going out, gives up on the rest (reported).
   */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      let settled = false;
      const done = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.abandon = undefined;
        this.flushReport();
        resolve();
      };
      this.abandon = (why) => {
        this.report(`log output ${this.label}: ${why} at shutdown; the rest is lost`);
        if (!this.finished) this.sonic.destroy();
        done();
      };
      const timer = setTimeout(
        () => this.abandon?.(`not flushed within ${CLOSE_TIMEOUT_MS} ms`),
        CLOSE_TIMEOUT_MS,
      );
      if (this.finished || this.gone) return done();
      this.sonic.once('close', done);
      try {
        this.sonic.end();
      } catch (err) {
        this.abandon(`close failed: ${errText(err)}`);
      }
    });
    return this.closing;
  }
}

/** `smg.YYYY-MM-DD.log` for the UTC day of `now` */
export function dailyLogFileName(now: number): string {
  return `smg.${new Date(now).toISOString().slice(0, 10)}.log`;
}

function nextUtcMidnight(now: number): number {
  const d = new Date(now);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
}

/** a file per UTC day in `dir`, switched when the first line of a new day arrives */
class DailyFile {
  private current: Output | undefined;
  private switchAt = 0;
  private retryAt = 0;
  /** lines lost while no file could be opened, reported with the next attempt */
  private lost = 0;
  private failures = 0;
  private droppedBefore = 0;

  constructor(
    private readonly dir: string,
    private readonly env: LogOutputEnv,
  ) {
    this.open(env.now());
  }

  /** lines dropped since start, this day's file and earlier ones */
  get droppedTotal(): number {
    return this.droppedBefore + this.lost + (this.current?.droppedTotal ?? 0);
  }

  write(text: string): void {
    const now = this.env.now();
    if (now >= this.switchAt && now >= this.retryAt) this.open(now);
    if (this.current) this.current.write(text);
    else this.lost += countLines(text);
  }

  private open(now: number): void {
    const file = path.join(this.dir, dailyLogFileName(now));
    let fd: number;
    try {
      fs.mkdirSync(this.dir, { recursive: true });
      fd = fs.openSync(file, 'a', 0o640);
    } catch (err) {
      this.failures++;
      this.retryAt = now + REOPEN_RETRY_MS;
      // the first failure, then one line per retry only when lines were lost meanwhile
      if (this.failures === 1 || this.lost > 0) {
        this.env.report(
          `log file ${file}: cannot open: ${errText(err)}; ` +
            `${this.current ? 'still writing the previous file' : `${this.lost} lines lost so far`}, ` +
            `retrying every ${REOPEN_RETRY_MS / 1000} s`,
        );
        this.droppedBefore += this.lost;
        this.lost = 0;
      }
      return;
    }
    if (this.failures > 0)
      this.env.report(`log file ${file}: open again after ${this.failures} failed attempts`);
    this.failures = 0;
    const previous = this.current;
    this.current = new Output(file, fd, this.env.report);
    this.switchAt = nextUtcMidnight(now);
    this.retryAt = 0;
    if (previous) {
      this.droppedBefore += previous.droppedTotal;
      void previous.close();
    }
  }

  close(): Promise<void> {
    if (this.lost > 0)
      this.env.report(`log files in ${this.dir}: ${this.lost} lines lost (no file could be opened)`);
    this.droppedBefore += this.lost;
    this.lost = 0;
    return this.current?.close() ?? Promise.resolve();
  }
}

/**
 * pino-pretty as one line per record: UTC ISO time, no pid/hostname, line breaks escaped. Loaded
 * only for text output (≈ 40 ms of start-up CPU that JSON output does without).
 */
function textFormatter(): (line: string) => string {
  const { prettyFactory } = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  const pretty = prettyFactory({
    colorize: false,
    singleLine: true,
    translateTime: "UTC:yyyy-mm-dd'T'HH:MM:ss.l'Z'",
    ignore: 'pid,hostname',
    // errors are rendered as JSON on the same line, not as an indented multi-line stack
    errorLikeObjectKeys: [],
    messageFormat: (log, messageKey) => String(log[messageKey] ?? '').replace(/[\r\n]+/g, ' '),
  });
  return (line) => pretty(line) ?? '';
}

interface Sink {
  write(text: string): void;
  close(): Promise<void>;
  readonly droppedTotal: number;
}

/** fans each chunk of log lines out to every output; never waits on them (they drop instead) */
export class LogOutput extends Writable {
  /** an incomplete last line, when the transport handed over a chunk that ends mid-line */
  private partial = '';

  constructor(
    private readonly format: ((line: string) => string) | undefined,
    private readonly sinks: Sink[],
  ) {
    super({ decodeStrings: false });
  }

  /** log lines every output dropped since start (buffer full, or no file open) */
  droppedLines(): number {
    return this.sinks.reduce((n, s) => n + s.droppedTotal, 0);
  }

  override _write(chunk: string | Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    const text = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
    const out = this.format ? this.formatLines(text) : text;
    if (out !== '') for (const s of this.sinks) s.write(out);
    cb();
  }

  private formatLines(text: string): string {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    let out = '';
    for (const line of lines) if (line !== '') out += this.format!(line);
    return out;
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.partial !== '') {
      const rest = this.format!(this.partial);
      this.partial = '';
      for (const s of this.sinks) s.write(rest);
    }
    Promise.all(this.sinks.map((s) => s.close())).then(
      () => cb(),
      (err: unknown) => cb(err instanceof Error ? err : new Error(String(err))),
    );
  }
}

/** the outputs for `opts`, as one writable stream of pino's JSON lines */
export function buildLogOutput(opts: LogOutputOptions, env: Partial<LogOutputEnv> = {}): LogOutput {
  const full: LogOutputEnv = { now: env.now ?? Date.now, report: env.report ?? report };
  const target = opts.console ?? 1;
  const consoleFd = typeof target === 'number' ? target : fs.openSync(target, 'a', 0o640);
  const label = typeof target === 'number' ? (target === 1 ? 'stdout' : `fd ${target}`) : target;
  const sinks: Sink[] = [new Output(label, consoleFd, full.report)];
  if (opts.dir !== undefined) sinks.push(new DailyFile(opts.dir, full));
  return new LogOutput(opts.json ? undefined : textFormatter(), sinks);
}

/** the pino transport target (see logger.ts) */
export default async function logOutputTransport(opts: LogOutputOptions): Promise<Writable> {
  return buildLogOutput(opts);
}
