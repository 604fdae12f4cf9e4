/**
 * Replay protection for SWIM packets: the envelope every packet carries inside its authenticated
 * plaintext, and the guard that accepts each (sender, seq) once and only while it is fresh.
 *
 * Envelope (20 bytes, big-endian), then the SWIM payload:
 *   ts      u64  sender's wall clock, ms since the Unix epoch
 *   sender  8 B  random id of the sending transport, new on every start
 *   seq     u32  per-sender counter, +1 per packet (wraps; see below)
 *
 * Clock-skew assumption: members' wall clocks agree within `windowMs` (default 30 s; NTP gives
 * milliseconds). A packet stamped more than `windowMs` before or after the receiver's clock is
 * refused, so a captured packet is useless after `windowMs`; inside the window the guard remembers
 * every (sender, seq) it accepted and refuses it again. A member whose clock is off by more than the
 * window cannot talk to the cluster (its packets are dropped as `replay`, and counted).
 *
 * The guard only sees packets that already passed authentication, so only members holding the key
 * can fill its memory. It is bounded anyway (`capacity`): when it must forget an entry that is still
 * inside the window, it raises a floor and refuses every packet stamped at or before the forgotten
 * one, so forgetting never re-opens a replay. The floor starts at the guard's creation time: packets
 * captured before a receiver (re)started cannot be replayed to it.
 *
 * A 32-bit seq wraps after 2^32 packets, which at any realistic rate takes far longer than the
 * window; the pair (sender, seq) is therefore unique for as long as the guard has to remember it.
 * Never does I/O; the clock is injected.
 */

export const ENVELOPE_BYTES = 20;
export const SENDER_ID_BYTES = 8;
export const DEFAULT_REPLAY_WINDOW_MS = 30_000;
export const DEFAULT_REPLAY_CAPACITY = 65_536;

const TWO_POW_32 = 0x1_0000_0000;
/** the high word of the largest safe integer */
const MAX_TS_HIGH = Math.floor(Number.MAX_SAFE_INTEGER / TWO_POW_32);

export interface Envelope {
  /** sender's wall clock, ms */
  ts: number;
  /** SENDER_ID_BYTES bytes */
  sender: Buffer;
  /** u32 */
  seq: number;
  payload: Buffer;
}

/** envelope ‖ payload in one buffer, ready to be sealed */
export function encodeEnvelope(ts: number, sender: Uint8Array, seq: number, payload: Uint8Array): Buffer {
  if (!Number.isSafeInteger(ts) || ts < 0)
    throw new RangeError(`envelope ts must be a safe ms integer: ${ts}`);
  if (sender.length !== SENDER_ID_BYTES) throw new RangeError(`sender id must be ${SENDER_ID_BYTES} bytes`);
  if (!Number.isInteger(seq) || seq < 0 || seq >= TWO_POW_32)
    throw new RangeError(`seq must be a u32: ${seq}`);
  const out = Buffer.allocUnsafe(ENVELOPE_BYTES + payload.length);
  out.writeUInt32BE(Math.floor(ts / TWO_POW_32), 0);
  out.writeUInt32BE(ts % TWO_POW_32, 4);
  out.set(sender, 8);
  out.writeUInt32BE(seq, 16);
  out.set(payload, ENVELOPE_BYTES);
  return out;
}

/** the envelope of an opened packet, or null when it is too short or its ts is not a safe integer */
export function decodeEnvelope(plain: Uint8Array): Envelope | null {
  if (plain.length < ENVELOPE_BYTES) return null;
  const buf = Buffer.from(plain.buffer, plain.byteOffset, plain.length);
  const high = buf.readUInt32BE(0);
  if (high > MAX_TS_HIGH) return null;
  const ts = high * TWO_POW_32 + buf.readUInt32BE(4);
  if (!Number.isSafeInteger(ts)) return null;
  return {
    ts,
    sender: buf.subarray(8, 8 + SENDER_ID_BYTES),
    seq: buf.readUInt32BE(16),
    payload: buf.subarray(ENVELOPE_BYTES),
  };
}

/** the sequence of envelope headers one sender writes */
export class EnvelopeWriter {
  readonly sender: Buffer;
  private seq = 0;

  constructor(
    sender: Uint8Array,
    private readonly now: () => number = Date.now,
  ) {
    if (sender.length !== SENDER_ID_BYTES) throw new RangeError(`sender id must be ${SENDER_ID_BYTES} bytes`);
    this.sender = Buffer.from(sender);
  }

  wrap(payload: Uint8Array): Buffer {
    const seq = this.seq;
    this.seq = (this.seq + 1) % TWO_POW_32;
    return encodeEnvelope(Math.max(0, Math.floor(this.now())), this.sender, seq, payload);
  }
}

/** why the guard refused an envelope */
export type ReplayVerdict = 'ok' | 'stale' | 'future' | 'duplicate' | 'reflected';

export interface ReplayGuardOptions {
  /** accepted distance between a packet's ts and the receiver's clock, both ways (ms) */
  windowMs?: number;
  /** most (sender, seq) pairs remembered */
  capacity?: number;
  /** wall clock, ms */
  now?: () => number;
  /** this node's own sender id: its packets reflected back to it are refused */
  localSender?: Uint8Array;
}

export class ReplayGuard {
  readonly windowMs: number;
  readonly capacity: number;
  private readonly now: () => number;
  private readonly localSender: Buffer | undefined;
  /** (sender ‖ seq) as a latin1 string → ts; insertion order ≈ arrival order */
  private readonly seen = new Map<string, number>();
  /** packets stamped at or before this are refused */
  private floor: number;

  constructor(opts: ReplayGuardOptions = {}) {
    this.windowMs = opts.windowMs ?? DEFAULT_REPLAY_WINDOW_MS;
    this.capacity = opts.capacity ?? DEFAULT_REPLAY_CAPACITY;
    if (!(this.windowMs > 0)) throw new RangeError('replay window must be positive');
    if (!Number.isInteger(this.capacity) || this.capacity < 1) {
      throw new RangeError('replay capacity must be a positive integer');
    }
    this.now = opts.now ?? Date.now;
    this.localSender = opts.localSender ? Buffer.from(opts.localSender) : undefined;
    this.floor = this.now() - 1;
  }

  /** pairs remembered now */
  get size(): number {
    return this.seen.size;
  }

  /** accepts (and remembers) a fresh, unseen envelope; refuses anything else */
  check(env: Pick<Envelope, 'ts' | 'sender' | 'seq'>): ReplayVerdict {
    const now = this.now();
    if (this.localSender && env.sender.equals(this.localSender)) return 'reflected';
    if (env.ts > now + this.windowMs) return 'future';
    if (env.ts < now - this.windowMs || env.ts <= this.floor) return 'stale';
    const key = env.sender.toString('latin1') + String.fromCharCode(env.seq >>> 16, env.seq & 0xffff);
    if (this.seen.has(key)) return 'duplicate';
    this.expire(now);
    if (this.seen.size >= this.capacity) this.evictOldest();
    this.seen.set(key, env.ts);
    return 'ok';
  }

  /**
   * Forgets what the window already refuses, from the oldest arrival on. The floor follows, so a
   * wall clock stepped backwards (NTP) cannot bring a forgotten packet back into the window.
   */
  private expire(now: number): void {
    const horizon = now - this.windowMs;
    for (const [key, ts] of this.seen) {
      if (ts >= horizon) break;
      this.seen.delete(key);
      if (ts > this.floor) this.floor = ts;
    }
  }

  private evictOldest(): void {
    const first = this.seen.entries().next();
    if (first.done) return;
    const [key, ts] = first.value;
    this.seen.delete(key);
    if (ts > this.floor) this.floor = ts;
  }
}
