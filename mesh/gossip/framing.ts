/**
 * Wire formats of mesh/gossip, kept free of libp2p so they can be unit-tested in isolation.
 *
 * Batch (the `data` of one gossipsub message):
 *
 *   batch   = version:u8(0x01) record{1,}
 *   record  = len:uvarint payload:byte[len]
 *
 * `uvarint` is unsigned LEB128 (protobuf varint), minimal encoding, at most 3 bytes here since no
 * payload exceeds MAX_PAYLOAD_BYTES. The whole batch is at most MAX_MESSAGE_BYTES (64 KiB).
 *
 * Channel frame (anti-entropy streams): `len:uvarint(≤ 5 bytes) frame:byte[len]`, len ≤ maxFrameBytes.
 */

/** Upper bound for the data of one gossipsub message (one batch), version byte and prefixes included. */
export const MAX_MESSAGE_BYTES = 64 * 1024;
export const BATCH_VERSION = 0x01;
/** Largest single payload that fits a batch: 64 KiB − 1 version byte − 3 length bytes = 65532. */
export const MAX_PAYLOAD_BYTES = MAX_MESSAGE_BYTES - 1 - 3;
/** Default frame limit of a Channel. */
export const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
/** A uvarint longer than this is malformed (5 bytes carry 35 bits, enough for any u32). */
const MAX_VARINT_BYTES = 5;

export function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

/** Writes `n` (a non-negative safe integer) at `offset`; returns the offset after it. */
export function writeVarint(n: number, out: Uint8Array, offset: number): number {
  while (n >= 0x80) {
    out[offset++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  out[offset++] = n;
  return offset;
}

export function encodeVarint(n: number): Uint8Array {
  const out = new Uint8Array(varintLength(n));
  writeVarint(n, out, 0);
  return out;
}

/**
 * Reads a uvarint of at most `maxBytes` bytes starting at `offset`.
 * Returns `{ value, next }`, `'incomplete'` if the input ends first, or `'malformed'` if it is too
 * long or not minimally encoded.
 */
export function readVarint(
  buf: Uint8Array,
  offset: number,
  maxBytes = MAX_VARINT_BYTES,
): { value: number; next: number } | 'incomplete' | 'malformed' {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < maxBytes; i++) {
    const pos = offset + i;
    if (pos >= buf.length) return 'incomplete';
    const b = buf[pos];
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) {
      // a trailing zero byte after the first means a non-minimal encoding
      if (b === 0 && i > 0) return 'malformed';
      return { value, next: pos + 1 };
    }
    scale *= 128;
  }
  return 'malformed';
}

/**
 * Packs payloads, in order, into as few batches as possible, each ≤ MAX_MESSAGE_BYTES.
 * Every payload must be ≤ MAX_PAYLOAD_BYTES (checked by the caller at publish time).
 */
export function packBatches(
  payloads: readonly Uint8Array[],
  maxMessageBytes = MAX_MESSAGE_BYTES,
): Uint8Array[] {
  const batches: Uint8Array[] = [];
  let start = 0;
  while (start < payloads.length) {
    let size = 1;
    let end = start;
    while (end < payloads.length) {
      const rec = varintLength(payloads[end].length) + payloads[end].length;
      if (end > start && size + rec > maxMessageBytes) break;
      size += rec;
      end++;
    }
    const out = new Uint8Array(size);
    out[0] = BATCH_VERSION;
    let off = 1;
    for (let i = start; i < end; i++) {
      off = writeVarint(payloads[i].length, out, off);
      out.set(payloads[i], off);
      off += payloads[i].length;
    }
    batches.push(out);
    start = end;
  }
  return batches;
}

export type BatchDropReason = 'malformed' | 'oversized';

/**
 * Decodes one batch. Hostile input never throws: it yields a drop reason. Payloads are copies, so
 * a handler that mutates one cannot corrupt the message gossipsub caches and forwards.
 */
export function decodeBatch(
  data: Uint8Array,
  maxMessageBytes = MAX_MESSAGE_BYTES,
): { ok: true; payloads: Uint8Array[] } | { ok: false; reason: BatchDropReason } {
  if (data.length > maxMessageBytes) return { ok: false, reason: 'oversized' };
  if (data.length < 2 || data[0] !== BATCH_VERSION) return { ok: false, reason: 'malformed' };
  const payloads: Uint8Array[] = [];
  let off = 1;
  while (off < data.length) {
    const r = readVarint(data, off, 3);
    if (typeof r === 'string') return { ok: false, reason: 'malformed' };
    // the length is checked against what is actually there before anything is allocated
    if (r.value > data.length - r.next) return { ok: false, reason: 'malformed' };
    payloads.push(data.slice(r.next, r.next + r.value));
    off = r.next + r.value;
  }
  return { ok: true, payloads };
}

/** Prefixes a frame with its uvarint length (one buffer, so it is sent as one write). */
export function encodeFrame(frame: Uint8Array): Uint8Array {
  const out = new Uint8Array(varintLength(frame.length) + frame.length);
  const off = writeVarint(frame.length, out, 0);
  out.set(frame, off);
  return out;
}

/**
 * Incremental decoder of length-prefixed frames from a byte stream delivered in arbitrary chunks.
 * The declared length is checked against `maxFrameBytes` as soon as the prefix is read, before any
 * frame buffer is allocated; a violation throws (the caller aborts the stream).
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private head = 0; // index of the first unconsumed chunk (avoids O(n) shifts on many tiny chunks)
  private buffered = 0;
  private expected = -1; // length of the frame being assembled, -1 while reading a prefix

  constructor(private readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {}

  /** bytes held that have not been returned as frames yet */
  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** Returns the next complete frame, or null if more bytes are needed. Throws on a bad prefix. */
  next(): Uint8Array | null {
    if (this.expected < 0) {
      const head = this.peek(Math.min(MAX_VARINT_BYTES, this.buffered));
      const r = readVarint(head, 0);
      if (r === 'incomplete') return null;
      if (r === 'malformed') throw new Error('malformed frame length prefix');
      if (r.value > this.maxFrameBytes) {
        throw new Error(`frame of ${r.value} bytes exceeds the limit of ${this.maxFrameBytes}`);
      }
      this.consume(r.next);
      this.expected = r.value;
    }
    if (this.buffered < this.expected) return null;
    const frame = this.take(this.expected);
    this.expected = -1;
    return frame;
  }

  /** true when a frame is partially received (a clean end of stream has nothing pending) */
  get midFrame(): boolean {
    return this.expected >= 0 || this.buffered > 0;
  }

  private peek(n: number): Uint8Array {
    const first = this.chunks[this.head];
    if (first !== undefined && first.length >= n) return first.subarray(0, n);
    const out = new Uint8Array(n);
    let off = 0;
    for (let i = this.head; i < this.chunks.length && off < n; i++) {
      const part = this.chunks[i].subarray(0, n - off);
      out.set(part, off);
      off += part.length;
    }
    return out;
  }

  /** Copies the next n bytes into `out` (if given) and drops them from the buffer. */
  private consume(n: number, out?: Uint8Array): void {
    this.buffered -= n;
    let off = 0;
    while (off < n) {
      const first = this.chunks[this.head];
      const part = first.subarray(0, n - off);
      out?.set(part, off);
      off += part.length;
      if (part.length === first.length) this.chunks[this.head++] = EMPTY;
      else this.chunks[this.head] = first.subarray(part.length);
    }
    if (this.head === this.chunks.length) {
      this.chunks = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }

  private take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    if (n > 0) this.consume(n, out);
    return out;
  }
}

const EMPTY = new Uint8Array(0);
