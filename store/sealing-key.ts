/**
 * The node-local sealing key: 32 random bytes, base64 on one line in `<data dir>/sealing.key`
 * (mode 0600). It is the root key that seals worker `api_key`s in the registry on a node without
 * a cluster key, so a restarted node opens its own registry again (see
 * src/workers/worker-keys.ts). Back it up with state.db: without it those keys cannot be opened.
 *
 * Created on first use, atomically: written to a temporary file, synced, then linked into place, so
 * a crash never leaves a half-written key and a second creator reads the first one's key. Never
 * rewritten afterwards.
 *
 * Owns: that file. Never: logs, echoes or returns the key's text in an error.
 */
import {
  chmodSync,
  closeSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { StoreError } from './node-store.js';

export const SEALING_KEY_FILE = 'sealing.key';
const KEY_BYTES = 32;

export interface SealingKey {
  key: Buffer;
  file: string;
  /** made by this call */
  created: boolean;
  /** the file was readable by others; its mode is 0600 now */
  tightened: boolean;
}

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ? `${e.code}: ${e.message}` : String(err);
}

/** `<dir>/sealing.key`, read; undefined when there is none. Throws StoreError when it cannot be used. */
export function readSealingKey(dir: string): SealingKey | undefined {
  const file = join(resolve(dir), SEALING_KEY_FILE);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new StoreError(file, `sealing key ${file}: cannot read: ${describe(err)}`, { cause: err });
  }
  const body = text.trim();
  const key = /^[A-Za-z0-9+/]+={0,2}$/.test(body) ? Buffer.from(body, 'base64') : Buffer.alloc(0);
  if (key.length !== KEY_BYTES) {
    throw new StoreError(
      file,
      `sealing key ${file} is not ${KEY_BYTES} bytes of base64; restore it from a backup ` +
        '(or remove it: the worker api_keys sealed under it are then lost and must be set again)',
    );
  }
  let tightened = false;
  try {
    if ((statSync(file).mode & 0o077) !== 0) {
      chmodSync(file, 0o600);
      tightened = true;
    }
  } catch (err) {
    throw new StoreError(file, `sealing key ${file}: cannot restrict its mode to 0600: ${describe(err)}`, {
      cause: err,
    });
  }
  return { key, file, created: false, tightened };
}

/** `<dir>/sealing.key`, created with a fresh random key when there is none */
export function openSealingKey(dir: string): SealingKey {
  const existing = readSealingKey(dir);
  if (existing) return existing;
  const absDir = resolve(dir);
  const file = join(absDir, SEALING_KEY_FILE);
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const key = randomBytes(KEY_BYTES);
  try {
    mkdirSync(absDir, { recursive: true });
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, `${key.toString('base64')}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, file);
    } catch (err) {
      // created meanwhile by another starter: that key is the key
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const theirs = readSealingKey(dir);
      if (theirs) return theirs;
      throw err;
    }
    syncDir(absDir);
  } catch (err) {
    if (err instanceof StoreError) throw err;
    throw new StoreError(file, `sealing key ${file}: cannot create: ${describe(err)}`, { cause: err });
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // never created
    }
  }
  return { key, file, created: true, tightened: false };
}

/** the new directory entry survives a power cut */
function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // not supported on every file system: the link itself is done
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
