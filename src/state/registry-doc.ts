/**
 * The replicated registry document: workers, their tombstones, per-model routing policies and
 * cluster config, held in one Automerge document. Automerge changes are the registry's events:
 * every local write returns the change bytes the store appends and the mesh gossips, and the
 * Automerge sync protocol repairs, per peer, whatever gossip missed.
 *
 * Routing never reads Automerge: after every change of the document this module updates plain
 * maps (`workers()`, `policies()`, `config()`) and tells `onChange` listeners what moved, so the
 * Replica can feed its WorkerRegistry. A change re-reads only the keys it touched (found with
 * `Automerge.diff`), so registering N workers reads the document O(N) times, not O(N²).
 *
 * Stored shape (the root maps come from one deterministic genesis change shared by every peer, so
 * two nodes that start alone never create rival `workers` maps whose contents would shadow each
 * other):
 *   workers:  { [id]: JSON text of a WorkerSpec }      whole-spec register, Automerge picks the winner
 *   removed:  { [id]: true }                           tombstones: remove wins, an id never returns
 *   policies: { [model]: JSON text of a ModelPolicy }
 *   config:   { [key]: string }
 * Values are Automerge scalar strings (ImmutableString), not nested maps of collaborative text: a
 * spec is replaced as a whole (like the `worker.upsert` event it stands for), and one scalar costs
 * fewer operations in the history than a character-level text object per field.
 *
 * Security: `api_key` is part of the WorkerSpec and therefore of the replicated document, its
 * history, every snapshot on disk and every sync message. Anyone who can read the mesh or a data
 * dir can read worker keys; this is why the mesh is encrypted with the cluster key and why the
 * HTTP API never returns `api_key`. A key replaced by an upsert stays readable in the history.
 *
 * Owns: the document, its per-peer sync states, the derived views. Never: I/O, timers, imports
 * from outside src/state.
 */
import { createHash } from 'node:crypto';
import * as Automerge from '@automerge/automerge';
import type { WorkerSpec } from './worker.js';

export type PolicyParam = number | string | boolean;

export interface ModelPolicy {
  /** routing policy name, e.g. `cache_aware`, `round_robin` */
  readonly policy: string;
  readonly params?: Readonly<Record<string, PolicyParam>>;
  /** wall-clock ms of the write, informational (Automerge decides concurrent writes) */
  readonly updatedAt: number;
}

export interface RegistryDocDiff {
  /** ids that appeared or whose spec changed */
  upserted: string[];
  /** ids that left the view (tombstoned) */
  removed: string[];
  policiesChanged: boolean;
  configChanged: boolean;
}

export type RegistryDocListener = (diff: RegistryDocDiff) => void;

export type RegistryDocErrorCode =
  | 'invalid_actor'
  | 'invalid_argument'
  | 'worker_removed'
  | 'malformed_change'
  | 'malformed_sync_message'
  | 'corrupt_snapshot'
  | 'corrupt_document'
  | 'foreign_document';

export class RegistryDocError extends Error {
  override readonly name = 'RegistryDocError';
  constructor(
    readonly code: RegistryDocErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface RegistryDocOptions {
  /** clock for `ModelPolicy.updatedAt` */
  now?: () => number;
}

interface RootShape {
  workers: Record<string, Automerge.ImmutableString>;
  removed: Record<string, boolean>;
  policies: Record<string, Automerge.ImmutableString>;
  config: Record<string, Automerge.ImmutableString>;
}

type Doc = Automerge.Doc<RootShape>;
type SyncState = ReturnType<typeof Automerge.initSyncState>;

/**
 * Spec text per change when upserting in bulk: every change is gossiped as one message (at most
 * 64 KiB), and a change takes about 1.2 times its specs' text.
 */
const MAX_BATCH_SPEC_BYTES = 32 * 1024;

/** Bytes of the incarnation suffix of an actor id. */
const INCARNATION_BYTES = 4;
const MAX_NODE_ID_BYTES = 64;

/**
 * The Automerge actor id of one incarnation of a node: the node id's UTF-8 bytes followed by the
 * incarnation as a 4-byte big-endian integer, in hex. The incarnation is bumped and stored at every
 * start, so a node that crashed before persisting its last changes can never emit a second,
 * different change under an (actor, seq) it already used.
 */
export function actorIdFor(nodeId: string, incarnation: number): string {
  const node = Buffer.from(nodeId, 'utf8');
  if (node.length === 0 || node.length > MAX_NODE_ID_BYTES) {
    throw new RegistryDocError('invalid_actor', `node id must be 1..${MAX_NODE_ID_BYTES} UTF-8 bytes`);
  }
  if (!Number.isInteger(incarnation) || incarnation < 0 || incarnation > 0xffffffff) {
    throw new RegistryDocError(
      'invalid_actor',
      `incarnation must be an integer in 0..2^32-1: ${incarnation}`,
    );
  }
  return node.toString('hex') + incarnation.toString(16).padStart(INCARNATION_BYTES * 2, '0');
}

/** Inverse of `actorIdFor`; `undefined` for actor ids this module did not mint. */
export function parseActorId(actor: string): { nodeId: string; incarnation: number } | undefined {
  if (!isHex(actor) || actor.length <= INCARNATION_BYTES * 2) return undefined;
  const split = actor.length - INCARNATION_BYTES * 2;
  return {
    nodeId: Buffer.from(actor.slice(0, split), 'hex').toString('utf8'),
    incarnation: Number.parseInt(actor.slice(split), 16),
  };
}

function isHex(s: string): boolean {
  return s.length > 0 && s.length % 2 === 0 && /^[0-9a-f]+$/.test(s);
}

/**
 * The change that creates the four root maps, byte-identical on every peer (fixed actor, no
 * timestamp), so every document shares it as its first change and the maps have one identity.
 */
const GENESIS_ACTOR = '00'.repeat(16);
let genesisBytes: Uint8Array | undefined;
function genesis(): Uint8Array {
  if (!genesisBytes) {
    const doc = Automerge.change(
      Automerge.init<RootShape>({ actor: GENESIS_ACTOR }),
      { time: undefined },
      (d) => {
        d.workers = {};
        d.removed = {};
        d.policies = {};
        d.config = {};
      },
    );
    const [change] = Automerge.getAllChanges(doc);
    genesisBytes = change;
  }
  return genesisBytes;
}

function genesisHash(): string {
  return Automerge.decodeChange(genesis()).hash;
}

export class RegistryDoc {
  private doc: Doc;
  private readonly syncStates = new Map<string, SyncState>();
  private readonly listeners: RegistryDocListener[] = [];
  private readonly now: () => number;

  /** raw stored text per live worker / policy / config key: the change detector of the views */
  private readonly rawWorkers = new Map<string, string>();
  private rawPolicies = new Map<string, string>();
  private rawConfig = new Map<string, string>();
  private workerView: ReadonlyMap<string, WorkerSpec> = new Map();
  private policyView: ReadonlyMap<string, ModelPolicy> = new Map();
  private configView: ReadonlyMap<string, string> = new Map();
  private removedIds: ReadonlySet<string> = new Set();
  /** worker entries whose stored text does not parse */
  private readonly invalidWorkers = new Set<string>();
  /** policy and config entries whose stored value does not parse */
  private invalidOther = 0;
  private viewHeads = '';

  private constructor(doc: Doc, opts: RegistryDocOptions) {
    this.doc = doc;
    this.now = opts.now ?? Date.now;
    this.refresh();
  }

  /** a fresh document for `actorHex` (see `actorIdFor`) */
  static create(actorHex: string, opts: RegistryDocOptions = {}): RegistryDoc {
    checkActor(actorHex);
    const [doc] = Automerge.applyChanges(Automerge.init<RootShape>({ actor: actorHex }), [genesis()]);
    return new RegistryDoc(doc, opts);
  }

  /**
   * Restores a document from the store: the last snapshot (if any) and the changes appended since,
   * in any order. Corrupt or foreign data throws a RegistryDocError, never an empty registry.
   */
  static load(
    actorHex: string,
    snapshot?: Uint8Array,
    changes: Uint8Array[] = [],
    opts: RegistryDocOptions = {},
  ): RegistryDoc {
    checkActor(actorHex);
    let doc: Doc;
    if (snapshot && snapshot.length > 0) {
      try {
        doc = Automerge.load<RootShape>(snapshot, { actor: actorHex });
      } catch (err) {
        throw new RegistryDocError('corrupt_snapshot', `registry snapshot does not load: ${errText(err)}`, {
          cause: err,
        });
      }
      if (!Automerge.hasHeads(doc, [genesisHash()]) || !hasRootMaps(doc)) {
        throw new RegistryDocError(
          'foreign_document',
          'snapshot is not a registry document (it lacks the registry genesis)',
        );
      }
    } else {
      [doc] = Automerge.applyChanges(Automerge.init<RootShape>({ actor: actorHex }), [genesis()]);
    }
    if (changes.length > 0) {
      validateChanges(changes);
      try {
        [doc] = Automerge.applyChanges(doc, changes);
      } catch (err) {
        throw new RegistryDocError('malformed_change', `stored registry changes rejected: ${errText(err)}`, {
          cause: err,
        });
      }
    }
    return new RegistryDoc(doc, opts);
  }

  get actorId(): string {
    return Automerge.getActorId(this.doc);
  }

  // ---- local writes: each returns the new change bytes for the store and the outbox ----

  upsertWorker(id: string, spec: WorkerSpec): Uint8Array[] {
    return this.upsertWorkers([[id, spec]]);
  }

  /**
   * Several upserts in few changes (a registration burst: one Automerge change per ~32 KiB of specs
   * instead of one per worker, each of which costs a copy of the whole `workers` map). Each change
   * stays small enough to be gossiped as one message. All or nothing: one invalid entry throws
   * before anything is written.
   */
  upsertWorkers(entries: readonly (readonly [string, WorkerSpec])[]): Uint8Array[] {
    const texts: [string, string][] = [];
    for (const [id, spec] of entries) {
      const text = this.workerText(id, spec);
      if (this.doc.workers[id]?.toString() !== text) texts.push([id, text]);
    }
    const changes: Uint8Array[] = [];
    for (let i = 0; i < texts.length;) {
      const part: [string, string][] = [];
      for (let bytes = 0; i < texts.length; i++) {
        const size = Buffer.byteLength(texts[i][1]);
        if (part.length > 0 && bytes + size > MAX_BATCH_SPEC_BYTES) break;
        part.push(texts[i]);
        bytes += size;
      }
      changes.push(
        ...this.write((d) => {
          for (const [id, text] of part) d.workers[id] = new Automerge.ImmutableString(text);
        }),
      );
    }
    return changes;
  }

  /** the stored text of a worker's spec; throws when the id is removed or the spec unusable */
  private workerText(id: string, spec: WorkerSpec): string {
    checkKey('worker id', id);
    if (this.removedIds.has(id) || this.doc.removed[id] === true) {
      throw new RegistryDocError('worker_removed', `worker ${id} was removed; register it under a new id`);
    }
    const text = JSON.stringify(spec);
    // what the views would skip on every peer must not enter the replicated history
    if (!parseSpec(text))
      throw new RegistryDocError('invalid_argument', 'worker spec needs a url and a models list');
    return text;
  }

  removeWorker(id: string): Uint8Array[] {
    checkKey('worker id', id);
    if (this.doc.removed[id] === true) return [];
    return this.write((d) => {
      d.removed[id] = true;
      // the tombstone decides; dropping the spec only keeps the snapshot's live state small
      if (d.workers[id] !== undefined) delete d.workers[id];
    });
  }

  setPolicy(model: string, policy: string, params?: Record<string, PolicyParam>): Uint8Array[] {
    checkKey('model', model);
    if (typeof policy !== 'string' || policy.length === 0) {
      throw new RegistryDocError('invalid_argument', 'policy must be a non-empty string');
    }
    const value: ModelPolicy = params
      ? { policy, params: { ...params }, updatedAt: this.now() }
      : { policy, updatedAt: this.now() };
    const text = JSON.stringify(value);
    return this.write((d) => {
      d.policies[model] = new Automerge.ImmutableString(text);
    });
  }

  setConfig(key: string, value: string): Uint8Array[] {
    checkKey('config key', key);
    if (typeof value !== 'string')
      throw new RegistryDocError('invalid_argument', 'config value must be a string');
    if (this.doc.config[key]?.toString() === value) return [];
    return this.write((d) => {
      d.config[key] = new Automerge.ImmutableString(value);
    });
  }

  deleteConfig(key: string): Uint8Array[] {
    checkKey('config key', key);
    if (this.doc.config[key] === undefined) return [];
    return this.write((d) => {
      delete d.config[key];
    });
  }

  // ---- remote input ----

  /**
   * Applies change bytes from gossip or the store, in any order and with duplicates. Changes whose
   * dependencies are missing wait inside Automerge until those arrive (or sync repairs them).
   * Malformed bytes throw RegistryDocError('malformed_change') and leave the document as it was.
   */
  applyChanges(changes: Uint8Array[]): { changed: boolean } {
    if (changes.length === 0) return { changed: false };
    validateChanges(changes);
    const before = Automerge.getHeads(this.doc);
    try {
      [this.doc] = Automerge.applyChanges(this.doc, changes);
    } catch (err) {
      this.recover();
      throw new RegistryDocError('malformed_change', `registry changes rejected: ${errText(err)}`, {
        cause: err,
      });
    }
    return { changed: this.refresh(before) };
  }

  /** the sync state kept for `peerId` (created on first use) */
  syncStateFor(peerId: string): SyncState {
    let state = this.syncStates.get(peerId);
    if (!state) {
      state = Automerge.initSyncState();
      this.syncStates.set(peerId, state);
    }
    return state;
  }

  /** the next sync message for `peerId`, or null when that peer has everything we know it lacks */
  generateSyncMessage(peerId: string): Uint8Array | null {
    const [state, msg] = Automerge.generateSyncMessage(this.doc, this.syncStateFor(peerId));
    this.syncStates.set(peerId, state);
    return msg;
  }

  /** a message from `peerId`; a bad one throws RegistryDocError('malformed_sync_message'), doc intact */
  receiveSyncMessage(peerId: string, msg: Uint8Array): { changed: boolean } {
    try {
      const decoded = Automerge.decodeSyncMessage(msg);
      for (const c of decoded.changes) verifyChunks(c, SYNC_CHUNK_TYPES);
    } catch (err) {
      throw new RegistryDocError('malformed_sync_message', `sync message from ${peerId}: ${errText(err)}`, {
        cause: err,
      });
    }
    const before = this.syncStateFor(peerId);
    const heads = Automerge.getHeads(this.doc);
    try {
      const [doc, state] = Automerge.receiveSyncMessage(this.doc, before, msg);
      this.doc = doc;
      this.syncStates.set(peerId, state);
    } catch (err) {
      this.recover();
      // the peer's view of us is now unknown: start its session over
      this.syncStates.delete(peerId);
      throw new RegistryDocError('malformed_sync_message', `sync message from ${peerId}: ${errText(err)}`, {
        cause: err,
      });
    }
    return { changed: this.refresh(heads) };
  }

  /** drops the sync session of a peer that left (a rejoin starts a new one) */
  forgetPeer(peerId: string): void {
    this.syncStates.delete(peerId);
  }

  // ---- persistence ----

  /** a compact snapshot of the whole document (history included) */
  save(): Uint8Array {
    return Automerge.save(this.doc);
  }

  heads(): string[] {
    return Automerge.getHeads(this.doc);
  }

  /** changes not reachable from `heads`; every change when `heads` names unknown changes */
  getChangesSince(heads: string[]): Uint8Array[] {
    if (!Automerge.hasHeads(this.doc, heads)) return Automerge.getAllChanges(this.doc);
    return Automerge.getChangesSince(this.doc, heads);
  }

  // ---- views: plain maps, replaced (never mutated) when the document changes ----

  workers(): ReadonlyMap<string, WorkerSpec> {
    return this.workerView;
  }

  /** every tombstoned id */
  removed(): ReadonlySet<string> {
    return this.removedIds;
  }

  isRemoved(id: string): boolean {
    return this.removedIds.has(id);
  }

  policies(): ReadonlyMap<string, ModelPolicy> {
    return this.policyView;
  }

  config(): ReadonlyMap<string, string> {
    return this.configView;
  }

  /** entries skipped because their stored value does not parse (written by a foreign or newer peer) */
  invalidEntries(): number {
    return this.invalidWorkers.size + this.invalidOther;
  }

  onChange(listener: RegistryDocListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  private write(fn: (d: RootShape) => void): Uint8Array[] {
    const before = Automerge.getHeads(this.doc);
    this.doc = Automerge.change(this.doc, { time: undefined }, fn);
    const changes = Automerge.getChangesSince(this.doc, before);
    this.refresh(before);
    return changes;
  }

  /**
   * Automerge may have moved its internal state before throwing (a batch applied in part); reload
   * from what it holds so the materialised document and the backend agree again. Every change in
   * there passed Automerge's own checks, so this keeps only valid history.
   */
  private recover(): void {
    const actor = Automerge.getActorId(this.doc);
    try {
      this.doc = Automerge.load<RootShape>(Automerge.save(this.doc), { actor });
    } catch (err) {
      throw new RegistryDocError('corrupt_document', `registry document no longer reloads: ${errText(err)}`, {
        cause: err,
      });
    }
    this.refresh();
  }

  /**
   * Brings the views up to date if the heads moved (and tells the listeners what changed); returns
   * whether they moved. With `before` (the heads the views reflect), only the keys the change
   * touched are re-read; otherwise (start, recovery) the whole document.
   */
  private refresh(before?: string[]): boolean {
    const heads = Automerge.getHeads(this.doc);
    const headsKey = heads.join(',');
    if (headsKey === this.viewHeads) return false;
    const touched =
      before !== undefined && before.join(',') === this.viewHeads
        ? touchedKeys(Automerge.diff(this.doc, before, heads))
        : undefined;
    this.viewHeads = headsKey;
    const root = this.doc;

    let removedIds = this.removedIds;
    let ids: Iterable<string>;
    if (touched) {
      if (touched.removed.size > 0) {
        const next = new Set(removedIds);
        for (const id of touched.removed) {
          if (root.removed?.[id] === true) next.add(id);
          else next.delete(id);
        }
        removedIds = next;
      }
      ids = new Set([...touched.workers, ...touched.removed]);
    } else {
      const all = new Set<string>();
      for (const [id, v] of Object.entries(root.removed ?? {})) if (v === true) all.add(id);
      removedIds = all;
      ids = new Set([...Object.keys(root.workers ?? {}), ...this.workerView.keys(), ...this.invalidWorkers]);
    }

    // the worker view is copied (the maps handed out are never mutated); the raw texts and the
    // invalid ids are private and updated in place
    const rawWorkers = this.rawWorkers;
    const workerView = new Map(this.workerView);
    const invalidWorkers = this.invalidWorkers;
    const upserted: string[] = [];
    const removed: string[] = [];
    for (const id of ids) {
      const had = workerView.has(id);
      const prevText = rawWorkers.get(id);
      rawWorkers.delete(id);
      workerView.delete(id);
      invalidWorkers.delete(id);
      const v = removedIds.has(id) ? undefined : root.workers?.[id];
      if (v !== undefined) {
        const text = scalarText(v);
        const spec =
          text === undefined ? undefined : prevText === text ? this.workerView.get(id) : parseSpec(text);
        if (spec && text !== undefined) {
          rawWorkers.set(id, text);
          workerView.set(id, spec);
          if (prevText !== text) upserted.push(id);
          continue;
        }
        invalidWorkers.add(id);
      }
      // ids that left the view some other way than a tombstone
      if (had && !removedIds.has(id)) removed.push(id);
    }
    // newly tombstoned ids (seen here or not: the Replica drops their cache and load entries too)
    for (const id of touched ? touched.removed : removedIds)
      if (removedIds.has(id) && !this.removedIds.has(id)) removed.push(id);

    let policiesChanged = false;
    let configChanged = false;
    if (!touched || touched.other) {
      let invalid = 0;
      const rawPolicies = new Map<string, string>();
      const policyView = new Map<string, ModelPolicy>();
      for (const [model, v] of Object.entries(root.policies ?? {})) {
        const text = scalarText(v);
        const policy =
          text === undefined
            ? undefined
            : this.rawPolicies.get(model) === text
              ? this.policyView.get(model)
              : parsePolicy(text);
        if (!policy || text === undefined) {
          invalid++;
          continue;
        }
        rawPolicies.set(model, text);
        policyView.set(model, policy);
      }

      const rawConfig = new Map<string, string>();
      for (const [key, v] of Object.entries(root.config ?? {})) {
        const text = scalarText(v);
        if (text === undefined) {
          invalid++;
          continue;
        }
        rawConfig.set(key, text);
      }

      policiesChanged = !sameEntries(this.rawPolicies, rawPolicies);
      configChanged = !sameEntries(this.rawConfig, rawConfig);
      this.invalidOther = invalid;
      if (policiesChanged) {
        this.rawPolicies = rawPolicies;
        this.policyView = policyView;
      }
      if (configChanged) {
        this.rawConfig = rawConfig;
        this.configView = new Map(rawConfig);
      }
    }

    this.workerView = workerView;
    this.removedIds = removedIds;

    if (upserted.length > 0 || removed.length > 0 || policiesChanged || configChanged) {
      upserted.sort();
      removed.sort();
      for (const l of [...this.listeners]) l({ upserted, removed, policiesChanged, configChanged });
    }
    return true;
  }
}

/**
 * The keys of `workers` and `removed` a change touched, and whether it touched `policies` or
 * `config`; undefined when it touched the root maps themselves (then the whole document is read).
 */
function touchedKeys(
  patches: Automerge.Patch[],
): { workers: Set<string>; removed: Set<string>; other: boolean } | undefined {
  const out = { workers: new Set<string>(), removed: new Set<string>(), other: false };
  for (const p of patches) {
    const [map, key] = p.path;
    if (typeof key !== 'string') return undefined;
    if (map === 'workers') out.workers.add(key);
    else if (map === 'removed') out.removed.add(key);
    else if (map === 'policies' || map === 'config') out.other = true;
    else return undefined;
  }
  return out;
}

function checkActor(actorHex: string): void {
  if (!isHex(actorHex) || actorHex === GENESIS_ACTOR) {
    throw new RegistryDocError(
      'invalid_actor',
      `actor id must be lower-case hex of even length: ${actorHex}`,
    );
  }
}

function checkKey(what: string, key: string): void {
  if (typeof key !== 'string' || key.length === 0) {
    throw new RegistryDocError('invalid_argument', `${what} must be a non-empty string`);
  }
}

/** parses every change before any reaches Automerge, so a bad batch is refused as a whole */
function validateChanges(changes: Uint8Array[]): void {
  for (let i = 0; i < changes.length; i++) {
    const c = changes[i];
    if (!(c instanceof Uint8Array))
      throw new RegistryDocError('malformed_change', `change ${i} is not bytes`);
    try {
      verifyChunks(c, CHANGE_CHUNK_TYPES);
      Automerge.decodeChange(c);
    } catch (err) {
      throw new RegistryDocError('malformed_change', `change ${i} does not decode: ${errText(err)}`, {
        cause: err,
      });
    }
  }
}

/**
 * Automerge's binary chunks are `magic(4) checksum(4) type(1) uleb128 length, contents`, the
 * checksum being the first 4 bytes of SHA-256 over type, length and contents. Automerge checks it
 * when loading a document but not when applying a change, and a change corrupted in transit can
 * make it panic or, worse, accept a change that makes every later `save()` unloadable (measured on
 * 3.5.0: about half of all single-byte corruptions of a change were accepted). So every chunk is
 * checked here first. Type 2 (deflated change) is checksummed over its inflated form: left to
 * Automerge (it never appears in `getChanges` output or sync messages in practice).
 */
const MAGIC = [0x85, 0x6f, 0x4a, 0x83];
const CHANGE_CHUNK_TYPES: ReadonlySet<number> = new Set([1, 2]);
/** sync messages carry changes, or a whole document chunk for a peer that has nothing */
const SYNC_CHUNK_TYPES: ReadonlySet<number> = new Set([0, 1, 2]);

function verifyChunks(bytes: Uint8Array, types: ReadonlySet<number>): void {
  let off = 0;
  if (bytes.length === 0) throw new Error('empty chunk');
  while (off < bytes.length) {
    if (bytes.length - off < 10) throw new Error('truncated chunk header');
    for (let i = 0; i < 4; i++) if (bytes[off + i] !== MAGIC[i]) throw new Error('bad magic bytes');
    const type = bytes[off + 8];
    if (!types.has(type)) throw new Error(`unexpected chunk type ${type}`);
    let pos = off + 9;
    let len = 0;
    for (let shift = 0; ; shift += 7) {
      if (pos >= bytes.length || shift > 28) throw new Error('bad chunk length');
      const b = bytes[pos++];
      len += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) break;
    }
    const end = pos + len;
    if (end > bytes.length) throw new Error('truncated chunk');
    if (type !== 2) {
      const digest = createHash('sha256')
        .update(bytes.subarray(off + 8, end))
        .digest();
      for (let i = 0; i < 4; i++) if (digest[i] !== bytes[off + 4 + i]) throw new Error('bad chunk checksum');
    }
    off = end;
  }
}

function hasRootMaps(doc: Doc): boolean {
  const isMap = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v);
  return isMap(doc.workers) && isMap(doc.removed) && isMap(doc.policies) && isMap(doc.config);
}

function scalarText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Automerge.isImmutableString(v)) return (v as Automerge.ImmutableString).val;
  return undefined;
}

function parseSpec(text: string): WorkerSpec | undefined {
  const v = parseJson(text);
  if (!isRecord(v) || typeof v.url !== 'string' || !Array.isArray(v.models)) return undefined;
  if (!v.models.every((m) => typeof m === 'string')) return undefined;
  return deepFreeze(v) as unknown as WorkerSpec;
}

function parsePolicy(text: string): ModelPolicy | undefined {
  const v = parseJson(text);
  if (!isRecord(v) || typeof v.policy !== 'string' || typeof v.updatedAt !== 'number') return undefined;
  if (v.params !== undefined) {
    if (!isRecord(v.params)) return undefined;
    for (const p of Object.values(v.params)) {
      if (typeof p !== 'number' && typeof p !== 'string' && typeof p !== 'boolean') return undefined;
    }
  }
  return deepFreeze(v) as unknown as ModelPolicy;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** views are shared with every reader: freezing turns an accidental write into an error */
function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const child of Object.values(v)) deepFreeze(child);
  }
  return v;
}

function sameEntries(a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
