import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CLUSTER_KEY_BYTES,
  ClusterKeyError,
  generateClusterKey,
  isDropped,
  Keyring,
  NONCE_BYTES,
  PacketPurpose,
  parseClusterKey,
  PlaintextCodec,
  purposeAad,
  SEALED_OVERHEAD,
  SEALED_VERSION,
  type OpenResult,
} from './keyring.js';

const key1 = Buffer.alloc(CLUSTER_KEY_BYTES, 1);
const key2 = Buffer.alloc(CLUSTER_KEY_BYTES, 2);
const key3 = Buffer.alloc(CLUSTER_KEY_BYTES, 3);
const AAD = purposeAad(PacketPurpose.swimPacket);

function plainOf(r: OpenResult): Buffer {
  if (isDropped(r)) throw new Error(`dropped: ${r.error}`);
  return r;
}

describe('parseClusterKey', () => {
  it('accepts 32 bytes in standard base64, with or without padding, and URL-safe base64', () => {
    const raw = randomBytes(32);
    expect(parseClusterKey(raw.toString('base64')).equals(raw)).toBe(true);
    expect(parseClusterKey(`  ${raw.toString('base64')}\n`).equals(raw)).toBe(true);
    expect(parseClusterKey(raw.toString('base64').replace(/=+$/, '')).equals(raw)).toBe(true);
    expect(parseClusterKey(raw.toString('base64url')).equals(raw)).toBe(true);
    expect(parseClusterKey(generateClusterKey())).toHaveLength(32);
  });

  it('says what is wrong with a bad key', () => {
    expect(() => parseClusterKey('')).toThrow(/empty/);
    expect(() => parseClusterKey('   ')).toThrow(ClusterKeyError);
    expect(() => parseClusterKey('not base64 at all!')).toThrow(/not valid base64/);
    expect(() => parseClusterKey('abc$def')).toThrow(/not valid base64/);
    expect(() => parseClusterKey(randomBytes(16).toString('base64'))).toThrow(/must be 32 bytes, got 16/);
    expect(() => parseClusterKey(randomBytes(33).toString('base64'))).toThrow(/must be 32 bytes, got 33/);
    expect(() => parseClusterKey(randomBytes(32).toString('hex'))).toThrow(/must be 32 bytes, got 48/);
  });
});

describe('Keyring', () => {
  it('seals as version ‖ nonce ‖ ciphertext ‖ tag and opens what it sealed', () => {
    const ring = new Keyring(key1);
    const plain = Buffer.from('hello mesh');
    const sealed = ring.seal(plain, AAD);
    expect(sealed[0]).toBe(SEALED_VERSION);
    expect(sealed).toHaveLength(plain.length + SEALED_OVERHEAD);
    expect(plainOf(ring.open(sealed, AAD)).equals(plain)).toBe(true);
    expect(plainOf(ring.open(ring.seal(new Uint8Array(0), AAD), AAD))).toHaveLength(0);
  });

  it('uses a fresh nonce for every packet', () => {
    const ring = new Keyring(key1);
    const nonces = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      nonces.add(
        ring
          .seal(Buffer.from('same'), AAD)
          .subarray(1, 1 + NONCE_BYTES)
          .toString('hex'),
      );
    }
    expect(nonces.size).toBe(1000);
  });

  it('refuses a packet sealed with another key, or for another purpose or label, as auth', () => {
    const a = new Keyring(key1);
    const b = new Keyring(key2);
    const sealed = a.seal(Buffer.from('x'), AAD);
    expect(b.open(sealed, AAD)).toEqual({ error: 'auth' });
    expect(a.open(sealed, purposeAad(PacketPurpose.swimPushPull))).toEqual({ error: 'auth' });
    expect(a.open(sealed, purposeAad(PacketPurpose.swimPacket, 'other-cluster'))).toEqual({ error: 'auth' });
    const labelled = a.seal(Buffer.from('x'), purposeAad(PacketPurpose.swimPacket, 'blue'));
    expect(a.open(labelled, AAD)).toEqual({ error: 'auth' });
  });

  it('binds the version byte: a sealed packet relabelled as plaintext or another version is refused', () => {
    const ring = new Keyring(key1);
    const sealed = ring.seal(Buffer.from('payload'), AAD);
    const v0 = Buffer.from(sealed);
    v0[0] = 0x00;
    expect(ring.open(v0, AAD)).toEqual({ error: 'auth' });
    const v2 = Buffer.from(sealed);
    v2[0] = 0x02;
    expect(ring.open(v2, AAD)).toEqual({ error: 'malformed' });
  });

  it('refuses every single-bit flip of a sealed packet', () => {
    const ring = new Keyring(key1);
    const sealed = ring.seal(Buffer.from('a SWIM ping with some bytes'), AAD);
    fc.assert(
      fc.property(fc.nat({ max: sealed.length * 8 - 1 }), (bit) => {
        const t = Buffer.from(sealed);
        t[bit >> 3] ^= 1 << (bit & 7);
        expect(isDropped(ring.open(t, AAD))).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('never throws on garbage, truncated or extended packets', () => {
    const ring = new Keyring(key1, [key2]);
    const sealed = ring.seal(randomBytes(100), AAD);
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 2048 }),
          fc.nat({ max: sealed.length - 1 }).map((n) => sealed.subarray(0, n)),
          fc.uint8Array({ minLength: 1, maxLength: 64 }).map((x) => Buffer.concat([sealed, x])),
        ),
        (packet) => {
          const r = ring.open(packet, AAD);
          expect(isDropped(r)).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('rotates keys: install, use, remove; the primary seals and is tried first', () => {
    const ring = new Keyring(key1);
    const old = ring.seal(Buffer.from('old'), AAD);
    ring.install(key2);
    ring.install(key2); // idempotent
    expect(ring.keys().map((k) => k[0])).toEqual([1, 2]);
    ring.use(key2);
    expect(ring.primaryKey().equals(key2)).toBe(true);
    expect(ring.keys().map((k) => k[0])).toEqual([2, 1]);
    const fresh = ring.seal(Buffer.from('new'), AAD);
    expect(new Keyring(key1).open(fresh, AAD)).toEqual({ error: 'auth' });
    expect(plainOf(new Keyring(key2).open(fresh, AAD)).toString()).toBe('new');
    expect(plainOf(ring.open(old, AAD)).toString()).toBe('old'); // the old key still opens
    ring.remove(key1);
    expect(ring.open(old, AAD)).toEqual({ error: 'auth' });
    expect(ring.keys()).toHaveLength(1);
    ring.remove(key3); // not installed: nothing to do
    expect(ring.keys()).toHaveLength(1);
  });

  it('refuses to remove the primary, to use a key not installed, and keys of the wrong size', () => {
    const ring = new Keyring(key1, [key2]);
    expect(() => ring.remove(key1)).toThrow(/primary/);
    expect(() => ring.use(key3)).toThrow(/not installed/);
    expect(() => ring.install(Buffer.alloc(16))).toThrow(ClusterKeyError);
    expect(() => new Keyring(Buffer.alloc(31))).toThrow(/32 bytes/);
    expect(ring.keys()).toHaveLength(2);
  });

  it('copies keys in and out, so the caller cannot change the ring by accident', () => {
    const mine = Buffer.from(key1);
    const ring = new Keyring(mine);
    const sealed = ring.seal(Buffer.from('x'), AAD);
    mine.fill(9);
    ring.keys()[0].fill(9);
    expect(plainOf(ring.open(sealed, AAD)).toString()).toBe('x');
  });

  it('builds from base64 keys', () => {
    const ring = Keyring.fromBase64(key1.toString('base64'), [key2.toString('base64')]);
    expect(ring.keys().map((k) => k[0])).toEqual([1, 2]);
  });
});

describe('PlaintextCodec', () => {
  const codec = new PlaintextCodec();

  it('round-trips and catches corruption and purpose mismatches', () => {
    const packet = codec.seal(Buffer.from('hi'), AAD);
    expect(packet[0]).toBe(0);
    expect(plainOf(codec.open(packet, AAD)).toString()).toBe('hi');
    expect(codec.open(packet, purposeAad(PacketPurpose.swimPushPull))).toEqual({ error: 'malformed' });
    const t = Buffer.from(packet);
    t[1] ^= 1;
    expect(codec.open(t, AAD)).toEqual({ error: 'malformed' });
  });

  it('keeps keyed and unkeyed nodes apart: each refuses the other as auth', () => {
    const ring = new Keyring(key1);
    expect(codec.open(ring.seal(Buffer.from('x'), AAD), AAD)).toEqual({ error: 'auth' });
    expect(ring.open(codec.seal(Buffer.alloc(40), AAD), AAD)).toEqual({ error: 'auth' });
  });

  it('never throws on garbage', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (packet) => {
        const r = codec.open(packet, AAD);
        if (!isDropped(r)) expect(codec.seal(r, AAD).equals(Buffer.from(packet))).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });
});
