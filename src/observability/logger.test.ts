import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, assert, describe, expect, it } from 'vitest';
import { OUTPUT_BUFFER_BYTES, buildLogOutput, dailyLogFileName } from './log-output.js';
import { EventEmitter } from 'node:events';
import {
  FRONT_BUFFER_BYTES,
  LogDirError,
  TransportSink,
  closeLogger,
  createLogger,
  type LogSink,
} from './logger.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'smg-logs-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const lines = (file: string) => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
const TIME = String.raw`\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\]`;

describe('logger', () => {
  it('writes one human-readable line per record by default, honouring the level', async () => {
    const out = path.join(tempDir(), 'console.log');
    const log = createLogger({ level: 'info', json: false, console: out });
    log.debug('hidden');
    log.info({ worker: 'http://a:1', note: 'two words' }, 'worker registered');
    log.warn(
      { err: { message: 'bad', stack: 'Error: bad\n    at x (y.js:1:2)' } },
      'first line\nsecond line',
    );
    await closeLogger(log);
    const got = lines(out);
    expect(got).toHaveLength(2);
    expect(got[0]).toMatch(
      new RegExp(`^${TIME} INFO: worker registered \\{"worker":"http://a:1","note":"two words"\\}$`),
    );
    // a line break in the message or in a value never starts a second line
    expect(got[1]).toMatch(
      new RegExp(`^${TIME} WARN: first line second line \\{"err":\\{.*at x \\(y\\.js:1:2\\)"\\}\\}$`),
    );
  });

  it('writes JSON lines with --log-json', async () => {
    const out = path.join(tempDir(), 'console.log');
    const log = createLogger({ level: 'debug', json: true, console: out });
    log.warn({ request_id: 'r1' }, 'slow');
    await closeLogger(log);
    const rec = JSON.parse(lines(out)[0]) as Record<string, unknown>;
    expect(rec).toMatchObject({ msg: 'slow', request_id: 'r1', level: 40, pid: process.pid });
  });

  it('also writes a file per UTC day with --log-dir, and closeLogger writes out every line', async () => {
    const dir = path.join(tempDir(), 'nested', 'logs');
    const out = path.join(tempDir(), 'console.log');
    const log = createLogger({ level: 'info', json: true, dir, console: out });
    for (let i = 0; i < 5000; i++) log.info({ i }, 'to the file too');
    await closeLogger(log);
    expect(fs.readdirSync(dir)).toEqual([`smg.${new Date().toISOString().slice(0, 10)}.log`]);
    const inFile = lines(path.join(dir, fs.readdirSync(dir)[0]));
    expect(inFile).toHaveLength(5000);
    expect(JSON.parse(inFile[4999])).toMatchObject({ i: 4999 });
    expect(lines(out)).toEqual(inFile);
    log.info('after close: discarded, no throw');
  });

  it('refuses a --log-dir it cannot create, with the path in the message', () => {
    const file = path.join(tempDir(), 'a-file');
    fs.writeFileSync(file, '');
    expect(() => createLogger({ level: 'info', json: true, dir: path.join(file, 'logs') })).toThrow(
      LogDirError,
    );
    expect(() => createLogger({ level: 'info', json: true, dir: path.join(file, 'logs') })).toThrow(/a-file/);
  });
});

describe('log outputs', () => {
  it('switches to the next day’s file at UTC midnight', async () => {
    const dir = tempDir();
    let now = Date.UTC(2030, 0, 31, 23, 59, 59, 990);
    const output = buildLogOutput(
      { json: true, dir, console: path.join(dir, 'console') },
      { now: () => now, report: () => undefined },
    );
    output.write('{"msg":"before"}\n');
    now += 10;
    output.write('{"msg":"after"}\n');
    await new Promise((r) => output.end(r));
    expect(dailyLogFileName(Date.UTC(2030, 0, 31, 23, 59, 59, 999))).toBe('smg.2030-01-31.log');
    expect(lines(path.join(dir, 'smg.2030-01-31.log'))).toEqual(['{"msg":"before"}']);
    expect(lines(path.join(dir, 'smg.2030-02-01.log'))).toEqual(['{"msg":"after"}']);
  });

  it('reports write errors instead of swallowing them, and keeps the other outputs going', async () => {
    const dir = tempDir();
    const reports: string[] = [];
    const output = buildLogOutput(
      { json: true, dir, console: '/dev/full' },
      { report: (m) => reports.push(m) },
    );
    output.write('{"msg":"one"}\n');
    output.write('{"msg":"two"}\n');
    await new Promise((r) => output.end(r));
    expect(reports.join('\n')).toMatch(/log output \/dev\/full: write failed: ENOSPC/);
    expect(lines(path.join(dir, fs.readdirSync(dir)[0]))).toEqual(['{"msg":"one"}', '{"msg":"two"}']);
  });

  it('holds at most its buffer for a reader that stops reading, and counts what it drops', async () => {
    const dir = tempDir();
    const fifo = path.join(dir, 'stalled');
    execFileSync('mkfifo', [fifo]);
    // a reader that never reads: the pipe fills (64 KiB), then everything waits in the buffer
    const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const writer = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const reports: string[] = [];
    const output = buildLogOutput({ json: true, console: writer }, { report: (m) => reports.push(m) });
    const line = `${JSON.stringify({ msg: 'x'.repeat(1000) })}\n`;
    const total = Math.ceil((3 * OUTPUT_BUFFER_BYTES) / line.length);
    for (let i = 0; i < total; i++) output.write(line);
    await new Promise((r) => setImmediate(r));
    // held: the buffer and what the pipe took; everything else was dropped, not queued
    const heldAtMost = Math.ceil((OUTPUT_BUFFER_BYTES + 1024 * 1024) / line.length);
    expect(output.droppedLines()).toBeGreaterThanOrEqual(total - heldAtMost);
    expect(output.droppedLines()).toBeLessThan(total);
    // closing gives up on the stalled reader after its timeout (the output closes the writer)
    output.end();
    await new Promise((r) => output.once('close', r));
    expect(reports.join('\n')).toMatch(/log lines dropped/);
    expect(reports.join('\n')).toMatch(/not flushed within/);
    fs.closeSync(reader);
  }, 20_000);
});

/** a thread-stream stand-in: `accepting` says whether its worker keeps up */
class FakeTransport extends EventEmitter {
  accepting = true;
  received = 0;
  write(data: string): boolean {
    this.received += data.length;
    return this.accepting;
  }
  end(): void {
    setImmediate(() => this.emit('close'));
  }
  ref(): void {}
  flush(cb: () => void): void {
    cb();
  }
}

describe('the transport front', () => {
  const line = `${JSON.stringify({ msg: 'y'.repeat(500) })}\n`;

  it('holds at most FRONT_BUFFER_BYTES while the worker lags, then drops and reports; drain resumes', async () => {
    const t = new FakeTransport();
    const reports: string[] = [];
    const sink = new TransportSink(
      t,
      () => assert.fail('no fallback'),
      (m) => reports.push(m),
    );
    t.accepting = false;
    const n = Math.ceil((3 * FRONT_BUFFER_BYTES) / line.length);
    for (let i = 0; i < n; i++) sink.write(line);
    expect(t.received).toBeLessThanOrEqual(FRONT_BUFFER_BYTES + line.length);
    expect(t.received).toBeGreaterThan(FRONT_BUFFER_BYTES - 2 * line.length);
    t.accepting = true;
    t.emit('drain');
    const before = t.received;
    sink.write(line);
    expect(t.received).toBe(before + line.length);
    await sink.close();
    expect(reports.join('\n')).toMatch(/log lines dropped \(the log writer fell 8 MiB behind\)/);
  });

  it('moves to outputs on this thread when the worker fails, and says so', async () => {
    const t = new FakeTransport();
    const reports: string[] = [];
    const got: string[] = [];
    const fallback: LogSink = { write: (s: string) => void got.push(s), close: () => Promise.resolve() };
    const sink = new TransportSink(
      t,
      () => fallback,
      (m) => reports.push(m),
    );
    sink.write('{"msg":"before"}\n');
    t.emit('error', new Error('worker died'));
    sink.write('{"msg":"after"}\n');
    expect(got).toEqual(['{"msg":"after"}\n']);
    expect(reports).toEqual([
      expect.stringMatching(/worker failed \(worker died\); logging on the main thread/),
    ]);
    await sink.close();
  });
});
