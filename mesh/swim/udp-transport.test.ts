import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { CLUSTER_KEY_BYTES, Keyring, SEALED_OVERHEAD } from './keyring.js';
import { ENVELOPE_BYTES } from './replay.js';
import {
  formatHostPort,
  parseHostPort,
  UdpTransport,
  type UdpTransportOptions,
  type UdpTransportStats,
} from './udp-transport.js';

const key1 = randomBytes(CLUSTER_KEY_BYTES);
const key2 = randomBytes(CLUSTER_KEY_BYTES);

const open: Array<{ close(): unknown }> = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

async function transport(opts: Partial<UdpTransportOptions> = {}): Promise<UdpTransport> {
  const t = await UdpTransport.bind({ host: '127.0.0.1', port: 0, ...opts });
  open.push(t);
  return t;
}

/** a transport and everything it handed to its handler */
async function node(opts: Partial<UdpTransportOptions> = {}) {
  const t = await transport(opts);
  const got: Array<{ from: string; text: string }> = [];
  t.onPacket((from, packet) => got.push({ from, text: Buffer.from(packet).toString() }));
  return { t, got };
}

/** a plain socket: sees sealed bytes as they are on the wire, and sends anything */
async function rawSocket() {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const received: Buffer[] = [];
  s.on('message', (m) => received.push(m));
  const wrapper = {
    address: formatHostPort('127.0.0.1', s.address().port),
    received,
    send: (to: string, bytes: Uint8Array) =>
      new Promise<void>((resolve, reject) => {
        const hp = parseHostPort(to)!;
        s.send(bytes, hp.port, hp.host, (err) => (err ? reject(err) : resolve()));
      }),
    close: () => new Promise<void>((r) => s.close(() => r())),
  };
  open.push(wrapper);
  return wrapper;
}

async function until(cond: () => boolean, what: string | (() => string), ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
}

function totalDropped(s: UdpTransportStats): number {
  return Object.values(s.dropped).reduce((a, b) => a + b, 0);
}

/** gives late packets a chance to arrive before asserting that they did not */
const settle = () => new Promise((r) => setTimeout(r, 50));

describe('UdpTransport', () => {
  it('delivers packets both ways between two transports with the same key, and counts them', async () => {
    const a = await node({ keyring: new Keyring(key1) });
    const b = await node({ keyring: new Keyring(key1) });
    a.t.send(b.t.localAddress, Buffer.from('ping'));
    await until(() => b.got.length === 1, 'ping');
    b.t.send(a.t.localAddress, Buffer.from('ack'));
    await until(() => a.got.length === 1, 'ack');
    expect(b.got).toEqual([{ from: a.t.localAddress, text: 'ping' }]);
    expect(a.got).toEqual([{ from: b.t.localAddress, text: 'ack' }]);
    await until(() => a.t.stats().packetsOut === 1, 'send callback');
    const sa = a.t.stats();
    expect(sa).toMatchObject({ packetsIn: 1, packetsOut: 1, sendFailures: 0, socketErrors: 0 });
    expect(sa.bytesOut).toBe(4 + ENVELOPE_BYTES + SEALED_OVERHEAD);
    expect(sa.bytesIn).toBe(3 + ENVELOPE_BYTES + SEALED_OVERHEAD);
    expect(totalDropped(sa)).toBe(0);
  });

  it('drops packets sealed with another key as auth; they never reach the handler', async () => {
    const a = await node({ keyring: new Keyring(key1) });
    const intruder = await node({ keyring: new Keyring(key2) });
    for (let i = 0; i < 5; i++) intruder.t.send(a.t.localAddress, Buffer.from(`join ${i}`));
    await until(() => a.t.stats().dropped.auth === 5, 'auth drops');
    await settle();
    expect(a.got).toEqual([]);
    expect(a.t.stats().packetsIn).toBe(5);
    a.t.send(intruder.t.localAddress, Buffer.from('state'));
    await until(() => intruder.t.stats().dropped.auth === 1, 'auth drop on the intruder');
    expect(intruder.got).toEqual([]); // it cannot read the cluster either
  });

  it('drops packets of another cluster label as auth', async () => {
    const a = await node({ keyring: new Keyring(key1), label: 'blue' });
    const b = await node({ keyring: new Keyring(key1), label: 'green' });
    a.t.send(b.t.localAddress, Buffer.from('hi'));
    await until(() => b.t.stats().dropped.auth === 1, 'auth drop');
    expect(b.got).toEqual([]);
  });

  it('drops a captured packet replayed verbatim as replay', async () => {
    const a = await node({ keyring: new Keyring(key1) });
    const b = await node({ keyring: new Keyring(key1) });
    const tap = await rawSocket();
    a.t.send(tap.address, Buffer.from('suspect c'));
    await until(() => tap.received.length === 1, 'capture');
    const captured = tap.received[0];
    await tap.send(b.t.localAddress, captured);
    await until(() => b.got.length === 1, 'first delivery');
    for (let i = 0; i < 3; i++) await tap.send(b.t.localAddress, captured);
    await until(() => b.t.stats().dropped.replay === 3, 'replay drops');
    // reflected back to its own sender, it is refused too
    await tap.send(a.t.localAddress, captured);
    await until(() => a.t.stats().dropped.replay === 1, 'reflection drop');
    await settle();
    expect(b.got).toEqual([{ from: tap.address, text: 'suspect c' }]);
    expect(a.got).toEqual([]);
  });

  it('drops packets stamped outside the replay window (clock skew beyond the assumption)', async () => {
    const a = await node({ keyring: new Keyring(key1), now: () => Date.now() - 60_000 });
    const b = await node({ keyring: new Keyring(key1), replayWindowMs: 30_000 });
    a.t.send(b.t.localAddress, Buffer.from('late'));
    await until(() => b.t.stats().dropped.replay === 1, 'stale drop');
    expect(b.got).toEqual([]);
  });

  it('survives random garbage and truncated or extended real packets, counting every one', async () => {
    const a = await node({ keyring: new Keyring(key1) });
    const tap = await rawSocket();
    const b = await node({ keyring: new Keyring(key1) });
    b.t.send(tap.address, Buffer.from('a real SWIM message with some length to it'));
    await until(() => tap.received.length === 1, 'capture');
    const real = tap.received[0];
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 1500 }),
          fc.nat({ max: real.length - 1 }).map((n) => real.subarray(0, n)),
          fc.uint8Array({ minLength: 1, maxLength: 32 }).map((x) => Buffer.concat([real, x])),
          fc.tuple(fc.nat({ max: real.length - 1 }), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
            const t = Buffer.from(real);
            t[i] ^= x;
            return t;
          }),
        ),
        async (bytes) => {
          await tap.send(a.t.localAddress, bytes);
          sent++;
          // one at a time: a burst of hundreds would overflow the socket's receive buffer
          await until(
            () => a.t.stats().packetsIn === sent,
            () => `packet ${sent}: ${JSON.stringify(a.t.stats())}`,
          );
        },
      ),
      { numRuns: 300 },
    );
    await until(
      () => a.t.stats().packetsIn === sent,
      () => `all ${sent} packets read: ${JSON.stringify(a.t.stats())}`,
    );
    const s = a.t.stats();
    expect(totalDropped(s)).toBe(sent);
    expect(s.dropped.auth + s.dropped.malformed).toBe(sent);
    expect(a.got).toEqual([]);
    // and the transport still works
    b.t.send(a.t.localAddress, Buffer.from('still alive'));
    await until(() => a.got.length === 1, 'delivery after garbage');
  });

  it('keeps traffic flowing both ways through a key rotation', async () => {
    const ringA = new Keyring(key1);
    const ringB = new Keyring(key1);
    const a = await node({ keyring: ringA });
    const b = await node({ keyring: ringB });
    let n = 0;
    const exchange = async () => {
      n++;
      a.t.send(b.t.localAddress, Buffer.from(`a${n}`));
      b.t.send(a.t.localAddress, Buffer.from(`b${n}`));
      await until(() => a.got.length === n && b.got.length === n, `exchange ${n}`);
    };
    await exchange();
    ringB.install(key2); // step 1: every node installs the new key
    await exchange();
    ringA.install(key2);
    ringA.use(key2); // step 2: A switches first; B still seals with key1
    expect(ringB.primaryKey().equals(key1)).toBe(true);
    await exchange();
    ringB.use(key2); // everyone on key2
    await exchange();
    ringA.remove(key1); // step 3: the old key goes
    ringB.remove(key1);
    await exchange();
    expect(a.got.map((g) => g.text)).toEqual(['b1', 'b2', 'b3', 'b4', 'b5']);
    expect(b.got.map((g) => g.text)).toEqual(['a1', 'a2', 'a3', 'a4', 'a5']);
    expect(totalDropped(a.t.stats()) + totalDropped(b.t.stats())).toBe(0);
  });

  it('drops oversized datagrams before decrypting them, and refuses to send them', async () => {
    const a = await node({ keyring: new Keyring(key1), maxPacketBytes: 1024 });
    const b = await node({ keyring: new Keyring(key1) });
    const tap = await rawSocket();
    await tap.send(a.t.localAddress, randomBytes(2000));
    b.t.send(a.t.localAddress, randomBytes(1500)); // validly sealed, but over A's limit
    await until(() => a.t.stats().dropped.oversized === 2, 'oversized drops');
    expect(a.got).toEqual([]);
    expect(a.t.maxPayloadBytes).toBe(1024 - SEALED_OVERHEAD - ENVELOPE_BYTES);
    a.t.send(b.t.localAddress, randomBytes(a.t.maxPayloadBytes + 1)); // sealed it exceeds A's own limit
    expect(a.t.stats().sendFailures).toBe(1);
    b.t.send(a.t.localAddress, randomBytes(a.t.maxPayloadBytes)); // exactly at the limit
    await until(() => a.got.length === 1, 'a packet at the limit');
    a.t.send(b.t.localAddress, randomBytes(a.t.maxPayloadBytes));
    await until(() => b.got.length === 1, 'a packet at the limit, from A');
  });

  it('refuses to send more than a UDP datagram can carry', async () => {
    const a = await node({ keyring: new Keyring(key1) });
    expect(a.t.maxPayloadBytes).toBe(65_507 - SEALED_OVERHEAD - ENVELOPE_BYTES);
    a.t.send('127.0.0.1:9', randomBytes(a.t.maxPayloadBytes + 1));
    expect(a.t.stats()).toMatchObject({ sendFailures: 1, packetsOut: 0 });
    const b = await node({ keyring: new Keyring(key1) });
    a.t.send(b.t.localAddress, randomBytes(a.t.maxPayloadBytes)); // the largest datagram there is
    await until(() => b.got.length === 1, 'a maximal datagram');
  });

  it('runs insecure with the envelope and a checksum; keyed and unkeyed nodes drop each other', async () => {
    const a = await node({ insecure: true });
    const b = await node({ insecure: true });
    const keyed = await node({ keyring: new Keyring(key1) });
    a.t.send(b.t.localAddress, Buffer.from('plain'));
    await until(() => b.got.length === 1, 'insecure delivery');
    expect(b.got[0].text).toBe('plain');
    a.t.send(keyed.t.localAddress, Buffer.from('let me in'));
    keyed.t.send(a.t.localAddress, Buffer.from('secret'));
    await until(() => keyed.t.stats().dropped.auth === 1 && a.t.stats().dropped.auth === 1, 'auth drops');
    expect(keyed.got).toEqual([]);
    expect(a.got).toEqual([]);
    // replay protection holds without a key too
    const tap = await rawSocket();
    a.t.send(tap.address, Buffer.from('once'));
    await until(() => tap.received.length === 1, 'capture');
    await tap.send(b.t.localAddress, tap.received[0]);
    await tap.send(b.t.localAddress, tap.received[0]);
    await until(() => b.t.stats().dropped.replay === 1, 'insecure replay drop');
    expect(b.got.map((g) => g.text)).toEqual(['plain', 'once']);
  });

  it('counts a throwing handler and keeps going', async () => {
    const a = await transport({ keyring: new Keyring(key1) });
    const b = await transport({ keyring: new Keyring(key1) });
    const warnings: string[] = [];
    const c = await transport({
      keyring: new Keyring(key1),
      logger: { warn: (_o, m) => warnings.push(m), error: (_o, m) => warnings.push(m) },
    });
    let calls = 0;
    c.onPacket(() => {
      calls++;
      throw new Error('bug in the protocol');
    });
    a.send(c.localAddress, Buffer.from('1'));
    b.send(c.localAddress, Buffer.from('2'));
    await until(() => calls === 2, 'two handler calls');
    expect(c.stats().handlerErrors).toBe(2);
    expect(warnings).toEqual(['mesh packet handler threw']); // rate-limited
  });

  it('never throws from send, and counts what it could not send', async () => {
    const a = await transport({ keyring: new Keyring(key1) });
    a.send('no-port', Buffer.from('x'));
    a.send('[::1', Buffer.from('x'));
    a.send('127.0.0.1:0', Buffer.from('x'));
    a.send('[::1]:7000', Buffer.from('x')); // an IPv6 target from a udp4 socket
    await until(() => a.stats().sendFailures === 4, 'send failures');
    expect(a.stats().packetsOut).toBe(0);
  });

  it('checks its configuration at bind', async () => {
    await expect(UdpTransport.bind({ host: '127.0.0.1', port: 0 })).rejects.toThrow(/cluster key/);
    await expect(UdpTransport.bind({ host: 'localhost', port: 0, insecure: true })).rejects.toThrow(
      /IP address/,
    );
    await expect(UdpTransport.bind({ host: '0.0.0.0', port: 0, insecure: true })).rejects.toThrow(
      /advertise address is required/,
    );
    await expect(
      UdpTransport.bind({ host: '127.0.0.1', port: 0, insecure: true, maxPacketBytes: 70_000 }),
    ).rejects.toThrow(/maxPacketBytes/);
    const a = await transport({ insecure: true });
    const port = Number(a.boundAddress().split(':')[1]);
    await expect(UdpTransport.bind({ host: '127.0.0.1', port, insecure: true })).rejects.toThrow(
      /EADDRINUSE/,
    );
  });

  it('advertises the configured address, with the bound port when none is given', async () => {
    const a = await transport({ host: '0.0.0.0', insecure: true, advertiseAddress: '10.1.2.3' });
    const port = a.boundAddress().split(':')[1];
    expect(a.localAddress).toBe(`10.1.2.3:${port}`);
    const b = await transport({ insecure: true, advertiseAddress: 'mesh-1.internal:39000' });
    expect(b.localAddress).toBe('mesh-1.internal:39000');
    const c = await transport({ insecure: true, advertiseAddress: 'fd00::1' });
    expect(c.localAddress).toMatch(/^\[fd00::1\]:\d+$/);
    await expect(
      UdpTransport.bind({ host: '0.0.0.0', port: 0, insecure: true, advertiseAddress: '0.0.0.0:1' }),
    ).rejects.toThrow(/unspecified/);
  });

  it('works over IPv6', async () => {
    const a = await node({ host: '::1', keyring: new Keyring(key1) });
    const b = await node({ host: '::1', keyring: new Keyring(key1) });
    expect(a.t.localAddress).toMatch(/^\[::1\]:\d+$/);
    a.t.send(b.t.localAddress, Buffer.from('v6'));
    await until(() => b.got.length === 1, 'v6 delivery');
    expect(b.got[0]).toEqual({ from: a.t.localAddress, text: 'v6' });
  });

  it('closes once, and sends nothing after', async () => {
    const a = await transport({ keyring: new Keyring(key1) });
    const p1 = a.close();
    const p2 = a.close();
    expect(p1).toBe(p2);
    await p1;
    a.send('127.0.0.1:9', Buffer.from('x'));
    expect(a.stats()).toMatchObject({ packetsOut: 0, sendFailures: 0 });
  });
});

describe('parseHostPort / formatHostPort', () => {
  it('parses host:port and [v6]:port, and nothing else', () => {
    expect(parseHostPort('10.0.0.1:30001')).toEqual({ host: '10.0.0.1', port: 30001 });
    expect(parseHostPort('peer.example:1')).toEqual({ host: 'peer.example', port: 1 });
    expect(parseHostPort('[::1]:65535')).toEqual({ host: '::1', port: 65535 });
    for (const bad of [
      '',
      ':1',
      'host',
      'host:',
      'host:0',
      'host:65536',
      'host:1x',
      '::1:80',
      '[::1]80',
      '[x]:1',
    ]) {
      expect(parseHostPort(bad)).toBeNull();
    }
    expect(formatHostPort('::1', 5)).toBe('[::1]:5');
    expect(formatHostPort('1.2.3.4', 5)).toBe('1.2.3.4:5');
  });
});
