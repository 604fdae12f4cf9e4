/**
 * pino logger configuration. `--log-json` writes JSON lines; otherwise one human-readable line per
 * record (`time LEVEL msg key=value…`). `--log-dir` additionally writes to a file per UTC day,
 * `smg.YYYY-MM-DD.log`, switching files at midnight.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import type { LogLevel } from '../cli/config-types.js';

export type { Logger };

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

function formatText(line: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const { time, level, msg, pid: _pid, hostname: _host, ...rest } = rec;
  const t = new Date(typeof time === 'number' ? time : Date.now()).toISOString();
  const lvl = (LEVEL_NAMES[level as number] ?? String(level)).padEnd(5);
  const kv = Object.entries(rest)
    .map(
      ([k, v]) =>
        `${k}=${typeof v === 'string' ? (/\s/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v)}`,
    )
    .join(' ');
  return `${t} ${lvl} ${String(msg ?? '')}${kv ? ' ' + kv : ''}\n`;
}

class DailyFile {
  private day = '';
  private stream: fs.WriteStream | undefined;
  constructor(private readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true });
  }
  write(chunk: string): void {
    const day = new Date().toISOString().slice(0, 10);
    if (day !== this.day) {
      this.stream?.end();
      this.day = day;
      this.stream = fs.createWriteStream(path.join(this.dir, `smg.${day}.log`), { flags: 'a' });
      this.stream.on('error', () => undefined);
    }
    this.stream?.write(chunk);
  }
  end(): void {
    this.stream?.end();
  }
}

export interface LoggerOptions {
  level: LogLevel;
  json: boolean;
  dir?: string;
  /** defaults to stdout */
  out?: NodeJS.WritableStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  const out = opts.out ?? process.stdout;
  const file = opts.dir ? new DailyFile(opts.dir) : undefined;
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = chunk.toString();
      const text = opts.json ? line : formatText(line);
      out.write(text);
      file?.write(text);
      cb();
    },
    final(cb) {
      file?.end();
      cb();
    },
  });
  return pino(
    { level: opts.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.epochTime },
    dest,
  );
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
