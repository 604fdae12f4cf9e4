/**
 * SWIM wire messages and their binary codec.
 *
 * A packet is a version byte, a message count and that many length-prefixed messages. The first
 * message is whatever the packet is for (ping, ack, …); the rest are piggybacked broadcasts
 * (alive/suspect/dead/leave). Every field is bounded and checked on decode: a packet from the network
 * is hostile until proven otherwise, so decoding returns an error result instead of throwing and
 * never allocates more than the packet's own size suggests.
 */

export const PROTOCOL_VERSION = 1;
/** a UDP payload that survives a 1,500-byte MTU with headroom for IP/UDP and the AEAD envelope */
export const MAX_PACKET_BYTES = 1400;
/** names and addresses are short identifiers; a longer one is an error, not something to truncate */
export const MAX_NAME_BYTES = 128;
export const MAX_ADDRESS_BYTES = 128;
/** total encoded size of one member's metadata; keeps any single member state well inside a packet */
export const MAX_META_BYTES = 512;
export const MAX_META_ENTRIES = 32;
const MAX_U32 = 0xffff_ffff;

export type MemberState = 'alive' | 'suspect' | 'dead' | 'left';
const STATE_CODES: readonly MemberState[] = ['alive', 'suspect', 'dead', 'left'];

export type Meta = Record<string, string>;

export interface PingMessage {
  type: 'ping';
  seq: number;
  /** the name the sender believes lives at this address; a node with another name ignores it */
  target: string;
}
export interface IndirectPingMessage {
  type: 'indirect-ping';
  seq: number;
  target: string;
  targetAddress: string;
  /** Lifeguard: ask the relay to answer with a nack when the target stays silent */
  wantNack: boolean;
}
export interface AckMessage {
  type: 'ack';
  seq: number;
}
export interface NackMessage {
  type: 'nack';
  seq: number;
}
export interface AliveMessage {
  type: 'alive';
  node: string;
  address: string;
  incarnation: number;
  meta: Meta;
}
export interface SuspectMessage {
  type: 'suspect';
  node: string;
  incarnation: number;
  /** who suspects; distinct senders are the independent confirmations of Lifeguard's suspicion */
  from: string;
}
export interface DeadMessage {
  type: 'dead';
  node: string;
  incarnation: number;
  from: string;
}
export interface LeaveMessage {
  type: 'leave';
  node: string;
  incarnation: number;
}

export interface PushPullState {
  name: string;
  address: string;
  incarnation: number;
  state: MemberState;
  meta: Meta;
}
/** one part of a full-state exchange; a state larger than a packet travels as several parts */
export interface PushPullMessage {
  type: 'push-pull';
  seq: number;
  /** false for the request, true for the answer */
  response: boolean;
  /** the requester is joining (answers are awaited by join()) */
  join: boolean;
  part: number;
  parts: number;
  states: PushPullState[];
}

export type BroadcastMessage = AliveMessage | SuspectMessage | DeadMessage | LeaveMessage;
export type Message =
  PingMessage | IndirectPingMessage | AckMessage | NackMessage | PushPullMessage | BroadcastMessage;

export type DecodeResult =
  { ok: true; messages: Message[] } | { ok: false; reason: 'malformed' | 'oversized'; detail: string };

const TYPE_CODES = {
  ping: 1,
  'indirect-ping': 2,
  ack: 3,
  nack: 4,
  alive: 5,
  suspect: 6,
  dead: 7,
  leave: 8,
  'push-pull': 9,
} as const satisfies Record<Message['type'], number>;

const encoder = new TextEncoder();
// fatal: invalid UTF-8 is a malformed packet, not a string with replacement characters
const decoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  private buf = new Uint8Array(64);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf[this.length++] = v;
  }
  u16(v: number): void {
    this.reserve(2);
    this.view.setUint16(this.length, v);
    this.length += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, v);
    this.length += 4;
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  /** u16 length prefix: meta values may exceed 255 bytes */
  str(s: string, max: number, what: string): void {
    const b = encoder.encode(s);
    if (b.length > max) throw new RangeError(`${what} is ${b.length} bytes, more than ${max}`);
    this.u16(b.length);
    this.bytes(b);
  }
  finish(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

/** thrown only inside decodePacket and turned into an error result there */
class DecodeError extends Error {}

class Reader {
  private readonly view: DataView;
  offset = 0;
  constructor(
    private readonly buf: Uint8Array,
    private readonly end: number = buf.length,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  private need(n: number): void {
    if (this.offset + n > this.end) throw new DecodeError('truncated');
  }
  u8(): number {
    this.need(1);
    return this.buf[this.offset++];
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.offset);
    this.offset += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.offset);
    this.offset += 4;
    return v;
  }
  bool(): boolean {
    const v = this.u8();
    if (v > 1) throw new DecodeError('bad boolean');
    return v === 1;
  }
  str(max: number, what: string, allowEmpty = false): string {
    const n = this.u16();
    if (n > max) throw new DecodeError(`${what} too long`);
    if (n === 0 && !allowEmpty) throw new DecodeError(`empty ${what}`);
    this.need(n);
    const s = decoder.decode(this.buf.subarray(this.offset, this.offset + n));
    this.offset += n;
    return s;
  }
  done(): boolean {
    return this.offset === this.end;
  }
}

function writeMeta(w: Writer, meta: Meta): void {
  const entries = Object.entries(meta);
  if (entries.length > MAX_META_ENTRIES)
    throw new RangeError(`meta has more than ${MAX_META_ENTRIES} entries`);
  const start = w.length;
  w.u8(entries.length);
  for (const [k, v] of entries) {
    w.str(k, MAX_META_BYTES, 'meta key');
    w.str(v, MAX_META_BYTES, 'meta value');
  }
  if (w.length - start > MAX_META_BYTES)
    throw new RangeError(`meta encodes to more than ${MAX_META_BYTES} bytes`);
}

function readMeta(r: Reader): Meta {
  const start = r.offset;
  const n = r.u8();
  if (n > MAX_META_ENTRIES) throw new DecodeError('too many meta entries');
  // a null prototype so keys such as "__proto__" are plain data
  const meta: Meta = Object.create(null) as Meta;
  for (let i = 0; i < n; i++) {
    const k = r.str(MAX_META_BYTES, 'meta key');
    if (Object.prototype.hasOwnProperty.call(meta, k)) throw new DecodeError('duplicate meta key');
    meta[k] = r.str(MAX_META_BYTES, 'meta value', true);
  }
  if (r.offset - start > MAX_META_BYTES) throw new DecodeError('meta too large');
  return meta;
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > MAX_U32) throw new RangeError(`${what} must be a u32, got ${v}`);
}

function writeState(w: Writer, s: PushPullState): void {
  w.str(s.name, MAX_NAME_BYTES, 'name');
  w.str(s.address, MAX_ADDRESS_BYTES, 'address');
  checkU32(s.incarnation, 'incarnation');
  w.u32(s.incarnation);
  w.u8(STATE_CODES.indexOf(s.state));
  writeMeta(w, s.meta);
}

function readState(r: Reader): PushPullState {
  const name = r.str(MAX_NAME_BYTES, 'name');
  const address = r.str(MAX_ADDRESS_BYTES, 'address');
  const incarnation = r.u32();
  const code = r.u8();
  const state = STATE_CODES[code];
  if (state === undefined) throw new DecodeError('unknown member state');
  return { name, address, incarnation, state, meta: readMeta(r) };
}

/**
 * Encodes one message (without the packet framing). Throws RangeError on local misuse (a name or
 * meta over its bound): that is a programming error on this node, unlike bad input from the wire.
 */
export function encodeMessage(m: Message): Uint8Array {
  const w = new Writer();
  w.u8(TYPE_CODES[m.type]);
  switch (m.type) {
    case 'ping':
      checkU32(m.seq, 'seq');
      w.u32(m.seq);
      w.str(m.target, MAX_NAME_BYTES, 'target');
      break;
    case 'indirect-ping':
      checkU32(m.seq, 'seq');
      w.u32(m.seq);
      w.str(m.target, MAX_NAME_BYTES, 'target');
      w.str(m.targetAddress, MAX_ADDRESS_BYTES, 'target address');
      w.u8(m.wantNack ? 1 : 0);
      break;
    case 'ack':
    case 'nack':
      checkU32(m.seq, 'seq');
      w.u32(m.seq);
      break;
    case 'alive':
      w.str(m.node, MAX_NAME_BYTES, 'node');
      w.str(m.address, MAX_ADDRESS_BYTES, 'address');
      checkU32(m.incarnation, 'incarnation');
      w.u32(m.incarnation);
      writeMeta(w, m.meta);
      break;
    case 'suspect':
    case 'dead':
      w.str(m.node, MAX_NAME_BYTES, 'node');
      checkU32(m.incarnation, 'incarnation');
      w.u32(m.incarnation);
      w.str(m.from, MAX_NAME_BYTES, 'from');
      break;
    case 'leave':
      w.str(m.node, MAX_NAME_BYTES, 'node');
      checkU32(m.incarnation, 'incarnation');
      w.u32(m.incarnation);
      break;
    case 'push-pull':
      checkU32(m.seq, 'seq');
      w.u32(m.seq);
      w.u8((m.response ? 1 : 0) | (m.join ? 2 : 0));
      w.u16(m.part);
      w.u16(m.parts);
      w.u16(m.states.length);
      for (const s of m.states) writeState(w, s);
      break;
  }
  return w.finish();
}

function readMessage(r: Reader): Message {
  const code = r.u8();
  switch (code) {
    case TYPE_CODES.ping:
      return { type: 'ping', seq: r.u32(), target: r.str(MAX_NAME_BYTES, 'target') };
    case TYPE_CODES['indirect-ping']:
      return {
        type: 'indirect-ping',
        seq: r.u32(),
        target: r.str(MAX_NAME_BYTES, 'target'),
        targetAddress: r.str(MAX_ADDRESS_BYTES, 'target address'),
        wantNack: r.bool(),
      };
    case TYPE_CODES.ack:
      return { type: 'ack', seq: r.u32() };
    case TYPE_CODES.nack:
      return { type: 'nack', seq: r.u32() };
    case TYPE_CODES.alive:
      return {
        type: 'alive',
        node: r.str(MAX_NAME_BYTES, 'node'),
        address: r.str(MAX_ADDRESS_BYTES, 'address'),
        incarnation: r.u32(),
        meta: readMeta(r),
      };
    case TYPE_CODES.suspect:
    case TYPE_CODES.dead:
      return {
        type: code === TYPE_CODES.suspect ? 'suspect' : 'dead',
        node: r.str(MAX_NAME_BYTES, 'node'),
        incarnation: r.u32(),
        from: r.str(MAX_NAME_BYTES, 'from'),
      };
    case TYPE_CODES.leave:
      return { type: 'leave', node: r.str(MAX_NAME_BYTES, 'node'), incarnation: r.u32() };
    case TYPE_CODES['push-pull']: {
      const seq = r.u32();
      const flags = r.u8();
      if (flags > 3) throw new DecodeError('bad push-pull flags');
      const part = r.u16();
      const parts = r.u16();
      if (parts === 0 || part >= parts) throw new DecodeError('bad push-pull part');
      const count = r.u16();
      const states: PushPullState[] = [];
      for (let i = 0; i < count; i++) states.push(readState(r));
      return {
        type: 'push-pull',
        seq,
        response: (flags & 1) !== 0,
        join: (flags & 2) !== 0,
        part,
        parts,
        states,
      };
    }
    default:
      throw new DecodeError(`unknown message type ${code}`);
  }
}

/** bytes the packet framing adds: version + count, then 2 bytes of length per message */
export const PACKET_HEADER_BYTES = 2;
export const MESSAGE_FRAME_BYTES = 2;

/** frames already-encoded messages into one packet; the caller keeps it under MAX_PACKET_BYTES */
export function encodePacket(messages: readonly Uint8Array[]): Uint8Array {
  if (messages.length === 0 || messages.length > 255) throw new RangeError('a packet holds 1..255 messages');
  let size = PACKET_HEADER_BYTES;
  for (const m of messages) {
    if (m.length > 0xffff) throw new RangeError('message too large');
    size += MESSAGE_FRAME_BYTES + m.length;
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  out[0] = PROTOCOL_VERSION;
  out[1] = messages.length;
  let off = PACKET_HEADER_BYTES;
  for (const m of messages) {
    view.setUint16(off, m.length);
    out.set(m, off + MESSAGE_FRAME_BYTES);
    off += MESSAGE_FRAME_BYTES + m.length;
  }
  return out;
}

/** size of a packet holding messages of these encoded sizes */
export function packetSize(messageBytes: number, messageCount: number): number {
  return PACKET_HEADER_BYTES + messageBytes + MESSAGE_FRAME_BYTES * messageCount;
}

/** decodes and validates a whole packet; never throws */
export function decodePacket(packet: Uint8Array, maxBytes = MAX_PACKET_BYTES): DecodeResult {
  if (packet.length > maxBytes) return { ok: false, reason: 'oversized', detail: `${packet.length} bytes` };
  try {
    if (packet.length < PACKET_HEADER_BYTES) throw new DecodeError('short packet');
    if (packet[0] !== PROTOCOL_VERSION) throw new DecodeError(`unknown version ${packet[0]}`);
    const count = packet[1];
    if (count === 0) throw new DecodeError('empty packet');
    const framing = new Reader(packet);
    framing.offset = PACKET_HEADER_BYTES;
    const messages: Message[] = [];
    for (let i = 0; i < count; i++) {
      const len = framing.u16();
      const end = framing.offset + len;
      if (end > packet.length) throw new DecodeError('truncated message');
      const r = new Reader(packet, end);
      r.offset = framing.offset;
      messages.push(readMessage(r));
      if (!r.done()) throw new DecodeError('trailing bytes in message');
      framing.offset = end;
    }
    if (!framing.done()) throw new DecodeError('trailing bytes after messages');
    return { ok: true, messages };
  } catch (err) {
    return { ok: false, reason: 'malformed', detail: err instanceof Error ? err.message : String(err) };
  }
}

export function isBroadcast(m: Message): m is BroadcastMessage {
  return m.type === 'alive' || m.type === 'suspect' || m.type === 'dead' || m.type === 'leave';
}

const PUSH_PULL_HEADER_BYTES = 1 + 4 + 1 + 2 + 2 + 2;

function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/** encoded size of one member state inside a push-pull message */
export function encodedStateSize(s: PushPullState): number {
  let meta = 1;
  for (const [k, v] of Object.entries(s.meta)) meta += 4 + utf8Length(k) + utf8Length(v);
  return 4 + utf8Length(s.name) + utf8Length(s.address) + 4 + 1 + meta;
}

/**
 * Splits a full state into push-pull messages that each fit a packet of `maxPacketBytes` (with
 * nothing piggybacked). Throws RangeError when a single state cannot fit, which the meta bound
 * prevents for any sane packet size.
 */
export function splitPushPull(
  states: readonly PushPullState[],
  head: { seq: number; response: boolean; join: boolean },
  maxPacketBytes: number,
): PushPullMessage[] {
  const budget = maxPacketBytes - PACKET_HEADER_BYTES - MESSAGE_FRAME_BYTES - PUSH_PULL_HEADER_BYTES;
  const groups: PushPullState[][] = [[]];
  let used = 0;
  for (const s of states) {
    const size = encodedStateSize(s);
    if (size > budget) throw new RangeError(`member ${s.name} does not fit a push-pull packet`);
    if (used + size > budget) {
      groups.push([]);
      used = 0;
    }
    groups[groups.length - 1].push(s);
    used += size;
  }
  if (groups.length > 0xffff) throw new RangeError('state too large for push-pull');
  return groups.map((g, part) => ({ type: 'push-pull', ...head, part, parts: groups.length, states: g }));
}
