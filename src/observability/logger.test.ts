import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from './logger.js';

function sink(): { out: Writable; lines: () => string[] } {
  let text = '';
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { out, lines: () => text.split('\n').filter(Boolean) };
}

const flush = () => new Promise((r) => setTimeout(r, 20));

describe('logger', () => {
  it('writes human-readable lines by default, honouring the level', async () => {
    const s = sink();
    const log = createLogger({ level: 'info', json: false, out: s.out });
    log.debug('hidden');
    log.info({ worker: 'http://a:1', note: 'two words' }, 'worker registered');
    await flush();
    const lines = s.lines();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^\d{4}-\d\d-\d\dT.* INFO {2}worker registered worker=http:\/\/a:1 note="two words"$/,
    );
  });

  it('writes JSON lines with --log-json', async () => {
    const s = sink();
    const log = createLogger({ level: 'debug', json: true, out: s.out });
    log.warn({ request_id: 'r1' }, 'slow');
    await flush();
    const rec = JSON.parse(s.lines()[0]) as Record<string, unknown>;
    expect(rec.msg).toBe('slow');
    expect(rec.request_id).toBe('r1');
    expect(rec.level).toBe(40);
  });

  it('also writes a file per day with --log-dir', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smg-logs-'));
    const s = sink();
    const log = createLogger({ level: 'info', json: false, dir, out: s.out });
    log.info('to the file too');
    await flush();
    const files = fs.readdirSync(dir);
    expect(files).toEqual([`smg.${new Date().toISOString().slice(0, 10)}.log`]);
    expect(fs.readFileSync(path.join(dir, files[0]), 'utf8')).toContain('to the file too');
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
