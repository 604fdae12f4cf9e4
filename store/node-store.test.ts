import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  NodeStore,
  STORE_APPLICATION_ID,
  STORE_FILE_NAME,
  STORE_SCHEMA_VERSION,
  LEGACY_LOCK_NAME,
  StoreError,
  type StoredMember,
  type StoreLogger,
} from './node-store.js';

const quiet: StoreLogger = { warn: () => undefined, error: () => undefined, info: () => undefined };

let dir: string;
const open: NodeStore[] = [];

function openStore(name = 'node-a', extra: { clusterId?: string; now?: () => number } = {}): NodeStore {
  const store = NodeStore.open(dir, { nodeName: name, logger: quiet, ...extra });
  open.push(store);
  return store;
}

function dbFile(): string {
  return join(dir, STORE_FILE_NAME);
}

function connectionOf(store: NodeStore): Database.Database {
  return (store as unknown as { db: Database.Database }).db;
}

/**
 * What the file holds, committed writes only: through the open store's own connection (its lock
 * admits no other; it writes only in the transactions of a flush, so it sees the same), else
 * through a fresh read-only connection.
 */
function peek<T>(fn: (db: Database.Database) => T): T {
  const live = open.find((s) => !(s as unknown as { closed: boolean }).closed);
  if (live) return fn(connectionOf(live));
  const db = new Database(dbFile(), { readonly: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

function bytes(...xs: number[]): Uint8Array {
  return Uint8Array.from(xs);
}

function expectStoreError(fn: () => unknown, pattern: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(StoreError);
  expect((caught as StoreError).message).toMatch(pattern);
  expect((caught as StoreError).message).toContain(dbFile());
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'smg-store-'));
});

afterEach(() => {
  for (const s of open.splice(0)) s.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('NodeStore identity', () => {
  it('creates the data dir and an identity, marked with application_id and user_version', () => {
    dir = join(dir, 'nested', 'deeper');
    const store = openStore('node-a', { now: () => 1234 });
    const id = store.identity();
    expect(id.nodeId).toMatch(/^[0-9a-f]{16}$/);
    expect(id.nodeName).toBe('node-a');
    expect(id.createdAt).toBe(1234);
    expect(id.incarnation).toBe(0);
    expect(id.hlcHighWater).toBe(0);
    expect(id.libp2pKey).toBeUndefined();
    const [appId, version, mode] = peek((db) => [
      db.pragma('application_id', { simple: true }),
      db.pragma('user_version', { simple: true }),
      db.pragma('journal_mode', { simple: true }),
    ]);
    expect(appId).toBe(STORE_APPLICATION_ID);
    expect(version).toBe(STORE_SCHEMA_VERSION);
    expect(mode).toBe('wal');
  });

  it('keeps the identity across reopen and bumps the incarnation durably before returning', () => {
    const first = openStore();
    const nodeId = first.identity().nodeId;
    expect(first.bumpIncarnation()).toBe(1);
    // Committed already: in the file while the store is still open and unflushed.
    expect(peek((db) => db.prepare('SELECT incarnation FROM identity').pluck().get())).toBe(1);
    first.setLibp2pKey(bytes(1, 2, 3));
    first.close();
    first.close(); // idempotent

    const second = openStore();
    expect(second.identity().nodeId).toBe(nodeId);
    expect(second.identity().libp2pKey).toEqual(bytes(1, 2, 3));
    expect(second.bumpIncarnation()).toBe(2);
    expect(peek((db) => db.prepare('SELECT incarnation FROM identity').pluck().get())).toBe(2);
  });

  it('keeps the HLC high-water mark monotone, in memory and on disk', () => {
    const store = openStore();
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 1e12 }), { maxLength: 30 }), (marks) => {
        const before = store.identity().hlcHighWater;
        for (const m of marks) store.setHlcHighWater(m);
        expect(store.identity().hlcHighWater).toBe(Math.max(before, ...marks));
      }),
      { numRuns: 50 },
    );
    const high = store.identity().hlcHighWater;
    store.setHlcHighWater(5);
    store.flush();
    expect(store.identity().hlcHighWater).toBe(high);
    expect(peek((db) => db.prepare('SELECT hlc_high_water FROM identity').pluck().get())).toBe(high);
    store.close();
    expect(openStore().identity().hlcHighWater).toBe(high);
  });

  it('refuses a data dir that belongs to another node or cluster', () => {
    openStore('node-a', { clusterId: 'blue' }).close();
    expectStoreError(() => openStore('node-b'), /belongs to node node-a/);
    expectStoreError(() => openStore('node-a', { clusterId: 'green' }), /cluster blue/);
    expect(openStore('node-a', { clusterId: 'blue' }).identity().clusterId).toBe('blue');
  });

  it('refuses an empty node name', () => {
    expectStoreError(() => openStore(''), /node name must not be empty/);
  });

  it('adopts a cluster id for a store created without one', () => {
    openStore('node-a').close();
    openStore('node-a', { clusterId: 'blue' }).close();
    expectStoreError(() => openStore('node-a', { clusterId: 'green' }), /cluster blue/);
  });
});

describe('NodeStore refuses files it does not own, and leaves them untouched', () => {
  it('a foreign SQLite file (other application_id)', () => {
    const db = new Database(dbFile());
    db.pragma('application_id = 42');
    db.exec('CREATE TABLE t (x)');
    db.close();
    const before = readFileSync(dbFile());
    expectStoreError(() => openStore(), /not an smg store/);
    expect(readFileSync(dbFile()).equals(before)).toBe(true);
  });

  it('an SQLite file with tables but no application_id', () => {
    const db = new Database(dbFile());
    db.exec('CREATE TABLE t (x)');
    db.close();
    expectStoreError(() => openStore(), /not an smg store/);
  });

  it('a file of random bytes', () => {
    writeFileSync(dbFile(), Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 7919 + 13) % 256)));
    const before = readFileSync(dbFile());
    expectStoreError(() => openStore(), /not an SQLite database/);
    expect(readFileSync(dbFile()).equals(before)).toBe(true);
  });

  it('a truncated store', () => {
    const store = openStore();
    store.appendDocChanges(Array.from({ length: 200 }, (_, i) => new Uint8Array(1000).fill(i % 256)));
    store.putCacheBlocks(
      Array.from({ length: 2000 }, (_, i) => ({ model: 'm', worker: 'w', hash: i, parent: 0, seen: i })),
    );
    store.close();
    const size = statSync(dbFile()).size;
    expect(size).toBeGreaterThan(100_000);
    truncateSync(dbFile(), Math.floor(size / 2));
    expectStoreError(() => openStore(), /corrupt|integrity/);
  });

  it('a store with damaged pages', () => {
    const store = openStore();
    store.putCacheBlocks(
      Array.from({ length: 3000 }, (_, i) => ({ model: 'm', worker: 'w', hash: i, parent: 0, seen: i })),
    );
    store.close();
    const image = readFileSync(dbFile());
    const pageSize = image.readUInt16BE(16);
    // Scribble over the middle of every page but the first (header + schema stay readable).
    for (let page = 1; page * pageSize < image.length; page++) {
      image.fill(0xa5, page * pageSize + 8, page * pageSize + pageSize / 2);
    }
    writeFileSync(dbFile(), image);
    expectStoreError(() => openStore(), /failed its integrity check \(.+; and \d+ more\)/);
  });

  it('a store written by a newer schema version', () => {
    openStore().close();
    const db = new Database(dbFile());
    db.pragma(`user_version = ${STORE_SCHEMA_VERSION + 1}`);
    db.close();
    expectStoreError(() => openStore(), new RegExp(`schema version ${STORE_SCHEMA_VERSION + 1}, newer`));
  });

  it('a version-1 store is migrated: cache blocks keep their rows and gain a parent', () => {
    const first = openStore();
    first.putCacheBlocks([{ model: 'm', worker: 'w', hash: 5, parent: 4, seen: 9 }]);
    first.close();
    const db = new Database(dbFile());
    db.exec('ALTER TABLE cache_blocks DROP COLUMN parent');
    db.pragma('user_version = 1');
    db.close();
    const store = openStore();
    expect(store.loadCacheBlocks(10)).toEqual([{ model: 'm', worker: 'w', hash: 5, parent: 0, seen: 9 }]);
    store.close();
  });

  it('a data dir already open in this process, or locked by another process, is refused at once', async () => {
    const store = openStore();
    expectStoreError(() => openStore(), /already open in this process/);
    store.close();
    // another process takes the lock as the store does (exclusive locking mode, empty write); the
    // timer keeps the connection reachable: on Node 22 a module variable no closure captures is
    // collected, and the finalizer closes the connection (and drops the lock)
    const holder = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import Database from 'better-sqlite3';
         const db = new Database(${JSON.stringify(dbFile())});
         db.pragma('locking_mode = EXCLUSIVE');
         db.exec('BEGIN EXCLUSIVE'); db.exec('COMMIT');
         console.log('locked');
         setInterval(() => db.open, 1000);`,
      ],
      { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = new Promise<void>((r) => holder.once('exit', () => r()));
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`lock holder exited with ${code}`)));
      });
      expectStoreError(() => openStore(), new RegExp(`data dir ${dir} is in use by another smg process`));
    } finally {
      holder.kill('SIGKILL');
      await exited;
    }
    // the lock went with the process (kill -9); the PID file of older versions is cleared
    writeFileSync(join(dir, LEGACY_LOCK_NAME), `${process.pid}\nsomewhere\n`);
    openStore().close();
    expect(existsSync(join(dir, LEGACY_LOCK_NAME))).toBe(false);
    expect(existsSync(`${dbFile()}-shm`)).toBe(false);
  });

  it('accepts an empty file as a fresh store', () => {
    writeFileSync(dbFile(), '');
    expect(openStore().identity().incarnation).toBe(0);
  });
});

describe('NodeStore registry document', () => {
  it('round-trips a snapshot plus the changes after it', () => {
    const store = openStore();
    expect(store.loadDoc()).toEqual({ snapshot: undefined, heads: [], changes: [] });
    store.appendDocChanges([bytes(1), bytes(2)]);
    store.saveDocSnapshot(bytes(9, 9), ['h1', 'h2']);
    store.appendDocChanges([bytes(3)]);
    store.appendDocChanges([bytes(4, 4)]);
    // Reads see queued writes.
    expect(store.docChangeCount()).toBe(2);
    expect(store.loadDoc()).toEqual({
      snapshot: bytes(9, 9),
      heads: ['h1', 'h2'],
      changes: [bytes(3), bytes(4, 4)],
    });
    store.close();
    const again = openStore();
    expect(again.docChangeCount()).toBe(2);
    expect(again.loadDoc()).toEqual({
      snapshot: bytes(9, 9),
      heads: ['h1', 'h2'],
      changes: [bytes(3), bytes(4, 4)],
    });
  });

  it('copies bytes at append time, so later mutation by the caller does not leak in', () => {
    const store = openStore();
    const change = bytes(1, 2, 3);
    store.appendDocChanges([change]);
    change[0] = 99;
    expect(store.loadDoc().changes).toEqual([bytes(1, 2, 3)]);
  });

  it('compactIfNeeded snapshots past the threshold and deletes the covered changes', () => {
    const store = openStore();
    let snapshots = 0;
    const make = () => ({ bytes: bytes(100 + ++snapshots), heads: [`head-${snapshots}`] });
    store.appendDocChanges([bytes(1), bytes(2), bytes(3)]);
    expect(store.compactIfNeeded(3, make)).toBe(false);
    store.appendDocChanges([bytes(4)]);
    expect(store.compactIfNeeded(3, make)).toBe(true);
    expect(store.docChangeCount()).toBe(0);
    store.flush();
    expect(peek((db) => db.prepare('SELECT count(*) FROM doc_changes').pluck().get())).toBe(0);
    expect(store.loadDoc()).toEqual({ snapshot: bytes(101), heads: ['head-1'], changes: [] });
  });
});

describe('NodeStore members and kv', () => {
  it('replaces and round-trips the member list', () => {
    const store = openStore();
    store.saveMembers([
      { name: 'b', address: '10.0.0.2:30001', incarnation: 3, state: 'alive', meta: { libp2p: 'x' } },
      { name: 'old', address: '10.0.0.9:30001', incarnation: 1, state: 'dead', meta: {} },
    ]);
    const list: StoredMember[] = [
      { name: 'a', address: '10.0.0.1:30001', incarnation: 1, state: 'alive', meta: {} },
      {
        name: 'c',
        address: '10.0.0.3:30001',
        incarnation: 7,
        state: 'suspect',
        meta: { libp2p: 'y', z: '1' },
      },
    ];
    store.saveMembers(list);
    expect(store.loadMembers()).toEqual(list);
    store.close();
    expect(openStore().loadMembers()).toEqual(list);
  });

  it('reads its own queued kv writes and persists them', () => {
    const store = openStore();
    expect(store.getKv('k')).toBeUndefined();
    store.setKv('k', 'v1');
    store.setKv('k', 'v2');
    expect(store.getKv('k')).toBe('v2');
    expect(peek((db) => db.prepare('SELECT value FROM kv').pluck().get())).toBeUndefined();
    store.flush();
    expect(store.getKv('k')).toBe('v2');
    store.close();
    expect(openStore().getKv('k')).toBe('v2');
  });
});

describe('NodeStore batching', () => {
  it('writes 1,000 appends made in one tick in one transaction, on the next tick', async () => {
    const store = openStore();
    await tick();
    const before = store.stats().transactions;
    for (let i = 0; i < 1000; i++) store.appendDocChanges([bytes(i % 256, i >> 8)]);
    store.setHlcHighWater(77);
    expect(store.stats().queued).toBe(1001);
    expect(peek((db) => db.prepare('SELECT count(*) FROM doc_changes').pluck().get())).toBe(0);
    await tick();
    expect(store.stats().transactions).toBe(before + 1);
    expect(store.stats().queued).toBe(0);
    expect(peek((db) => db.prepare('SELECT count(*) FROM doc_changes').pluck().get())).toBe(1000);
    expect(peek((db) => db.prepare('SELECT hlc_high_water FROM identity').pluck().get())).toBe(77);
  });

  it('prints batched append throughput', () => {
    const store = openStore();
    const change = new Uint8Array(200).fill(7);
    const batches = 50;
    const perBatch = 2000;
    const start = process.hrtime.bigint();
    for (let b = 0; b < batches; b++) {
      store.appendDocChanges(Array.from({ length: perBatch }, () => change));
      store.flush();
    }
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    const rows = batches * perBatch;
    console.log(
      `store throughput: ${Math.round(rows / secs)} rows/s (${rows} x 200 B doc changes, ${perBatch} per transaction)`,
    );
    expect(store.docChangeCount()).toBe(rows);
  });

  it('retries a failed batch once, then gives up and reports it via lastError()', async () => {
    const warnings: string[] = [];
    const errors: string[] = [];
    const store = NodeStore.open(dir, {
      nodeName: 'node-a',
      logger: { warn: (_o, m) => warnings.push(m), error: (_o, m) => errors.push(m), info: () => undefined },
    });
    open.push(store);
    await tick();
    // The connection refuses writes for a while, so our batch cannot commit.
    connectionOf(store).pragma('query_only = ON');
    try {
      store.setKv('k', 'v');
      await tick();
      expect(warnings).toHaveLength(1);
      expect(store.lastError()).toBeUndefined();
      expect(() => store.flush()).toThrow(StoreError);
      expect(errors).toHaveLength(1);
      expect(store.lastError()).toBeInstanceOf(StoreError);
      expect(store.stats()).toMatchObject({ failedTransactions: 2, droppedBatches: 1, queued: 0 });
    } finally {
      connectionOf(store).pragma('query_only = OFF');
    }
    // The store keeps working after a dropped batch.
    store.setKv('k2', 'v2');
    store.flush();
    expect(store.getKv('k2')).toBe('v2');
  });

  it('recovers when the retry succeeds', async () => {
    const store = openStore();
    await tick();
    connectionOf(store).pragma('query_only = ON');
    store.appendDocChanges([bytes(1)]);
    await tick();
    expect(store.stats().failedTransactions).toBe(1);
    connectionOf(store).pragma('query_only = OFF');
    await new Promise((r) => setTimeout(r, 120)); // the retry timer
    expect(store.lastError()).toBeUndefined();
    expect(peek((db) => db.prepare('SELECT count(*) FROM doc_changes').pluck().get())).toBe(1);
  });

  it('flushes on close and rejects writes after it', () => {
    const store = openStore();
    store.appendDocChanges([bytes(5)]);
    store.close();
    expect(peek((db) => db.prepare('SELECT count(*) FROM doc_changes').pluck().get())).toBe(1);
    expect(() => store.setKv('a', 'b')).toThrow(/closed/);
  });

  it('returns the space of compacted changes to the file system on close', () => {
    const store = openStore();
    store.appendDocChanges(Array.from({ length: 100 }, () => new Uint8Array(4000)));
    store.close();
    const big = statSync(dbFile()).size;
    const again = openStore();
    again.saveDocSnapshot(bytes(1), ['h']);
    again.close();
    expect(statSync(dbFile()).size).toBeLessThan(big / 4);
  });

  it('reports its size including the WAL', () => {
    const store = openStore();
    const empty = store.sizeBytes();
    store.appendDocChanges([new Uint8Array(64_000)]);
    store.flush();
    expect(store.sizeBytes()).toBeGreaterThan(empty + 60_000);
  });
});

describe('NodeStore cache index and rate-limit slots', () => {
  it('upserts cache blocks keeping max(seen), loads newest first, prunes to a bound', () => {
    const store = openStore();
    store.putCacheBlocks([
      { model: 'm', worker: 'w1', hash: 1, parent: 0, seen: 10 },
      { model: 'm', worker: 'w1', hash: 2, parent: 1, seen: 20 },
      { model: 'm', worker: 'w2', hash: 1, parent: 0, seen: 30 },
      { model: 'n', worker: 'w1', hash: 2 ** 40, parent: 0, seen: 5 },
    ]);
    store.putCacheBlocks([
      { model: 'm', worker: 'w1', hash: 1, parent: 0, seen: 40 },
      { model: 'm', worker: 'w1', hash: 2, parent: 7, seen: 15 }, // older: ignored, parent kept
    ]);
    expect(store.loadCacheBlocks(10)).toEqual([
      { model: 'm', worker: 'w1', hash: 1, parent: 0, seen: 40 },
      { model: 'm', worker: 'w2', hash: 1, parent: 0, seen: 30 },
      { model: 'm', worker: 'w1', hash: 2, parent: 1, seen: 20 },
      { model: 'n', worker: 'w1', hash: 2 ** 40, parent: 0, seen: 5 },
    ]);
    expect(store.loadCacheBlocks(2).map((r) => r.seen)).toEqual([40, 30]);
    store.pruneCacheBlocks(2);
    expect(store.loadCacheBlocks(10).map((r) => r.seen)).toEqual([40, 30]);
  });

  it('drops the blocks of flushed workers seen at or before the flush, in one statement', () => {
    const store = openStore();
    store.putCacheBlocks([
      { model: 'm', worker: 'w1', hash: 1, parent: 0, seen: 10 },
      { model: 'n', worker: 'w1', hash: 2, parent: 0, seen: 20 },
      { model: 'm', worker: 'w1', hash: 3, parent: 1, seen: 30 },
      { model: 'm', worker: 'w2', hash: 1, parent: 0, seen: 10 },
      { model: 'm', worker: 'w3', hash: 1, parent: 0, seen: 10 },
    ]);
    store.dropCacheBlocks(['w1', 'w3'], 20);
    expect(store.loadCacheBlocks(10).map((r) => [r.worker, r.hash])).toEqual([
      ['w1', 3],
      ['w2', 1],
    ]);
    expect(() => store.dropCacheBlocks(['w1'], 1.5)).toThrow(StoreError);
  });

  it('keeps the newest rows under any sequence of puts and prunes (property)', () => {
    const store = openStore();
    fc.assert(
      fc.property(
        fc.array(fc.record({ hash: fc.nat({ max: 50 }), seen: fc.nat({ max: 1000 }) }), { maxLength: 60 }),
        fc.nat({ max: 30 }),
        (rows, bound) => {
          store.pruneCacheBlocks(0);
          store.putCacheBlocks(rows.map((r) => ({ model: 'm', worker: 'w', parent: 0, ...r })));
          store.pruneCacheBlocks(bound);
          const best = new Map<number, number>();
          for (const r of rows) best.set(r.hash, Math.max(best.get(r.hash) ?? -1, r.seen));
          const expected = [...best.values()].sort((a, b) => b - a).slice(0, bound);
          const got = store.loadCacheBlocks(1000);
          expect(got.map((r) => r.seen)).toEqual(expected);
          for (const r of got) expect(best.get(r.hash)).toBe(r.seen);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('upserts rate slots keeping the max of each counter, loads current windows, prunes old ones', () => {
    const store = openStore();
    store.putRateSlots([
      { key: 'k1', window: 100, requests: 5, tokens: 50 },
      { key: 'k1', window: 160, requests: 1, tokens: 10 },
      { key: 'k2', window: 160, requests: 2, tokens: 20 },
    ]);
    store.putRateSlots([
      { key: 'k1', window: 160, requests: 3, tokens: 5 },
      { key: 'k2', window: 160, requests: 1, tokens: 99 },
    ]);
    expect(store.loadRateSlots(160)).toEqual([
      { key: 'k1', window: 160, requests: 3, tokens: 10 },
      { key: 'k2', window: 160, requests: 2, tokens: 99 },
    ]);
    expect(store.loadRateSlots(0)).toHaveLength(3);
    store.pruneRateSlots(160);
    expect(store.loadRateSlots(0)).toHaveLength(2);
    store.close();
    expect(openStore().loadRateSlots(0)).toHaveLength(2);
  });

  it('rejects non-integer values at the call, not later in the timer', () => {
    const store = openStore();
    expect(() => store.putCacheBlocks([{ model: 'm', worker: 'w', hash: 1.5, parent: 0, seen: 1 }])).toThrow(
      StoreError,
    );
    expect(() => store.putRateSlots([{ key: 'k', window: 1, requests: Number.NaN, tokens: 0 }])).toThrow(
      StoreError,
    );
    expect(() => store.setHlcHighWater(Infinity)).toThrow(StoreError);
    expect(store.stats().queued).toBe(0);
  });
});
