import { describe, expect, it } from 'vitest';

import {
  BATCH_VERSION,
  FrameDecoder,
  MAX_MESSAGE_BYTES,
  MAX_PAYLOAD_BYTES,
  decodeBatch,
  encodeFrame,
  encodeVarint,
  packBatches,
  readVarint,
} from './framing.js';
import { derivePnetKey, pnetSwarmKey } from './keys.js';

function bytes(n: number, fill = 7): Uint8Array {
  return new Uint8Array(n).fill(fill);
}

describe('varint', () => {
  it('round-trips and rejects non-minimal or overlong encodings', () => {
    for (const n of [0, 1, 127, 128, 300, 16383, 16384, 65535, 65536, 2 ** 21, 2 ** 32 - 1]) {
      const e = encodeVarint(n);
      expect(readVarint(e, 0)).toEqual({ value: n, next: e.length });
    }
    expect(readVarint(Uint8Array.of(0x80, 0x00), 0)).toBe('malformed');
    expect(readVarint(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x01), 0)).toBe('malformed');
    expect(readVarint(Uint8Array.of(0x80), 0)).toBe('incomplete');
  });
});

describe('batch codec', () => {
  it('packs in order into messages of at most 64 KiB and decodes them back', () => {
    const payloads = Array.from({ length: 300 }, (_, i) => bytes((i * 997) % 3000, i & 0xff));
    payloads.push(bytes(MAX_PAYLOAD_BYTES, 1), bytes(0), bytes(MAX_PAYLOAD_BYTES, 2));
    const batches = packBatches(payloads);
    const out: Uint8Array[] = [];
    for (const b of batches) {
      expect(b.length).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
      expect(b[0]).toBe(BATCH_VERSION);
      const r = decodeBatch(b);
      if (!r.ok) throw new Error(r.reason);
      out.push(...r.payloads);
    }
    expect(out.length).toBe(payloads.length);
    out.forEach((p, i) => expect(Buffer.from(p).equals(payloads[i])).toBe(true));
    // a maximal payload fills a message exactly
    expect(packBatches([bytes(MAX_PAYLOAD_BYTES)])[0].length).toBe(MAX_MESSAGE_BYTES);
  });

  it('packs 500 small payloads into one message', () => {
    const batches = packBatches(Array.from({ length: 500 }, (_, i) => new TextEncoder().encode(`p${i}`)));
    expect(batches.length).toBe(1);
  });

  it('drops hostile batches without throwing', () => {
    const bad: Array<[Uint8Array, string]> = [
      [new Uint8Array(0), 'malformed'],
      [Uint8Array.of(BATCH_VERSION), 'malformed'], // no record
      [Uint8Array.of(0x02, 0x00), 'malformed'], // unknown version
      [Uint8Array.of(BATCH_VERSION, 0x05, 1, 2), 'malformed'], // length beyond the end
      [Uint8Array.of(BATCH_VERSION, 0xff, 0xff, 0xff, 0x7f), 'malformed'], // 4-byte length prefix
      [Uint8Array.of(BATCH_VERSION, 0x80), 'malformed'], // truncated prefix
      [Uint8Array.of(BATCH_VERSION, 0x01, 9, 0xff, 0xff, 0xff, 0x0f), 'malformed'], // huge 2nd record
      [bytes(MAX_MESSAGE_BYTES + 1, BATCH_VERSION), 'oversized'],
    ];
    for (const [data, reason] of bad) expect(decodeBatch(data)).toEqual({ ok: false, reason });
    // random garbage never throws
    for (let i = 0; i < 2000; i++) {
      const g = new Uint8Array(1 + Math.floor(Math.random() * 64)).map(() => Math.floor(Math.random() * 256));
      expect(() => decodeBatch(g)).not.toThrow();
    }
  });

  it('returns copies, so a handler mutating a payload cannot change the message', () => {
    const batch = packBatches([Uint8Array.of(1, 2, 3)])[0];
    const r = decodeBatch(batch);
    if (!r.ok) throw new Error(r.reason);
    r.payloads[0][0] = 99;
    expect(batch[2]).toBe(1);
  });
});

describe('FrameDecoder', () => {
  it('reassembles frames split at every possible byte boundary', () => {
    const frames = [bytes(0), bytes(1, 1), bytes(200, 2), bytes(70_000, 3), bytes(5, 4)];
    const wire = Buffer.concat(frames.map(encodeFrame));
    for (const chunk of [1, 2, 3, 7, 128, 4096, wire.length]) {
      const d = new FrameDecoder(1 << 20);
      const got: Uint8Array[] = [];
      for (let off = 0; off < wire.length; off += chunk) {
        d.push(wire.subarray(off, off + chunk));
        for (let f = d.next(); f != null; f = d.next()) got.push(f);
      }
      expect(got.length).toBe(frames.length);
      got.forEach((f, i) => expect(Buffer.from(f).equals(frames[i])).toBe(true));
      expect(d.midFrame).toBe(false);
    }
  });

  it('rejects a declared length above the limit before allocating it', () => {
    const d = new FrameDecoder(1024);
    d.push(encodeVarint(2 ** 31)); // claims 2 GiB, sends nothing
    expect(() => d.next()).toThrow(/exceeds the limit/);
    const d2 = new FrameDecoder(1024);
    d2.push(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x80));
    expect(() => d2.next()).toThrow(/malformed/);
  });
});

describe('pnet key derivation', () => {
  it('is HKDF-SHA256 with info smg/libp2p/pnet/1 in swarm-key format', () => {
    const key = new Uint8Array(32).fill(1);
    const k = derivePnetKey(key);
    expect(k.length).toBe(32);
    expect(derivePnetKey(new Uint8Array(32).fill(2))).not.toEqual(k);
    const text = new TextDecoder().decode(pnetSwarmKey(key));
    expect(text).toBe(`/key/swarm/psk/1.0.0/\n/base16/\n${Buffer.from(k).toString('hex')}`);
    expect(() => derivePnetKey(new Uint8Array(16))).toThrow(/32 bytes/);
  });
});
