import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_PACKET_BYTES,
  PROTOCOL_VERSION,
  decodePacket,
  encodeMessage,
  encodePacket,
  encodedStateSize,
  splitPushPull,
  type Message,
  type PushPullState,
} from './messages.js';

const name = fc.string({ minLength: 1, maxLength: 40 });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const meta = fc.dictionary(fc.string({ minLength: 1, maxLength: 10 }), fc.string({ maxLength: 30 }), {
  maxKeys: 5,
});
const state: fc.Arbitrary<PushPullState> = fc.record({
  name,
  address: name,
  incarnation: u32,
  state: fc.constantFrom('alive', 'suspect', 'dead', 'left'),
  meta,
});

const message: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ type: fc.constant('ping' as const), seq: u32, target: name }),
  fc.record({
    type: fc.constant('indirect-ping' as const),
    seq: u32,
    target: name,
    targetAddress: name,
    wantNack: fc.boolean(),
  }),
  fc.record({ type: fc.constant('ack' as const), seq: u32 }),
  fc.record({ type: fc.constant('nack' as const), seq: u32 }),
  fc.record({ type: fc.constant('alive' as const), node: name, address: name, incarnation: u32, meta }),
  fc.record({ type: fc.constant('suspect' as const), node: name, incarnation: u32, from: name }),
  fc.record({ type: fc.constant('dead' as const), node: name, incarnation: u32, from: name }),
  fc.record({ type: fc.constant('leave' as const), node: name, incarnation: u32 }),
  fc.record({
    type: fc.constant('push-pull' as const),
    seq: u32,
    response: fc.boolean(),
    join: fc.boolean(),
    part: fc.constant(0),
    parts: fc.integer({ min: 1, max: 9 }),
    states: fc.array(state, { maxLength: 5 }),
  }),
);

/** decoded meta objects have a null prototype; compare as plain data */
function plain(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v));
}

describe('swim codec', () => {
  it('round-trips every message type, alone and with piggybacked broadcasts', () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 6 }), (msgs) => {
        const decoded = decodePacket(encodePacket(msgs.map(encodeMessage)), 1 << 20);
        expect(decoded.ok).toBe(true);
        if (decoded.ok) expect(plain(decoded.messages)).toEqual(plain(msgs));
      }),
    );
  });

  it('keeps a ping with a few broadcasts compact', () => {
    const ping = encodeMessage({ type: 'ping', seq: 7, target: 'node-12' });
    const alive = encodeMessage({
      type: 'alive',
      node: 'node-3',
      address: '10.0.0.3:7946',
      incarnation: 2,
      meta: {},
    });
    expect(encodePacket([ping]).length).toBeLessThanOrEqual(20);
    expect(alive.length).toBeLessThanOrEqual(36);
  });

  it('never throws on random bytes and rejects what is not a valid packet', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        const r = decodePacket(bytes);
        // random bytes essentially never form a packet; if one does, it must re-encode to itself
        if (r.ok) expect(encodePacket(r.messages.map(encodeMessage))).toEqual(bytes);
      }),
      { numRuns: 2000 },
    );
    for (const bytes of [
      new Uint8Array(0),
      new Uint8Array([1]),
      new Uint8Array([1, 0]),
      new Uint8Array([9, 1]),
    ]) {
      expect(decodePacket(bytes).ok).toBe(false);
    }
  });

  it('rejects mutated and truncated valid packets without throwing', () => {
    fc.assert(
      fc.property(
        fc.array(message, { minLength: 1, maxLength: 4 }),
        fc.nat(),
        fc.integer({ min: 0, max: 255 }),
        (msgs, pos, byte) => {
          const packet = encodePacket(msgs.map(encodeMessage));
          const truncated = packet.subarray(0, pos % packet.length);
          expect(decodePacket(truncated).ok).toBe(false);
          const mutated = packet.slice();
          mutated[pos % packet.length] = byte;
          // a mutation may still be a valid packet (e.g. a changed seq); it just must not throw
          expect(() => decodePacket(mutated, 1 << 20)).not.toThrow();
        },
      ),
    );
  });

  it('classifies unknown versions, types and trailing garbage as malformed, big packets as oversized', () => {
    const ack = encodeMessage({ type: 'ack', seq: 1 });
    const good = encodePacket([ack]);
    expect(decodePacket(good).ok).toBe(true);
    const badVersion = good.slice();
    badVersion[0] = PROTOCOL_VERSION + 1;
    expect(decodePacket(badVersion)).toMatchObject({ ok: false, reason: 'malformed' });
    const badType = good.slice();
    badType[4] = 200;
    expect(decodePacket(badType)).toMatchObject({ ok: false, reason: 'malformed' });
    expect(decodePacket(new Uint8Array([...good, 0]))).toMatchObject({ ok: false, reason: 'malformed' });
    expect(decodePacket(new Uint8Array(MAX_PACKET_BYTES + 1))).toMatchObject({
      ok: false,
      reason: 'oversized',
    });
    // invalid UTF-8 in a name
    const ping = encodePacket([encodeMessage({ type: 'ping', seq: 1, target: 'ab' })]);
    ping[ping.length - 1] = 0xff;
    expect(decodePacket(ping)).toMatchObject({ ok: false, reason: 'malformed' });
  });

  it('refuses to encode names and meta over their bounds', () => {
    expect(() => encodeMessage({ type: 'ping', seq: 1, target: 'x'.repeat(129) })).toThrow(RangeError);
    expect(() =>
      encodeMessage({ type: 'alive', node: 'a', address: 'b', incarnation: 0, meta: { k: 'v'.repeat(600) } }),
    ).toThrow(RangeError);
    expect(() => encodeMessage({ type: 'ack', seq: -1 })).toThrow(RangeError);
  });

  it('splits a large state into push-pull parts that each fit a packet and together hold every member', () => {
    fc.assert(
      fc.property(fc.array(state, { maxLength: 300 }), (states) => {
        const parts = splitPushPull(states, { seq: 3, response: true, join: false }, MAX_PACKET_BYTES);
        const merged: PushPullState[] = [];
        parts.forEach((p, i) => {
          expect(p.part).toBe(i);
          expect(p.parts).toBe(parts.length);
          const packet = encodePacket([encodeMessage(p)]);
          expect(packet.length).toBeLessThanOrEqual(MAX_PACKET_BYTES);
          const d = decodePacket(packet);
          expect(d.ok).toBe(true);
          if (d.ok && d.messages[0].type === 'push-pull') merged.push(...d.messages[0].states);
        });
        expect(plain(merged)).toEqual(plain(states));
        for (const s of states) expect(encodedStateSize(s)).toBeGreaterThan(0);
      }),
      { numRuns: 50 },
    );
  });
});
