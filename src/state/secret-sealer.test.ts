/**
 * Sealed secrets: a value opens with the key and context it was sealed for and nothing else,
 * survives a key rotation, and hostile input never throws.
 */
import { createDecipheriv, hkdfSync } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ROOT_KEY_BYTES, SEALING_HKDF_INFO, SecretSealer } from './secret-sealer.js';

const key = (fill: number) => Buffer.alloc(ROOT_KEY_BYTES, fill);
const K1 = key(1);
const K2 = key(2);

describe('SecretSealer', () => {
  it('round-trips any value, with a fresh nonce each time, and never shows it in the sealed text', () => {
    const s = new SecretSealer(K1);
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 200 }),
        fc.string({ maxLength: 40 }),
        (value, ctx) => {
          const a = s.seal(value, ctx);
          const b = s.seal(value, ctx);
          expect(a).not.toBe(b);
          expect(s.open(a, ctx)).toEqual({ value, primary: true });
          expect(s.open(b, ctx)).toEqual({ value, primary: true });
          if (value.length >= 4) expect(a).not.toContain(value);
        },
      ),
      { numRuns: 200, seed: 13 },
    );
  });

  it('fails on a wrong key, a wrong context and a damaged value, saying which', () => {
    const sealed = new SecretSealer(K1).seal('sk-worker-secret', 'worker-a');
    expect(new SecretSealer(K2).open(sealed, 'worker-a')).toMatchObject({ error: 'unknown_key' });
    expect(new SecretSealer(K1).open(sealed, 'worker-b')).toEqual({
      error: 'auth',
      keyId: new SecretSealer(K1).primaryKeyId,
    });
    const raw = Buffer.from(sealed, 'base64url');
    for (let i = 0; i < raw.length; i++) {
      const bad = Buffer.from(raw);
      bad[i] ^= 0x01;
      const r = new SecretSealer(K1).open(bad.toString('base64url'), 'worker-a');
      expect('error' in r, `byte ${i}`).toBe(true);
    }
    for (const junk of ['', 'not base64!', 'AAAA', Buffer.alloc(40).toString('base64url')])
      expect(new SecretSealer(K1).open(junk, 'worker-a')).toMatchObject({ error: 'malformed' });
  });

  it('never throws on arbitrary input', () => {
    const s = new SecretSealer(K1);
    fc.assert(
      fc.property(fc.string(), fc.string(), (text, ctx) => {
        const r = s.open(text, ctx);
        expect('error' in r || typeof r.value === 'string').toBe(true);
      }),
      { numRuns: 500, seed: 7 },
    );
  });

  it('survives a rotation: the primary seals, every installed key opens, old values are flagged', () => {
    const before = new SecretSealer(K1);
    const old = before.seal('v-old', 'w');
    // step 1: the new key installed beside the old primary
    const installed = new SecretSealer(K1, [K2]);
    expect(installed.open(old, 'w')).toEqual({ value: 'v-old', primary: true });
    // step 2: the new key is primary; the old one still opens (due for re-sealing)
    const rotated = new SecretSealer(K2, [K1]);
    expect(rotated.open(old, 'w')).toEqual({ value: 'v-old', primary: false });
    const fresh = rotated.seal('v-new', 'w');
    expect(installed.open(fresh, 'w')).toEqual({ value: 'v-new', primary: false });
    // step 3: the old key removed: what was sealed again opens, what was not does not
    const after = new SecretSealer(K2);
    expect(after.open(fresh, 'w')).toEqual({ value: 'v-new', primary: true });
    expect(after.open(rotated.seal('v-old', 'w'), 'w')).toEqual({ value: 'v-old', primary: true });
    expect(after.open(old, 'w')).toMatchObject({ error: 'unknown_key' });
  });

  it('derives its key with HKDF and a label of its own: the root key never seals directly', () => {
    const sealed = Buffer.from(new SecretSealer(K1).seal('sk-x', 'w'), 'base64url');
    const attempt = (aesKey: Uint8Array) => {
      const d = createDecipheriv('aes-256-gcm', aesKey, sealed.subarray(5, 17), { authTagLength: 16 });
      d.setAAD(Buffer.concat([Buffer.from('smg/registry/secret/1\0w\0'), sealed.subarray(0, 5)]));
      d.setAuthTag(sealed.subarray(sealed.length - 16));
      return Buffer.concat([d.update(sealed.subarray(17, sealed.length - 16)), d.final()]).toString();
    };
    expect(() => attempt(K1)).toThrow();
    expect(attempt(Buffer.from(hkdfSync('sha256', K1, new Uint8Array(0), SEALING_HKDF_INFO, 32)))).toBe(
      'sk-x',
    );
    expect(new SecretSealer(key(3)).primaryKeyId).not.toBe(new SecretSealer(K1).primaryKeyId);
    expect(() => new SecretSealer(Buffer.alloc(16))).toThrow(/32 bytes/);
  });
});
