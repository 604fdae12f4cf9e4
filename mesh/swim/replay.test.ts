import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeEnvelope,
  encodeEnvelope,
  ENVELOPE_BYTES,
  EnvelopeWriter,
  ReplayGuard,
  SENDER_ID_BYTES,
} from './replay.js';

const T0 = 1_800_000_000_000;
const A = Buffer.alloc(SENDER_ID_BYTES, 0xaa);
const B = Buffer.alloc(SENDER_ID_BYTES, 0xbb);

function clockAt(start: number) {
  const c = { t: start, now: () => c.t };
  return c;
}

describe('envelope', () => {
  it('round-trips ts, sender, seq and payload', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.uint8Array({ minLength: SENDER_ID_BYTES, maxLength: SENDER_ID_BYTES }),
        fc.nat({ max: 0xffff_ffff }),
        fc.uint8Array({ maxLength: 256 }),
        (ts, sender, seq, payload) => {
          const buf = encodeEnvelope(ts, sender, seq, payload);
          expect(buf).toHaveLength(ENVELOPE_BYTES + payload.length);
          const env = decodeEnvelope(buf);
          expect(env).not.toBeNull();
          expect(env!.ts).toBe(ts);
          expect(env!.sender.equals(Buffer.from(sender))).toBe(true);
          expect(env!.seq).toBe(seq);
          expect(env!.payload.equals(Buffer.from(payload))).toBe(true);
        },
      ),
    );
  });

  it('refuses short envelopes and timestamps beyond a safe integer', () => {
    expect(decodeEnvelope(Buffer.alloc(ENVELOPE_BYTES - 1))).toBeNull();
    expect(decodeEnvelope(Buffer.alloc(ENVELOPE_BYTES))).not.toBeNull();
    expect(decodeEnvelope(Buffer.alloc(ENVELOPE_BYTES, 0xff))).toBeNull();
    expect(() => encodeEnvelope(-1, A, 0, Buffer.alloc(0))).toThrow(RangeError);
    expect(() => encodeEnvelope(0, Buffer.alloc(3), 0, Buffer.alloc(0))).toThrow(RangeError);
    expect(() => encodeEnvelope(0, A, 2 ** 32, Buffer.alloc(0))).toThrow(RangeError);
  });

  it('stamps packets with the clock and an increasing seq that wraps at 2^32', () => {
    const c = clockAt(T0);
    const w = new EnvelopeWriter(A, c.now);
    const first = decodeEnvelope(w.wrap(Buffer.from('p')))!;
    c.t += 5;
    const second = decodeEnvelope(w.wrap(Buffer.from('q')))!;
    expect([first.ts, first.seq, second.ts, second.seq]).toEqual([T0, 0, T0 + 5, 1]);
    (w as unknown as { seq: number }).seq = 0xffff_ffff;
    expect(decodeEnvelope(w.wrap(Buffer.alloc(0)))!.seq).toBe(0xffff_ffff);
    expect(decodeEnvelope(w.wrap(Buffer.alloc(0)))!.seq).toBe(0);
  });
});

describe('ReplayGuard', () => {
  it('accepts a fresh packet once and refuses it again as duplicate', () => {
    const c = clockAt(T0);
    const g = new ReplayGuard({ now: c.now });
    c.t += 1;
    expect(g.check({ ts: c.t, sender: A, seq: 1 })).toBe('ok');
    expect(g.check({ ts: c.t, sender: A, seq: 1 })).toBe('duplicate');
    expect(g.check({ ts: c.t, sender: A, seq: 2 })).toBe('ok');
    expect(g.check({ ts: c.t, sender: B, seq: 1 })).toBe('ok'); // another sender, same seq
    expect(g.check({ ts: c.t + 3, sender: A, seq: 1 })).toBe('duplicate'); // restamped, same id
  });

  it('refuses packets outside the window both ways, and packets from before the guard started', () => {
    const c = clockAt(T0);
    const g = new ReplayGuard({ now: c.now, windowMs: 30_000 });
    expect(g.check({ ts: T0 - 1, sender: A, seq: 1 })).toBe('stale'); // captured before we started
    c.t += 60_000;
    expect(g.check({ ts: c.t - 30_001, sender: A, seq: 2 })).toBe('stale');
    expect(g.check({ ts: c.t - 29_999, sender: A, seq: 3 })).toBe('ok'); // 30 s skew is tolerated
    expect(g.check({ ts: c.t + 29_999, sender: A, seq: 4 })).toBe('ok');
    expect(g.check({ ts: c.t + 30_001, sender: A, seq: 5 })).toBe('future');
  });

  it('refuses its own packets reflected back', () => {
    const c = clockAt(T0);
    const g = new ReplayGuard({ now: c.now, localSender: A });
    c.t += 1;
    expect(g.check({ ts: c.t, sender: A, seq: 1 })).toBe('reflected');
    expect(g.check({ ts: c.t, sender: B, seq: 1 })).toBe('ok');
  });

  it('forgets what the window refuses anyway, and stays refused when the clock steps back', () => {
    const c = clockAt(T0);
    const g = new ReplayGuard({ now: c.now, windowMs: 1000 });
    c.t += 10;
    for (let i = 0; i < 100; i++) expect(g.check({ ts: c.t, sender: A, seq: i })).toBe('ok');
    expect(g.size).toBe(100);
    c.t += 2000;
    expect(g.check({ ts: c.t, sender: B, seq: 0 })).toBe('ok');
    expect(g.size).toBe(1);
    c.t -= 1500; // NTP steps the clock back: the forgotten packets are inside the window again
    expect(g.check({ ts: T0 + 10, sender: A, seq: 5 })).toBe('stale');
  });

  it('is bounded, and forgetting an entry early raises the floor instead of re-opening a replay', () => {
    const c = clockAt(T0);
    const g = new ReplayGuard({ now: c.now, capacity: 4 });
    for (let i = 1; i <= 6; i++) {
      c.t += 1;
      expect(g.check({ ts: c.t, sender: A, seq: i })).toBe('ok');
    }
    expect(g.size).toBe(4);
    // seq 1 and 2 were forgotten; replaying them is still refused (by the floor)
    expect(g.check({ ts: T0 + 1, sender: A, seq: 1 })).toBe('stale');
    expect(g.check({ ts: T0 + 2, sender: A, seq: 2 })).toBe('stale');
    expect(g.check({ ts: T0 + 6, sender: A, seq: 6 })).toBe('duplicate');
  });

  it('never accepts the same (sender, seq) twice, whatever the arrival order, clock and capacity', () => {
    const event = fc.record({
      sender: fc.constantFrom(A, B),
      seq: fc.nat({ max: 20 }),
      advance: fc.nat({ max: 300 }),
    });
    fc.assert(
      fc.property(
        fc.array(event, { maxLength: 200 }),
        fc.integer({ min: 1, max: 16 }),
        (events, capacity) => {
          const c = clockAt(T0);
          const g = new ReplayGuard({ now: c.now, windowMs: 1000, capacity });
          const accepted = new Set<string>();
          for (const e of events) {
            c.t += e.advance;
            // a sender stamps a given seq once: its ts is a function of (sender, seq)
            const ts = T0 + 1 + e.seq * 37 + (e.sender === A ? 0 : 11);
            const verdict = g.check({ ts, sender: e.sender, seq: e.seq });
            const id = `${e.sender[0]}:${e.seq}`;
            if (verdict === 'ok') {
              expect(accepted.has(id)).toBe(false);
              accepted.add(id);
            }
            expect(g.size).toBeLessThanOrEqual(capacity);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});
