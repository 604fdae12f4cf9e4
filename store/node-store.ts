/**
 * The per-node durable store: one SQLite file, `<data-dir>/state.db`, in WAL mode.
 *
 * Owns: node identity (node id, incarnation, HLC high-water mark, libp2p key), the registry
 * document's bytes (one snapshot + the incremental changes after it), the last known members, a
 * small key/value table, the bounded prefix-cache index and this node's own rate-limit slots; and
 * the data dir's lock: SQLite's exclusive locking mode, held by the one connection for the life of
 * the process, so one data dir is one running node.
 *
 * Must never: interpret the registry document (its bytes and heads are opaque here), sit on the
 * request path (every mutation is queued in memory and written in one transaction per tick),
 * throw from its timer, or silently reset a data file it does not recognise.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';

/** `PRAGMA application_id` of an smg store: ASCII "SMG1". A file with another id is not ours. */
export const STORE_APPLICATION_ID = 0x534d4731;
/** `PRAGMA user_version`: the schema this code writes. Older files are migrated, newer ones refused. */
export const STORE_SCHEMA_VERSION = 2;
export const STORE_FILE_NAME = 'state.db';
/** The PID lock file of smg versions before the SQLite lock; removed when found (it locks nothing). */
export const LEGACY_LOCK_NAME = 'state.db.lock';

const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1');
const RETRY_DELAY_MS = 50;
/**
 * Attempts at the store's lock (each on a fresh connection, see `lockedConnection`), and the
 * random pause between two: a starter that finds the lock held gives up within ~0.3 s.
 */
const LOCK_ATTEMPTS = 8;
const LOCK_RETRY_MS = { min: 5, max: 40 };

export class StoreError extends Error {
  readonly file: string;
  constructor(file: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
    this.file = file;
  }
}

/** Pino-compatible (and console-compatible) logging surface. */
export interface StoreLogger {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface NodeStoreOptions {
  nodeName: string;
  clusterId?: string;
  now?: () => number;
  logger?: StoreLogger;
}

export interface NodeIdentity {
  nodeId: string;
  nodeName: string;
  clusterId?: string;
  createdAt: number;
  incarnation: number;
  hlcHighWater: number;
  libp2pKey?: Uint8Array;
}

export interface StoredDoc {
  snapshot?: Uint8Array;
  /** Heads recorded with the snapshot (opaque to the store). */
  heads: string[];
  /** Changes appended after the snapshot, in append order. */
  changes: Uint8Array[];
}

export interface StoredMember {
  name: string;
  address: string;
  incarnation: number;
  state: string;
  meta: Record<string, string>;
}

export interface CacheBlockRow {
  model: string;
  worker: string;
  hash: number;
  /** the block before it in its prompt (0: a first block or unknown) */
  parent: number;
  seen: number;
}

export interface RateSlotRow {
  key: string;
  window: number;
  requests: number;
  tokens: number;
}

export interface NodeStoreStats {
  /** Write transactions committed (one per flushed batch). */
  transactions: number;
  /** Queued operations written. */
  opsWritten: number;
  /** Batches that failed to commit (each is retried once). */
  failedTransactions: number;
  /** Batches given up after their retry failed. */
  droppedBatches: number;
  /** Operations waiting in the queue. */
  queued: number;
}

type Op =
  | { kind: 'docChanges'; changes: Buffer[] }
  | { kind: 'docSnapshot'; bytes: Buffer; heads: string }
  | { kind: 'members'; members: StoredMember[] }
  | { kind: 'kv'; key: string; value: string }
  | { kind: 'cacheBlocks'; rows: CacheBlockRow[] }
  | { kind: 'pruneCacheBlocks'; maxRows: number }
  | { kind: 'dropCacheBlocks'; workers: string; maxSeen: number }
  | { kind: 'rateSlots'; rows: RateSlotRow[] }
  | { kind: 'pruneRateSlots'; minWindow: number };

interface Batch {
  ops: Op[];
  identity: boolean;
  retried: boolean;
}

interface IdentityRow {
  node_id: string;
  node_name: string;
  cluster_id: string | null;
  created_at: number;
  incarnation: number;
  hlc_high_water: number;
  libp2p_key: Buffer | null;
}

const SCHEMA_V1 = `
CREATE TABLE identity (
  id             INTEGER PRIMARY KEY CHECK (id = 1),
  node_id        TEXT    NOT NULL,
  node_name      TEXT    NOT NULL,
  cluster_id     TEXT,
  created_at     INTEGER NOT NULL,
  incarnation    INTEGER NOT NULL,
  hlc_high_water INTEGER NOT NULL,
  libp2p_key     BLOB
) STRICT;
CREATE TABLE doc_snapshot (
  id       INTEGER PRIMARY KEY CHECK (id = 1),
  bytes    BLOB    NOT NULL,
  heads    TEXT    NOT NULL,
  saved_at INTEGER NOT NULL
) STRICT;
CREATE TABLE doc_changes (
  seq   INTEGER PRIMARY KEY AUTOINCREMENT,
  bytes BLOB NOT NULL
) STRICT;
CREATE TABLE members (
  name        TEXT    PRIMARY KEY,
  address     TEXT    NOT NULL,
  incarnation INTEGER NOT NULL,
  state       TEXT    NOT NULL,
  meta        TEXT    NOT NULL
) STRICT;
CREATE TABLE kv (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;
CREATE TABLE cache_blocks (
  model  TEXT    NOT NULL,
  worker TEXT    NOT NULL,
  hash   INTEGER NOT NULL,
  seen   INTEGER NOT NULL,
  PRIMARY KEY (model, worker, hash)
) STRICT;
CREATE INDEX cache_blocks_by_seen ON cache_blocks (seen);
CREATE TABLE rate_slots (
  key          TEXT    NOT NULL,
  window_start INTEGER NOT NULL,
  requests     INTEGER NOT NULL,
  tokens       INTEGER NOT NULL,
  PRIMARY KEY (key, window_start)
) STRICT;
CREATE INDEX rate_slots_by_window ON rate_slots (window_start);
`;

/** v2: a cache block's parent hash, so a restored index keeps its chains (leaves evicted first) */
const SCHEMA_V2 = `ALTER TABLE cache_blocks ADD COLUMN parent INTEGER NOT NULL DEFAULT 0;`;

/** Schema migrations: index i upgrades user_version i to i + 1. */
const MIGRATIONS: readonly string[] = [SCHEMA_V1, SCHEMA_V2];

const CONSOLE_LOGGER: StoreLogger = {
  warn: (obj, msg) => console.warn(msg, obj),
  error: (obj, msg) => console.error(msg, obj),
  info: () => undefined,
};

function toUint8(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function copyBytes(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes);
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function unreadable(file: string, err: unknown): StoreError {
  return new StoreError(
    file,
    `store ${file} is unreadable (${describe(err)}); it may be corrupt: move it away to start this node fresh ` +
      `(it will catch up from its peers) or restore it from a backup`,
    { cause: err },
  );
}

function requireInteger(file: string, what: string, value: number): void {
  if (!Number.isSafeInteger(value))
    throw new StoreError(file, `${what} must be a safe integer, got ${value}`);
}

/** Reads the first bytes of an existing file so a non-SQLite file is named as such, untouched. */
function readHeader(file: string): Buffer | undefined {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new StoreError(file, `cannot read store file ${file}: ${describe(err)}`, { cause: err });
  }
  if (size === 0) return Buffer.alloc(0);
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(Math.min(size, 100));
    readSync(fd, buf, 0, buf.length, 0);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/** Files open in this process: a second open would give one node two writers. */
const openInProcess = new Set<string>();

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * A connection that holds the database file's EXCLUSIVE lock for its whole life: two processes on
 * one data dir would be two writers with one identity (one Automerge actor emitting conflicting
 * changes). `locking_mode = EXCLUSIVE` is set before the first access, so SQLite never uses
 * shared memory for the WAL (its index lives in heap memory, no `-shm`) and never releases the
 * lock taken by the empty write transaction below. It is an OS advisory lock (POSIX `fcntl`):
 * it goes away with the process, kill -9 included, and holds across containers that share a volume
 * on one host. Nothing is written to the file.
 *
 * A connection that fails to get the lock keeps its shared lock in exclusive mode, so two starters
 * racing through SHARED → EXCLUSIVE can both fail (never both succeed). Each attempt therefore runs
 * on a fresh connection, closed at once on failure, and a starter retries a few times after a
 * random pause before it reports the data dir in use: one of two simultaneous starters wins, and a
 * starter facing a live owner gives up within a fraction of a second (no busy wait on the lock).
 */
function lockedConnection(file: string, dir: string, fresh: boolean): Database.Database {
  for (let attempt = 1; ; attempt++) {
    let db: Database.Database;
    try {
      db = new Database(file);
    } catch (err) {
      throw new StoreError(file, `cannot open store ${file}: ${describe(err)}`, { cause: err });
    }
    try {
      db.pragma('busy_timeout = 0');
      db.pragma('locking_mode = EXCLUSIVE');
      // before the first transaction, which fixes the mode: lets close() hand freed pages (deleted
      // doc changes, pruned cache rows) back to the file system, so the file stays bounded; set on
      // a new file only (on an existing one the pragma would write to a file that may not be ours)
      if (fresh) db.pragma('auto_vacuum = INCREMENTAL');
      db.exec('BEGIN EXCLUSIVE');
      db.exec('COMMIT');
      return db;
    } catch (err) {
      db.close();
      if (!isBusy(err)) throw err;
      if (attempt >= LOCK_ATTEMPTS) {
        throw new StoreError(
          file,
          `data dir ${dir} is in use by another smg process (it holds the lock on ${file}); ` +
            `each smg process needs its own --data-dir`,
          { cause: err },
        );
      }
      sleepSync(LOCK_RETRY_MS.min + Math.random() * (LOCK_RETRY_MS.max - LOCK_RETRY_MS.min));
    }
  }
}

export class NodeStore {
  readonly file: string;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly logger: StoreLogger;
  private identityState: NodeIdentity;
  private identityDirty = false;
  private queue: Op[] = [];
  private retryBatch: Batch | undefined;
  private readonly pendingKv = new Map<string, string>();
  private changeCount: number;
  private scheduled: NodeJS.Immediate | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private error: StoreError | undefined;
  private readonly counters = { transactions: 0, opsWritten: 0, failedTransactions: 0, droppedBatches: 0 };
  private readonly stmts: ReturnType<NodeStore['prepare']>;

  private constructor(file: string, db: Database.Database, opts: NodeStoreOptions) {
    this.file = file;
    this.db = db;
    this.now = opts.now ?? Date.now;
    this.logger = opts.logger ?? CONSOLE_LOGGER;
    this.stmts = this.prepare();
    this.identityState = this.loadOrCreateIdentity(opts);
    this.changeCount = (this.stmts.countChanges.get() as { n: number }).n;
  }

  /**
   * Opens (or creates) `<dir>/state.db` and holds its lock until `close()`. Throws StoreError,
   * leaving the file untouched, when the file is not an smg store, is corrupt, was written by a
   * newer smg, belongs to another node, or is open in another process (or already in this one).
   */
  static open(dir: string, opts: NodeStoreOptions): NodeStore {
    const absDir = resolve(dir);
    const file = join(absDir, STORE_FILE_NAME);
    if (opts.nodeName.length === 0) throw new StoreError(file, `store ${file}: node name must not be empty`);
    try {
      mkdirSync(absDir, { recursive: true });
    } catch (err) {
      throw new StoreError(
        file,
        `cannot create data dir ${absDir}: ${describe(err)}; point --data-dir at a writable directory, ` +
          `or give --data-dir none to keep no state`,
        { cause: err },
      );
    }
    if (openInProcess.has(file)) {
      throw new StoreError(file, `store ${file} is already open in this process`);
    }
    openInProcess.add(file);
    try {
      const store = NodeStore.openLocked(file, absDir, opts);
      rmSync(join(absDir, LEGACY_LOCK_NAME), { force: true });
      return store;
    } catch (err) {
      openInProcess.delete(file);
      throw err;
    }
  }

  private static openLocked(file: string, dir: string, opts: NodeStoreOptions): NodeStore {
    const header = readHeader(file);
    if (header && header.length > 0 && !header.subarray(0, SQLITE_HEADER.length).equals(SQLITE_HEADER)) {
      throw new StoreError(
        file,
        `${file} is not an SQLite database (and so not an smg store); move it away or point --data-dir elsewhere`,
      );
    }
    let db: Database.Database;
    try {
      db = lockedConnection(file, dir, header === undefined || header.length === 0);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw unreadable(file, err);
    }
    try {
      NodeStore.checkFile(file, db);
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal') throw new StoreError(file, `${file}: cannot enable WAL mode (got ${String(mode)})`);
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      NodeStore.migrate(db);
      return new NodeStore(file, db, opts);
    } catch (err) {
      db.close();
      if (err instanceof StoreError) throw err;
      throw unreadable(file, err);
    }
  }

  /** Refuses foreign, newer or damaged files before anything is written to them. */
  private static checkFile(file: string, db: Database.Database): void {
    const appId = db.pragma('application_id', { simple: true }) as number;
    const version = db.pragma('user_version', { simple: true }) as number;
    if (appId !== STORE_APPLICATION_ID) {
      const objects = (db.prepare('SELECT count(*) AS n FROM sqlite_schema').get() as { n: number }).n;
      if (appId !== 0 || version !== 0 || objects !== 0) {
        throw new StoreError(
          file,
          `${file} is an SQLite database but not an smg store (application_id ${appId}); ` +
            `point --data-dir at a directory of its own`,
        );
      }
      return; // an empty database: ours to initialise
    }
    if (version > STORE_SCHEMA_VERSION) {
      throw new StoreError(
        file,
        `${file} has schema version ${version}, newer than this smg understands (${STORE_SCHEMA_VERSION}); ` +
          `run a newer smg or move the file away`,
      );
    }
    const rows = db.pragma('quick_check') as { quick_check: string }[];
    if (rows.length !== 1 || rows[0].quick_check !== 'ok') {
      const problems = rows
        .flatMap((r) => r.quick_check.split('\n'))
        .filter((line) => line.length > 0 && !line.startsWith('***'));
      const more = problems.length > 3 ? `; and ${problems.length - 3} more` : '';
      const detail = problems.slice(0, 3).join('; ') + more;
      throw new StoreError(
        file,
        `store ${file} failed its integrity check (${detail}); move it away to start this node fresh ` +
          `(it will catch up from its peers) or restore it from a backup`,
      );
    }
  }

  private static migrate(db: Database.Database): void {
    const run = db.transaction(() => {
      let version = db.pragma('user_version', { simple: true }) as number;
      for (; version < MIGRATIONS.length; version++) db.exec(MIGRATIONS[version]);
      db.pragma(`application_id = ${STORE_APPLICATION_ID}`);
      db.pragma(`user_version = ${STORE_SCHEMA_VERSION}`);
    });
    run.immediate();
  }

  private prepare() {
    const db = this.db;
    return {
      getIdentity: db.prepare('SELECT * FROM identity WHERE id = 1'),
      insertIdentity: db.prepare(
        `INSERT INTO identity (id, node_id, node_name, cluster_id, created_at, incarnation, hlc_high_water, libp2p_key)
         VALUES (1, @nodeId, @nodeName, @clusterId, @createdAt, @incarnation, @hlcHighWater, @libp2pKey)`,
      ),
      updateIdentity: db.prepare(
        `UPDATE identity SET cluster_id = @clusterId, incarnation = @incarnation,
           hlc_high_water = max(hlc_high_water, @hlcHighWater), libp2p_key = @libp2pKey WHERE id = 1`,
      ),
      countChanges: db.prepare('SELECT count(*) AS n FROM doc_changes'),
      insertChange: db.prepare('INSERT INTO doc_changes (bytes) VALUES (?)'),
      deleteChanges: db.prepare('DELETE FROM doc_changes'),
      upsertSnapshot: db.prepare(
        `INSERT INTO doc_snapshot (id, bytes, heads, saved_at) VALUES (1, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes, heads = excluded.heads, saved_at = excluded.saved_at`,
      ),
      getSnapshot: db.prepare('SELECT bytes, heads FROM doc_snapshot WHERE id = 1'),
      getChanges: db.prepare('SELECT bytes FROM doc_changes ORDER BY seq').pluck(),
      deleteMembers: db.prepare('DELETE FROM members'),
      insertMember: db.prepare(
        'INSERT OR REPLACE INTO members (name, address, incarnation, state, meta) VALUES (?, ?, ?, ?, ?)',
      ),
      getMembers: db.prepare('SELECT name, address, incarnation, state, meta FROM members ORDER BY name'),
      setKv: db.prepare(
        'INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      ),
      getKv: db.prepare('SELECT value FROM kv WHERE key = ?').pluck(),
      upsertCacheBlock: db.prepare(
        `INSERT INTO cache_blocks (model, worker, hash, parent, seen) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (model, worker, hash) DO UPDATE SET seen = max(seen, excluded.seen),
           parent = CASE WHEN parent = 0 THEN excluded.parent ELSE parent END`,
      ),
      dropCacheBlocks: db.prepare(
        'DELETE FROM cache_blocks WHERE seen <= ? AND worker IN (SELECT value FROM json_each(?))',
      ),
      countCacheBlocks: db.prepare('SELECT count(*) AS n FROM cache_blocks'),
      getCacheBlocks: db.prepare(
        'SELECT model, worker, hash, parent, seen FROM cache_blocks ORDER BY seen DESC, rowid DESC LIMIT ?',
      ),
      pruneCacheBlocks: db.prepare(
        `DELETE FROM cache_blocks WHERE rowid IN
           (SELECT rowid FROM cache_blocks ORDER BY seen DESC, rowid DESC LIMIT -1 OFFSET ?)`,
      ),
      upsertRateSlot: db.prepare(
        `INSERT INTO rate_slots (key, window_start, requests, tokens) VALUES (?, ?, ?, ?)
         ON CONFLICT (key, window_start) DO UPDATE SET
           requests = max(requests, excluded.requests), tokens = max(tokens, excluded.tokens)`,
      ),
      getRateSlots: db.prepare(
        `SELECT key, window_start AS window, requests, tokens FROM rate_slots
         WHERE window_start >= ? ORDER BY window_start, key`,
      ),
      pruneRateSlots: db.prepare('DELETE FROM rate_slots WHERE window_start < ?'),
      pageCount: db.prepare('PRAGMA page_count').pluck(),
      pageSize: db.prepare('PRAGMA page_size').pluck(),
    };
  }

  private loadOrCreateIdentity(opts: NodeStoreOptions): NodeIdentity {
    const row = this.stmts.getIdentity.get() as IdentityRow | undefined;
    if (!row) {
      const identity: NodeIdentity = {
        nodeId: randomBytes(8).toString('hex'),
        nodeName: opts.nodeName,
        clusterId: opts.clusterId,
        createdAt: this.now(),
        incarnation: 0,
        hlcHighWater: 0,
      };
      this.stmts.insertIdentity.run({ ...identity, clusterId: identity.clusterId ?? null, libp2pKey: null });
      this.counters.transactions++;
      return identity;
    }
    if (row.node_name !== opts.nodeName) {
      throw new StoreError(
        this.file,
        `data dir ${this.file} belongs to node ${row.node_name}, not ${opts.nodeName}; ` +
          `give each node its own --data-dir or start it with --mesh-node-name ${row.node_name}`,
      );
    }
    if (opts.clusterId !== undefined && row.cluster_id !== null && row.cluster_id !== opts.clusterId) {
      throw new StoreError(
        this.file,
        `data dir ${this.file} belongs to node ${row.node_name} of cluster ${row.cluster_id}, not cluster ` +
          `${opts.clusterId}; use a fresh --data-dir to join another cluster`,
      );
    }
    const identity: NodeIdentity = {
      nodeId: row.node_id,
      nodeName: row.node_name,
      clusterId: row.cluster_id ?? opts.clusterId,
      createdAt: row.created_at,
      incarnation: row.incarnation,
      hlcHighWater: row.hlc_high_water,
      libp2pKey: row.libp2p_key ? toUint8(row.libp2p_key) : undefined,
    };
    if (row.cluster_id === null && opts.clusterId !== undefined) this.markIdentityDirty();
    return identity;
  }

  // ---- identity ----

  identity(): NodeIdentity {
    const id = this.identityState;
    return { ...id, libp2pKey: id.libp2pKey ? new Uint8Array(id.libp2pKey) : undefined };
  }

  /** Increments the incarnation and makes it durable before returning (called at every start). */
  bumpIncarnation(): number {
    this.assertOpen();
    this.identityState.incarnation++;
    this.markIdentityDirty();
    this.flush();
    return this.identityState.incarnation;
  }

  /** Raises the stored HLC high-water mark; a lower value is ignored. */
  setHlcHighWater(ms: number): void {
    this.assertOpen();
    requireInteger(this.file, 'HLC high-water mark', ms);
    if (ms <= this.identityState.hlcHighWater) return;
    this.identityState.hlcHighWater = ms;
    this.markIdentityDirty();
  }

  setLibp2pKey(bytes: Uint8Array): void {
    this.assertOpen();
    this.identityState.libp2pKey = new Uint8Array(bytes);
    this.markIdentityDirty();
  }

  // ---- registry document ----

  /** Replaces the snapshot; every change appended before this call is covered by it and deleted. */
  saveDocSnapshot(bytes: Uint8Array, heads: string[]): void {
    this.assertOpen();
    this.enqueue({ kind: 'docSnapshot', bytes: copyBytes(bytes), heads: JSON.stringify(heads) });
    this.changeCount = 0;
  }

  appendDocChanges(changes: Uint8Array[]): void {
    this.assertOpen();
    if (changes.length === 0) return;
    this.enqueue({ kind: 'docChanges', changes: changes.map(copyBytes) });
    this.changeCount += changes.length;
  }

  loadDoc(): StoredDoc {
    this.flushForRead();
    const snap = this.stmts.getSnapshot.get() as { bytes: Buffer; heads: string } | undefined;
    const changes = (this.stmts.getChanges.all() as Buffer[]).map(toUint8);
    return {
      snapshot: snap ? toUint8(snap.bytes) : undefined,
      heads: snap ? (JSON.parse(snap.heads) as string[]) : [],
      changes,
    };
  }

  /** Changes stored (or queued) after the current snapshot. */
  docChangeCount(): number {
    return this.changeCount;
  }

  /** Saves a fresh snapshot when more than `threshold` changes follow the current one. */
  compactIfNeeded(threshold: number, makeSnapshot: () => { bytes: Uint8Array; heads: string[] }): boolean {
    this.assertOpen();
    if (this.changeCount <= threshold) return false;
    const snap = makeSnapshot();
    this.saveDocSnapshot(snap.bytes, snap.heads);
    return true;
  }

  // ---- members ----

  /** Replaces the stored member list. */
  saveMembers(list: StoredMember[]): void {
    this.assertOpen();
    for (const m of list) requireInteger(this.file, `incarnation of member ${m.name}`, m.incarnation);
    this.enqueue({ kind: 'members', members: list.map((m) => ({ ...m, meta: { ...m.meta } })) });
  }

  loadMembers(): StoredMember[] {
    this.flushForRead();
    const rows = this.stmts.getMembers.all() as (Omit<StoredMember, 'meta'> & { meta: string })[];
    return rows.map((r) => ({ ...r, meta: JSON.parse(r.meta) as Record<string, string> }));
  }

  // ---- kv ----

  getKv(key: string): string | undefined {
    const pending = this.pendingKv.get(key);
    if (pending !== undefined) return pending;
    this.assertOpen();
    return this.stmts.getKv.get(key) as string | undefined;
  }

  setKv(key: string, value: string): void {
    this.assertOpen();
    this.pendingKv.set(key, value);
    this.enqueue({ kind: 'kv', key, value });
  }

  // ---- prefix-cache index ----

  /** Upserts blocks; an existing block keeps the larger `seen`. */
  putCacheBlocks(rows: CacheBlockRow[]): void {
    this.assertOpen();
    if (rows.length === 0) return;
    for (const r of rows) {
      requireInteger(this.file, 'cache block hash', r.hash);
      requireInteger(this.file, 'cache block parent', r.parent);
      requireInteger(this.file, 'cache block seen', r.seen);
    }
    this.enqueue({ kind: 'cacheBlocks', rows: rows.map((r) => ({ ...r })) });
  }

  /** The `limit` most recently seen blocks, newest first. */
  loadCacheBlocks(limit: number): CacheBlockRow[] {
    this.flushForRead();
    return this.stmts.getCacheBlocks.all(limit) as CacheBlockRow[];
  }

  /** Prefix-index blocks committed to the file (writes still queued are not counted). */
  countCacheBlocks(): number {
    this.assertOpen();
    return (this.stmts.countCacheBlocks.get() as { n: number }).n;
  }

  /** Keeps only the `maxRows` most recently seen blocks. */
  pruneCacheBlocks(maxRows: number): void {
    this.assertOpen();
    requireInteger(this.file, 'maxRows', maxRows);
    this.enqueue({ kind: 'pruneCacheBlocks', maxRows: Math.max(0, maxRows) });
  }

  /** Deletes the blocks of `workers` seen at or before `maxSeen` (their caches were flushed then). */
  dropCacheBlocks(workers: readonly string[], maxSeen: number): void {
    this.assertOpen();
    requireInteger(this.file, 'cache block seen', maxSeen);
    if (workers.length === 0) return;
    // one statement (one scan) for every worker of a flush
    this.enqueue({ kind: 'dropCacheBlocks', workers: JSON.stringify(workers), maxSeen });
  }

  // ---- rate-limit slots ----

  /** Upserts this node's slots; counters only grow (G-counter slot), so each keeps its maximum. */
  putRateSlots(rows: RateSlotRow[]): void {
    this.assertOpen();
    if (rows.length === 0) return;
    for (const r of rows) {
      requireInteger(this.file, 'rate slot window', r.window);
      requireInteger(this.file, 'rate slot requests', r.requests);
      requireInteger(this.file, 'rate slot tokens', r.tokens);
    }
    this.enqueue({ kind: 'rateSlots', rows: rows.map((r) => ({ ...r })) });
  }

  loadRateSlots(minWindow: number): RateSlotRow[] {
    this.flushForRead();
    return this.stmts.getRateSlots.all(minWindow) as RateSlotRow[];
  }

  /** Deletes slots of windows older than `minWindow`. */
  pruneRateSlots(minWindow: number): void {
    this.assertOpen();
    this.enqueue({ kind: 'pruneRateSlots', minWindow });
  }

  // ---- housekeeping ----

  /** Database pages plus the WAL file, for `smg_mesh_store_bytes`. */
  sizeBytes(): number {
    this.assertOpen();
    const pages = (this.stmts.pageCount.get() as number) * (this.stmts.pageSize.get() as number);
    let wal: number;
    try {
      wal = statSync(`${this.file}-wal`).size;
    } catch {
      wal = 0; // no WAL file yet, or it was just checkpointed away
    }
    return pages + wal;
  }

  stats(): NodeStoreStats {
    return {
      ...this.counters,
      queued: this.queue.length + (this.retryBatch?.ops.length ?? 0) + (this.identityDirty ? 1 : 0),
    };
  }

  /** The last write failure that was given up on (after its retry), if any. */
  lastError(): StoreError | undefined {
    return this.error;
  }

  /** Writes everything queued now, in one transaction; throws StoreError if that fails. */
  flush(): void {
    this.assertOpen();
    const err = this.writeQueued();
    if (err) throw err;
  }

  /** Flushes what is queued and closes the file. Safe to call more than once. */
  close(): void {
    if (this.closed) return;
    this.writeQueued();
    if (this.retryBatch) this.writeQueued();
    if (this.retryBatch) this.dropRetryBatch();
    this.closed = true;
    this.cancelTimers();
    try {
      this.db.pragma('incremental_vacuum');
      this.db.pragma('optimize');
    } catch (err) {
      this.logger.warn({ err, file: this.file }, 'store: housekeeping failed on close');
    }
    this.db.close();
    openInProcess.delete(this.file);
  }

  // ---- internals ----

  private assertOpen(): void {
    if (this.closed) throw new StoreError(this.file, `store ${this.file} is closed`);
  }

  private markIdentityDirty(): void {
    this.identityDirty = true;
    this.schedule();
  }

  private enqueue(op: Op): void {
    this.queue.push(op);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = setImmediate(() => {
      this.scheduled = undefined;
      if (!this.closed) this.writeQueued();
    });
  }

  private cancelTimers(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.scheduled = undefined;
    this.retryTimer = undefined;
  }

  /** Reads flush first so they see every queued write; a failure is already logged and recorded. */
  private flushForRead(): void {
    this.assertOpen();
    this.writeQueued();
  }

  /**
   * Writes the retry batch (if any) and the queue in one transaction. Never throws: a failed batch is
   * logged and kept for one retry; if the retry fails too it is dropped and recorded in lastError().
   */
  private writeQueued(): StoreError | undefined {
    if (this.scheduled) {
      clearImmediate(this.scheduled);
      this.scheduled = undefined;
    }
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    const retried = this.retryBatch;
    const batch: Batch = {
      ops: retried ? [...retried.ops, ...this.queue] : this.queue,
      identity: this.identityDirty || (retried?.identity ?? false),
      retried: retried !== undefined,
    };
    if (batch.ops.length === 0 && !batch.identity) return undefined;
    this.queue = [];
    this.retryBatch = undefined;
    this.identityDirty = false;
    try {
      this.db.transaction(() => this.apply(batch)).immediate();
      this.counters.transactions++;
      this.counters.opsWritten += batch.ops.length + (batch.identity ? 1 : 0);
      this.settleKv(batch.ops);
      return undefined;
    } catch (cause) {
      this.counters.failedTransactions++;
      const err = new StoreError(this.file, `store ${this.file}: write failed: ${describe(cause)}`, {
        cause,
      });
      if (!batch.retried) {
        this.retryBatch = batch;
        this.logger.warn(
          { err: cause, file: this.file, ops: batch.ops.length },
          'store: write failed, retrying',
        );
        if (!this.closed) {
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            if (!this.closed) this.writeQueued();
          }, RETRY_DELAY_MS);
        }
      } else {
        this.retryBatch = batch;
        this.dropRetryBatch(err);
      }
      return err;
    }
  }

  private dropRetryBatch(err?: StoreError): void {
    const batch = this.retryBatch;
    if (!batch) return;
    this.retryBatch = undefined;
    this.counters.droppedBatches++;
    this.error = err ?? new StoreError(this.file, `store ${this.file}: write failed twice, batch dropped`);
    this.settleKv(batch.ops);
    this.logger.error(
      { err: this.error, file: this.file, ops: batch.ops.length },
      'store: write failed twice; batch dropped',
    );
  }

  /** Forgets the read overlay for keys whose latest queued value has left the queue. */
  private settleKv(ops: Op[]): void {
    for (const op of ops) {
      if (op.kind !== 'kv') continue;
      if (this.pendingKv.get(op.key) !== op.value) continue;
      const stillQueued = this.queue.some((q) => q.kind === 'kv' && q.key === op.key);
      if (!stillQueued && this.retryBatch === undefined) this.pendingKv.delete(op.key);
    }
  }

  private apply(batch: Batch): void {
    const s = this.stmts;
    for (const op of batch.ops) {
      switch (op.kind) {
        case 'docChanges':
          for (const c of op.changes) s.insertChange.run(c);
          break;
        case 'docSnapshot':
          s.upsertSnapshot.run(op.bytes, op.heads, this.now());
          s.deleteChanges.run();
          break;
        case 'members':
          s.deleteMembers.run();
          for (const m of op.members) {
            s.insertMember.run(m.name, m.address, m.incarnation, m.state, JSON.stringify(m.meta));
          }
          break;
        case 'kv':
          s.setKv.run(op.key, op.value);
          break;
        case 'cacheBlocks':
          for (const r of op.rows) s.upsertCacheBlock.run(r.model, r.worker, r.hash, r.parent, r.seen);
          break;
        case 'pruneCacheBlocks':
          s.pruneCacheBlocks.run(op.maxRows);
          break;
        case 'dropCacheBlocks':
          s.dropCacheBlocks.run(op.maxSeen, op.workers);
          break;
        case 'rateSlots':
          for (const r of op.rows) s.upsertRateSlot.run(r.key, r.window, r.requests, r.tokens);
          break;
        case 'pruneRateSlots':
          s.pruneRateSlots.run(op.minWindow);
          break;
      }
    }
    if (batch.identity) {
      const id = this.identityState;
      s.updateIdentity.run({
        clusterId: id.clusterId ?? null,
        incarnation: id.incarnation,
        hlcHighWater: id.hlcHighWater,
        libp2pKey: id.libp2pKey ? Buffer.from(id.libp2pKey) : null,
      });
    }
  }
}
