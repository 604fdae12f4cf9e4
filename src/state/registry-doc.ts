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
 * Secrets: a spec's `api_key` is never stored as it is. The stored text carries `api_key_sealed`
 * in its place (AES-256-GCM under a key derived from the cluster key, bound to the worker id; see
 * secret-sealer.ts), so neither the document, its history, a snapshot on disk nor a gossip or sync
 * message holds it in plaintext. The views open it again: readers see `api_key` as written. A node
 * that cannot open a value (sealed under a key it lacks) shows the spec without `api_key`, reports
 * it in `unreadableWorkerKeys()`, and keeps the sealed value when it rewrites that spec without a
 * key of its own (it cannot know what it would be removing). Plaintext keys written by older
 * versions still open; `resealWorkerKeys()` seals them, and re-seals values opened with a
 * non-primary key after a rotation (the old plaintext or old sealing stays in the history).
 *
 * Owns: the document, its per-peer sync states, the derived views. Never: I/O, timers, imports
 * from outside src/state.
 */
import { createHash } from 'node:crypto';
import * as Automerge from '@automerge/automerge';
import { processSealer, type SealFailure, type SecretSealer } from './secret-sealer.js';
import type { WorkerSpec } from './worker.js';

/** the stored field that replaces a spec's `api_key` */
export const SEALED_API_KEY_FIELD = 'api_key_sealed';

/** how a worker's key is held in the document, as seen by this node */
type KeyState =
  | { kind: 'sealed' }
  /** opened with a non-primary key: due for re-sealing */
  | { kind: 'rekey' }
  /** stored in plaintext by an older version: due for sealing */
  | { kind: 'plaintext' }
  /** this node cannot open it; `sealed` is kept when the spec is rewritten without a key */
  | { kind: 'unreadable'; reason: SealFailure; sealed: string | undefined };

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
  /** seals and opens worker keys; default: a random key per process (see secret-sealer.ts) */
  sealer?: SecretSealer;
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
  private sealer: SecretSealer;
  /** per live worker with a key: how its key is held */
  private readonly keyStates = new Map<string, KeyState>();

  /** raw stored text per live worker / policy / config key: the change detector of the views */
  private readonly rawWorkers = new Map<string, string>();
  private rawPolicies = new Map<string, string>();
  private rawConfig = new Map<string, string>();
  private workerView: ReadonlyMap<string, WorkerSpec> = new Map();
  private policyView: ReadonlyMap<string, ModelPolicy> = new Map();
  private configView: ReadonlyMap<string, string> = new Map();
  private removedIds: ReadonlySet<string> = new Set();
  /** worker entries whose stored text does not parse or fails the spec check */
  private readonly invalidWorkers = new Set<string>();
  /** policy and config entries whose stored value does not parse */
  private invalidOther = 0;
  private viewHeads = '';
  /** what a stored worker spec must pass to enter the views (see `setSpecCheck`) */
  private specCheck: WorkerSpecCheck = hasSpecShape;

  private constructor(doc: Doc, opts: RegistryDocOptions) {
    this.doc = doc;
    this.now = opts.now ?? Date.now;
    this.sealer = opts.sealer ?? processSealer();
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

  /**
   * Installs the full WorkerSpec validation (src/protocols, which this module must not import)
   * and re-reads every stored spec with it: a spec written by a peer that this node's API would
   * refuse is left out of the views and counted in `invalidEntries`, like an unparsable one. Call
   * it before anything reads the views; local writes are checked with it too.
   */
  setSpecCheck(check: WorkerSpecCheck): void {
    this.specCheck = check;
    this.rawWorkers.clear();
    this.workerView = new Map();
    this.viewHeads = '';
    this.refresh();
  }

  /**
   * Seals and opens worker keys with `sealer` from now on (a document restored from the store gets
   * the node's sealer before anything reads it); the views are rebuilt and listeners told what moved.
   */
  setSealer(sealer: SecretSealer): void {
    this.sealer = sealer;
    this.rawWorkers.clear();
    this.viewHeads = '';
    this.refresh();
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
      if (text !== undefined) texts.push([id, text]);
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

  /**
   * The text to store for a worker's spec, or undefined when readers would see no change; throws
   * when the id was removed or the spec does not pass validation.
   */
  private workerText(id: string, spec: WorkerSpec): string | undefined {
    checkKey('worker id', id);
    if (this.removedIds.has(id) || (Object.hasOwn(this.doc.removed, id) && this.doc.removed[id] === true)) {
      throw new RegistryDocError('worker_removed', `worker ${id} was removed; register it under a new id`);
    }
    const text = JSON.stringify(this.storedSpec(id, spec));
    // what the views would skip on every peer must not enter the replicated history
    // (checked as every peer reads it: the key opened, then the full spec check)
    const view = this.viewOf(id, text);
    if (!view) throw new RegistryDocError('invalid_argument', 'worker spec does not pass validation');
    // sealing is randomised: compare what readers see, and rewrite only to (re)seal a key
    const cur = this.workerView.get(id);
    const due = this.keyStates.get(id)?.kind;
    if (cur && due !== 'plaintext' && due !== 'rekey' && canonicalJson(cur) === canonicalJson(view.spec))
      return undefined;
    return text;
  }

  removeWorker(id: string): Uint8Array[] {
    checkKey('worker id', id);
    if (Object.hasOwn(this.doc.removed, id) && this.doc.removed[id] === true) return [];
    return this.write((d) => {
      d.removed[id] = true;
      // the tombstone decides; dropping the spec only keeps the snapshot's live state small
      if (Object.hasOwn(d.workers, id)) delete d.workers[id];
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
    if (ownScalar(this.doc.config, key) === value) return [];
    return this.write((d) => {
      d.config[key] = new Automerge.ImmutableString(value);
    });
  }

  /** sets (a string) or deletes (undefined) several config keys in one change */
  writeConfig(entries: ReadonlyMap<string, string | undefined>): Uint8Array[] {
    for (const [key, value] of entries) {
      checkKey('config key', key);
      if (value !== undefined && typeof value !== 'string')
        throw new RegistryDocError('invalid_argument', 'config value must be a string');
    }
    const moves = [...entries].filter(([key, value]) =>
      value === undefined ? this.doc.config[key] !== undefined : this.doc.config[key]?.toString() !== value,
    );
    if (moves.length === 0) return [];
    return this.write((d) => {
      for (const [key, value] of moves) {
        if (value === undefined) delete d.config[key];
        else d.config[key] = new Automerge.ImmutableString(value);
      }
    });
  }

  deleteConfig(key: string): Uint8Array[] {
    checkKey('config key', key);
    if (!Object.hasOwn(this.doc.config, key)) return [];
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

  /** live workers whose key this node cannot open, and why (their views have no `api_key`) */
  unreadableWorkerKeys(): ReadonlyMap<string, SealFailure> {
    const out = new Map<string, SealFailure>();
    for (const [id, st] of this.keyStates) if (st.kind === 'unreadable') out.set(id, st.reason);
    return out;
  }

  /** live workers whose key is stored in plaintext (older versions) or sealed under a non-primary key */
  workerKeysDue(): { plaintext: string[]; rekey: string[] } {
    const plaintext: string[] = [];
    const rekey: string[] = [];
    for (const [id, st] of this.keyStates) {
      if (st.kind === 'plaintext') plaintext.push(id);
      else if (st.kind === 'rekey') rekey.push(id);
    }
    return { plaintext: plaintext.sort(), rekey: rekey.sort() };
  }

  /**
   * Rewrites every spec of `workerKeysDue()` with its key sealed under the primary key. The views do
   * not move (readers see the same spec). Earlier values stay in the history.
   */
  resealWorkerKeys(): Uint8Array[] {
    const { plaintext, rekey } = this.workerKeysDue();
    const out: Uint8Array[] = [];
    for (const id of [...plaintext, ...rekey]) {
      const spec = this.workerView.get(id);
      if (spec && !this.removedIds.has(id)) out.push(...this.upsertWorker(id, spec));
    }
    return out;
  }

  /**
   * Entries skipped because their stored value does not parse or fails the spec check (written by a
   * foreign, newer or older peer); listeners are told whenever this count changes.
   */
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

  /** the spec as stored: `api_key` sealed in place, or the sealed value this node cannot open kept */
  private storedSpec(id: string, spec: WorkerSpec): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(spec)) {
      // a caller never supplies sealed text: it comes from this node's sealer only
      if (k === SEALED_API_KEY_FIELD || v === undefined) continue;
      if (k === 'api_key') {
        if (typeof v !== 'string') throw new RegistryDocError('invalid_argument', 'api_key must be a string');
        out[SEALED_API_KEY_FIELD] = this.sealer.seal(v, id);
      } else out[k] = v;
    }
    const st = this.keyStates.get(id);
    if (spec.api_key === undefined && st?.kind === 'unreadable' && st.sealed !== undefined)
      out[SEALED_API_KEY_FIELD] = st.sealed;
    return out;
  }

  /**
   * The view of a stored spec: the sealed key opened in place of `api_key`, and how it was held.
   * Undefined when the text is not a spec.
   */
  private viewOf(id: string, text: string): { spec: WorkerSpec; key: KeyState | undefined } | undefined {
    const rec = parseSpecRecord(text);
    if (!rec) return undefined;
    const hasSealed = Object.hasOwn(rec, SEALED_API_KEY_FIELD);
    let key: KeyState | undefined;
    const view: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(rec)) {
      if (k === SEALED_API_KEY_FIELD) {
        const opened = typeof v === 'string' ? this.sealer.open(v, id) : { error: 'malformed' as const };
        if ('error' in opened) {
          key = { kind: 'unreadable', reason: opened.error, sealed: typeof v === 'string' ? v : undefined };
        } else {
          view.api_key = opened.value;
          key = { kind: opened.primary ? 'sealed' : 'rekey' };
        }
      } else if (k === 'api_key') {
        // a plaintext key from an older version; a sealed one beside it wins
        if (hasSealed) continue;
        view.api_key = v;
        key = { kind: 'plaintext' };
      } else view[k] = v;
    }
    // the full check sees the spec as readers do: the key opened, never the sealed text
    const checked = this.specCheck(view);
    return checked === undefined ? undefined : { spec: deepFreeze(checked), key };
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
   * touched are re-read; otherwise (start, recovery, a new spec check or sealer) the whole document.
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
    const workersMap: Record<string, unknown> = root.workers ?? {};
    const removedMap: Record<string, unknown> = root.removed ?? {};

    let removedIds = this.removedIds;
    let ids: Iterable<string>;
    if (touched) {
      if (touched.removed.size > 0) {
        const next = new Set(removedIds);
        for (const id of touched.removed) {
          if (Object.hasOwn(removedMap, id) && removedMap[id] === true) next.add(id);
          else next.delete(id);
        }
        removedIds = next;
      }
      ids = new Set([...touched.workers, ...touched.removed]);
    } else {
      const all = new Set<string>();
      for (const [id, v] of Object.entries(removedMap)) if (v === true) all.add(id);
      removedIds = all;
      ids = new Set([
        ...Object.keys(workersMap),
        ...this.workerView.keys(),
        ...this.invalidWorkers,
        ...this.keyStates.keys(),
      ]);
    }

    // the worker view is copied (the maps handed out are never mutated); the raw texts, key states
    // and invalid ids are private and updated in place
    const invalidBefore = this.invalidWorkers.size + this.invalidOther;
    const workerView = new Map(this.workerView);
    const upserted: string[] = [];
    const removed: string[] = [];
    for (const id of ids) {
      const prev = this.workerView.get(id);
      const prevText = this.rawWorkers.get(id);
      const prevKey = this.keyStates.get(id);
      this.rawWorkers.delete(id);
      this.keyStates.delete(id);
      this.invalidWorkers.delete(id);
      workerView.delete(id);
      const text =
        removedIds.has(id) || !Object.hasOwn(workersMap, id) ? undefined : scalarText(workersMap[id]);
      if (text !== undefined && prevText === text && prev) {
        this.rawWorkers.set(id, text);
        workerView.set(id, prev);
        if (prevKey) this.keyStates.set(id, prevKey);
        continue;
      }
      const view = text === undefined ? undefined : this.viewOf(id, text);
      if (view && text !== undefined) {
        this.rawWorkers.set(id, text);
        if (view.key) this.keyStates.set(id, view.key);
        // a key sealed again (another nonce or key) is no change for readers: keep their object
        if (prev && canonicalJson(prev) === canonicalJson(view.spec)) workerView.set(id, prev);
        else {
          workerView.set(id, view.spec);
          upserted.push(id);
        }
        continue;
      }
      // stored but unusable: left out of the views and counted
      if (!removedIds.has(id) && Object.hasOwn(workersMap, id)) this.invalidWorkers.add(id);
      // ids that left the view some other way than a tombstone
      if (prev && !removedIds.has(id)) removed.push(id);
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
    // a new entry left out changes no view, but listeners still hear of it (to count and report it)
    const invalidChanged = this.invalidWorkers.size + this.invalidOther !== invalidBefore;

    if (upserted.length > 0 || removed.length > 0 || policiesChanged || configChanged || invalidChanged) {
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
  // Automerge refuses it as a map key (and a plain object would take it for its prototype)
  if (key === '__proto__') throw new RegistryDocError('invalid_argument', `${what} may not be "__proto__"`);
}

/** the scalar text stored under `key` in a document map, never an inherited Object member */
function ownScalar(map: Record<string, unknown>, key: string): string | undefined {
  return Object.hasOwn(map, key) ? scalarText(map[key]) : undefined;
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

/**
 * Checks a parsed worker spec and returns the spec the views hold (the same object or a normalised
 * copy), or undefined to leave it out. Must not throw.
 */
export type WorkerSpecCheck = (spec: unknown) => WorkerSpec | undefined;

/** the check used until `setSpecCheck`: the shape the registry's views rely on */
function hasSpecShape(v: unknown): WorkerSpec | undefined {
  if (!isRecord(v) || typeof v.url !== 'string' || !Array.isArray(v.models)) return undefined;
  if (!v.models.every((m) => typeof m === 'string')) return undefined;
  return v as unknown as WorkerSpec;
}

function parseSpecRecord(text: string): Record<string, unknown> | undefined {
  const v = parseJson(text);
  return hasSpecShape(v) === undefined ? undefined : (v as Record<string, unknown>);
}

/** JSON with object keys sorted: equal for equal values whatever the order their keys were set in */
function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, val: unknown) =>
    isRecord(val)
      ? Object.fromEntries(Object.entries(val).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : val,
  );
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

/**
 * Views are shared with every reader: freezing turns an accidental write into an error. Iterative,
 * so a value nested however deeply by a peer cannot overflow the stack here.
 */
function deepFreeze<T>(v: T): T {
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x !== 'object' || x === null || Object.isFrozen(x)) continue;
    Object.freeze(x);
    for (const child of Object.values(x)) stack.push(child);
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
