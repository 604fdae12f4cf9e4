/**
 * Wire format of the soft-state topics (cache deltas, load snapshots, rate-limit slots, health
 * observations and suspect hints). One message per flush of one topic:
 *
 *   message = version:u8(1) kind:u8 origin:str seq:f64 sentAt:f64 body
 *   str     = len:uvarint utf8[len]            (≤ MAX_STRING_BYTES)
 *   id      = 0x01 uuid:byte[16] | 0x00 str    (worker ids are UUIDs: 17 bytes instead of 37)
 *   hash    = u24 (high bits) u32 (low bits)   (block hashes are < 2^53)
 *
 *   cache     = ids:uvarint id* models:uvarint str* n:uvarint
 *               (model:uvarint worker:uvarint countAndAnchor:uvarint [anchor:hash] hash{count}
 *                seenSecs:u32){n}
 *               countAndAnchor = count·2 + (1 if an anchor follows); seen travels in whole seconds
 *               (the index keeps seconds) and is rebuilt as a packed HLC (secs · 1000 · 1024)
 *   load      = ttlMs:f64 n:uvarint (worker:id inflight:uvarint){n}
 *   ratelimit = n:uvarint (key:str window:f64 windowMs:f64 requests:f64 tokens:f64){n}
 *   health    = n:uvarint (0x00 worker:id status:u8 wall:f64 counter:uvarint | 0x01 worker:id){n}
 *
 * `seq` makes every message of an origin distinct (gossipsub deduplicates identical bodies) and
 * orders load snapshots; `sentAt` (origin's wall clock, ms) feeds the event-lag metric.
 * Decoding validates every field and throws SoftStateCodecError: a hostile or truncated message
 * never reaches the replica.
 *
 * Owns: bytes ⇄ plain objects. Never: merge rules, I/O.
 */
import type { Hlc } from '../src/state/hlc.js';
import type { WorkerStatus } from '../src/state/worker.js';

export class SoftStateCodecError extends Error {}

export const SOFT_STATE_VERSION = 1;
export const MAX_STRING_BYTES = 1024;
const MAX_HASH = 2 ** 53;
/** a packed HLC per second (ms · 1024) */
const SEEN_PER_SEC = 1000 * 1024;

export enum SoftKind {
  Cache = 1,
  Load = 2,
  RateLimit = 3,
  Health = 4,
}

export interface SoftHeader {
  kind: SoftKind;
  origin: string;
  seq: number;
  sentAt: number;
}

export interface CacheDelta {
  model: string;
  worker: string;
  anchor: number;
  hashes: number[];
  seen: number;
}

export interface LoadBody {
  ttlMs: number;
  inflight: Record<string, number>;
}

export interface SlotBody {
  key: string;
  window: number;
  windowMs: number;
  requests: number;
  tokens: number;
}

export type HealthItem =
  | { type: 'observation'; worker: string; status: WorkerStatus; hlc: Hlc }
  | { type: 'suspect'; worker: string };

const STATUSES: readonly WorkerStatus[] = ['pending', 'ready', 'not_ready', 'failed', 'draining'];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

class Writer {
  private buf = Buffer.allocUnsafe(256);
  private pos = 0;

  private need(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): void {
    this.need(1);
    this.buf[this.pos++] = v;
  }

  u32(v: number): void {
    this.need(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
  }

  f64(v: number): void {
    this.need(8);
    this.buf.writeDoubleBE(v, this.pos);
    this.pos += 8;
  }

  varint(v: number): void {
    this.need(8);
    let n = v;
    while (n >= 0x80) {
      this.buf[this.pos++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
  }

  str(s: string): void {
    const len = Buffer.byteLength(s);
    if (len > MAX_STRING_BYTES)
      throw new SoftStateCodecError(`string of ${len} bytes exceeds ${MAX_STRING_BYTES}`);
    this.varint(len);
    this.need(len);
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }

  id(s: string): void {
    if (s.length === 36 && UUID_RE.test(s)) {
      this.u8(1);
      this.need(16);
      this.pos += this.buf.write(s.replaceAll('-', ''), this.pos, 'hex');
    } else {
      this.u8(0);
      this.str(s);
    }
  }

  hash(h: number): void {
    this.need(7);
    const hi = Math.floor(h / 2 ** 32);
    this.buf.writeUIntBE(hi, this.pos, 3);
    this.buf.writeUInt32BE(h >>> 0, this.pos + 3);
    this.pos += 7;
  }

  get length(): number {
    return this.pos;
  }

  bytes(): Uint8Array {
    return new Uint8Array(this.buf.buffer, this.buf.byteOffset, this.pos);
  }
}

class Reader {
  private pos = 0;
  private readonly buf: Buffer;

  constructor(bytes: Uint8Array) {
    this.buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw new SoftStateCodecError('truncated message');
  }

  /** at least `n` more bytes (checked before allocating for a declared count) */
  ensure(n: number): void {
    this.need(n);
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }

  f64(): number {
    this.need(8);
    const v = this.buf.readDoubleBE(this.pos);
    this.pos += 8;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** a finite number ≥ 0 */
  nonNegative(what: string): number {
    const v = this.f64();
    if (!(v >= 0) || !Number.isFinite(v))
      throw new SoftStateCodecError(`${what} must be a finite number ≥ 0`);
    return v;
  }

  varint(max = 2 ** 31): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 5; i++) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (v > max) throw new SoftStateCodecError(`count ${v} exceeds ${max}`);
        return v;
      }
      mul *= 128;
    }
    throw new SoftStateCodecError('varint too long');
  }

  /** a count of items each at least `minBytes` long: bounded by what is left */
  count(minBytes: number): number {
    return this.varint(Math.floor((this.buf.length - this.pos) / minBytes));
  }

  str(): string {
    const len = this.varint(MAX_STRING_BYTES);
    this.need(len);
    const s = this.buf.toString('utf8', this.pos, this.pos + len);
    this.pos += len;
    return s;
  }

  id(): string {
    const t = this.u8();
    if (t === 0) return this.str();
    if (t !== 1) throw new SoftStateCodecError(`unknown id type ${t}`);
    this.need(16);
    const h = this.buf.toString('hex', this.pos, this.pos + 16);
    this.pos += 16;
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  hash(): number {
    this.need(7);
    const h = this.buf.readUIntBE(this.pos, 3) * 2 ** 32 + this.buf.readUInt32BE(this.pos + 3);
    this.pos += 7;
    if (h >= MAX_HASH) throw new SoftStateCodecError('block hash out of range');
    return h;
  }

  end(): void {
    if (this.pos !== this.buf.length) throw new SoftStateCodecError('trailing bytes');
  }
}

function header(w: Writer, h: SoftHeader): void {
  w.u8(SOFT_STATE_VERSION);
  w.u8(h.kind);
  w.str(h.origin);
  w.f64(h.seq);
  w.f64(h.sentAt);
}

export function encodeCache(h: Omit<SoftHeader, 'kind'>, deltas: readonly CacheDelta[]): Uint8Array {
  const w = new Writer();
  header(w, { ...h, kind: SoftKind.Cache });
  const workers = new Map<string, number>();
  const models = new Map<string, number>();
  for (const d of deltas) {
    if (!workers.has(d.worker)) workers.set(d.worker, workers.size);
    if (!models.has(d.model)) models.set(d.model, models.size);
  }
  w.varint(workers.size);
  for (const id of workers.keys()) w.id(id);
  w.varint(models.size);
  for (const m of models.keys()) w.str(m);
  w.varint(deltas.length);
  for (const d of deltas) {
    w.varint(models.get(d.model) as number);
    w.varint(workers.get(d.worker) as number);
    const anchored = d.anchor > 0 ? 1 : 0;
    w.varint(d.hashes.length * 2 + anchored);
    if (anchored) w.hash(d.anchor);
    for (const x of d.hashes) w.hash(x);
    w.u32(Math.min(0xffffffff, Math.floor(d.seen / SEEN_PER_SEC)));
  }
  return w.bytes();
}

export function encodeLoad(h: Omit<SoftHeader, 'kind'>, body: LoadBody): Uint8Array {
  const w = new Writer();
  header(w, { ...h, kind: SoftKind.Load });
  w.f64(body.ttlMs);
  const entries = Object.entries(body.inflight);
  w.varint(entries.length);
  for (const [id, n] of entries) {
    w.id(id);
    w.varint(n);
  }
  return w.bytes();
}

export function encodeSlots(h: Omit<SoftHeader, 'kind'>, slots: readonly SlotBody[]): Uint8Array {
  const w = new Writer();
  header(w, { ...h, kind: SoftKind.RateLimit });
  w.varint(slots.length);
  for (const s of slots) {
    w.str(s.key);
    w.f64(s.window);
    w.f64(s.windowMs);
    w.f64(s.requests);
    w.f64(s.tokens);
  }
  return w.bytes();
}

export function encodeHealth(h: Omit<SoftHeader, 'kind'>, items: readonly HealthItem[]): Uint8Array {
  const w = new Writer();
  header(w, { ...h, kind: SoftKind.Health });
  w.varint(items.length);
  for (const it of items) {
    if (it.type === 'observation') {
      w.u8(0);
      w.id(it.worker);
      w.u8(STATUSES.indexOf(it.status));
      w.f64(it.hlc.wall);
      w.varint(it.hlc.counter);
    } else {
      w.u8(1);
      w.id(it.worker);
    }
  }
  return w.bytes();
}

export type SoftMessage =
  | (SoftHeader & { kind: SoftKind.Cache; deltas: CacheDelta[] })
  | (SoftHeader & { kind: SoftKind.Load; load: LoadBody })
  | (SoftHeader & { kind: SoftKind.RateLimit; slots: SlotBody[] })
  | (SoftHeader & { kind: SoftKind.Health; items: HealthItem[] });

/** one message, fully validated; throws SoftStateCodecError */
export function decodeSoftState(bytes: Uint8Array): SoftMessage {
  const r = new Reader(bytes);
  const version = r.u8();
  if (version !== SOFT_STATE_VERSION) throw new SoftStateCodecError(`unknown version ${version}`);
  const kind = r.u8();
  const origin = r.str();
  if (origin.length === 0) throw new SoftStateCodecError('empty origin');
  const seq = r.nonNegative('seq');
  const sentAt = r.nonNegative('sentAt');
  let msg: SoftMessage;
  switch (kind) {
    case SoftKind.Cache: {
      const workers: string[] = [];
      for (let i = r.count(2); i > 0; i--) workers.push(r.id());
      const models: string[] = [];
      for (let i = r.count(1); i > 0; i--) models.push(r.str());
      const deltas: CacheDelta[] = [];
      for (let i = r.count(7); i > 0; i--) {
        const model = models[r.varint()];
        const worker = workers[r.varint()];
        if (model === undefined || worker === undefined) throw new SoftStateCodecError('bad string index');
        const countAndAnchor = r.varint();
        const count = Math.floor(countAndAnchor / 2);
        const anchor = countAndAnchor % 2 === 1 ? r.hash() : 0;
        r.ensure(count * 7 + 4);
        const hashes: number[] = [];
        for (let j = count; j > 0; j--) hashes.push(r.hash());
        const seen = r.u32() * SEEN_PER_SEC;
        deltas.push({ model, worker, anchor, hashes, seen });
      }
      msg = { kind, origin, seq, sentAt, deltas };
      break;
    }
    case SoftKind.Load: {
      const ttlMs = r.nonNegative('ttlMs');
      const inflight: Record<string, number> = Object.create(null) as Record<string, number>;
      for (let i = r.count(2); i > 0; i--) {
        const id = r.id();
        inflight[id] = r.varint();
      }
      msg = { kind, origin, seq, sentAt, load: { ttlMs, inflight } };
      break;
    }
    case SoftKind.RateLimit: {
      const slots: SlotBody[] = [];
      for (let i = r.count(33); i > 0; i--) {
        const key = r.str();
        const window = r.f64();
        if (!Number.isSafeInteger(window)) throw new SoftStateCodecError('window must be an integer');
        const windowMs = r.nonNegative('windowMs');
        const requests = r.nonNegative('requests');
        const tokens = r.nonNegative('tokens');
        slots.push({ key, window, windowMs, requests, tokens });
      }
      msg = { kind, origin, seq, sentAt, slots };
      break;
    }
    case SoftKind.Health: {
      const items: HealthItem[] = [];
      for (let i = r.count(2); i > 0; i--) {
        const t = r.u8();
        const worker = r.id();
        if (t === 1) {
          items.push({ type: 'suspect', worker });
          continue;
        }
        if (t !== 0) throw new SoftStateCodecError(`unknown health item ${t}`);
        const status = STATUSES[r.u8()];
        if (status === undefined) throw new SoftStateCodecError('unknown worker status');
        const wall = r.nonNegative('hlc wall');
        const counter = r.varint(1023);
        items.push({ type: 'observation', worker, status, hlc: { wall, counter, node: origin } });
      }
      msg = { kind, origin, seq, sentAt, items };
      break;
    }
    default:
      throw new SoftStateCodecError(`unknown kind ${kind}`);
  }
  r.end();
  return msg;
}
