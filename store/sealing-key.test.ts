/**
 * The node-local sealing key file: created once with mode 0600, read back as it is, never
 * rewritten, refused (without echoing its text) when damaged.
 */
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { StoreError } from './node-store.js';
import { SEALING_KEY_FILE, openSealingKey, readSealingKey } from './sealing-key.js';

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'smg-sealing-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('sealing key file', () => {
  it('is created once, 32 random bytes in base64, mode 0600, and read back unchanged', () => {
    const dir = join(tempDir(), 'data');
    expect(readSealingKey(dir)).toBeUndefined();
    const first = openSealingKey(dir);
    expect(first.created).toBe(true);
    expect(first.key).toHaveLength(32);
    const file = join(dir, SEALING_KEY_FILE);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toBe(`${first.key.toString('base64')}\n`);
    const again = openSealingKey(dir);
    expect(again.created).toBe(false);
    expect(again.key.equals(first.key)).toBe(true);
    // no temporary file is left behind
    expect(readdirSync(dir)).toEqual([SEALING_KEY_FILE]);
    expect(openSealingKey(tempDir()).key.equals(first.key)).toBe(false);
  });

  it('tightens a file others can read', () => {
    const dir = tempDir();
    const { key } = openSealingKey(dir);
    chmodSync(join(dir, SEALING_KEY_FILE), 0o644);
    const read = readSealingKey(dir);
    expect(read?.tightened).toBe(true);
    expect(read?.key.equals(key)).toBe(true);
    expect(statSync(join(dir, SEALING_KEY_FILE)).mode & 0o777).toBe(0o600);
  });

  it('refuses a damaged file with a clear error that does not show its contents', () => {
    const dir = tempDir();
    const file = join(dir, SEALING_KEY_FILE);
    for (const text of ['c2VjcmV0LWJ1dC10b28tc2hvcnQ=\n', 'not base64 at all\n', '']) {
      writeFileSync(file, text, { mode: 0o600 });
      let err: unknown;
      try {
        openSealingKey(dir);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(StoreError);
      expect((err as Error).message).toMatch(
        /sealing\.key is not 32 bytes of base64; restore it from a backup/,
      );
      if (text.trim() !== '') expect((err as Error).message).not.toContain(text.trim());
      // never replaced by a fresh key: what it sealed would be lost
      expect(readFileSync(file, 'utf8')).toBe(text);
    }
  });
});
