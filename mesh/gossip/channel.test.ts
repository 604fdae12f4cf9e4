import { afterEach, describe, expect, it } from 'vitest';

import type { Channel } from './node.js';
import { Cluster, clusterKey, fullMesh, sleep, waitFor } from './testkit.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

describe('gossip channels (/smg/<name>/1 streams)', () => {
  const cluster = new Cluster();
  afterEach(() => cluster.stopAll());

  async function pair(opts: { maxFrameBytes?: number } = {}) {
    const key = clusterKey();
    const a = await cluster.start({ clusterKey: key, ...opts });
    const b = await cluster.start({ clusterKey: key, ...opts });
    fullMesh([a, b]);
    await waitFor(() => a.connectedPeers().length === 1, 5_000, 'connection');
    return [a, b] as const;
  }

  it(
    'request/response ping-pong of several frames; the remote closing gives null',
    { timeout: 20_000 },
    async () => {
      const [a, b] = await pair();
      const serverSaw: string[] = [];
      let serverFrom = '';
      let serverEnd: Uint8Array | null | undefined;
      b.handle('echo', async (ch, from) => {
        serverFrom = from;
        for (;;) {
          const f = await ch.receive();
          if (f == null) break;
          if (f.length < 100) serverSaw.push(dec.decode(f));
          await ch.send(Buffer.concat([enc.encode('pong '), f]));
        }
        serverEnd = null;
        // returning closes our side: the client's receive() yields null
      });
      await sleep(50);
      const ch = await a.open(b.peerId, 'echo');
      const replies: string[] = [];
      for (let i = 0; i < 5; i++) {
        await ch.send(enc.encode(`ping ${i}`));
        replies.push(dec.decode((await ch.receive(5_000))!));
      }
      // a large frame survives chunking
      const big = new Uint8Array(1_000_000).map((_, i) => i & 0xff);
      await ch.send(big);
      const bigReply = (await ch.receive(5_000))!;
      expect(Buffer.from(bigReply).equals(Buffer.concat([enc.encode('pong '), big]))).toBe(true);
      await ch.close();
      expect(await ch.receive(5_000)).toBeNull();
      expect(await ch.receive(5_000)).toBeNull(); // stays null
      expect(replies).toEqual([0, 1, 2, 3, 4].map((i) => `pong ping ${i}`));
      expect(serverSaw.slice(0, 5)).toEqual([0, 1, 2, 3, 4].map((i) => `ping ${i}`));
      expect(serverEnd).toBeNull();
      expect(serverFrom).toBe(a.peerId);
      expect(a.stats().streams.opened).toBe(1);
      expect(b.stats().streams.accepted).toBe(1);
    },
  );

  it('receive() rejects after its timeout without data', { timeout: 20_000 }, async () => {
    const [a, b] = await pair();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    b.handle('silent', async () => {
      await held;
    });
    await sleep(50);
    const ch = await a.open(b.peerId, 'silent');
    const t0 = Date.now();
    await expect(ch.receive(300)).rejects.toThrow(/no frame within 300 ms/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    release();
    expect(await ch.receive(5_000)).toBeNull(); // the handler returned: its side closed
    await ch.close();
  });

  it(
    'a frame over maxFrameBytes is rejected by send(); one at the limit arrives',
    { timeout: 20_000 },
    async () => {
      const [a, b] = await pair({ maxFrameBytes: 1024 });
      const sizes: number[] = [];
      b.handle('small', async (ch) => {
        for (let f = await ch.receive(5_000); f != null; f = await ch.receive(5_000)) sizes.push(f.length);
      });
      await sleep(50);
      const ch = await a.open(b.peerId, 'small');
      await expect(ch.send(new Uint8Array(1025))).rejects.toThrow(/exceeds the limit of 1024/);
      await ch.send(new Uint8Array(1024));
      await ch.send(new Uint8Array(0));
      await ch.close();
      expect(await ch.receive(5_000)).toBeNull();
      expect(sizes).toEqual([1024, 0]);
    },
  );

  it('a receiver aborts a stream whose frame exceeds its own limit', { timeout: 20_000 }, async () => {
    const key = clusterKey();
    const small = await cluster.start({ clusterKey: key, maxFrameBytes: 1024 });
    const large = await cluster.start({ clusterKey: key });
    fullMesh([small, large]);
    await waitFor(() => small.connectedPeers().length === 1, 5_000, 'connection');
    const errors: string[] = [];
    small.handle('up', async (ch) => {
      try {
        await ch.receive(5_000);
      } catch (err) {
        errors.push((err as Error).message);
        throw err;
      }
    });
    await sleep(50);
    const ch: Channel = await large.open(small.peerId, 'up');
    await ch.send(new Uint8Array(64 * 1024));
    await waitFor(() => errors.length === 1, 5_000, 'receiver abort');
    expect(errors[0]).toMatch(/exceeds the limit of 1024/);
    await expect(ch.receive(5_000)).rejects.toThrow();
    expect(small.stats().streams.handlerErrors).toBe(1);
  });

  it('open() to an unknown protocol fails and is counted', { timeout: 20_000 }, async () => {
    const [a, b] = await pair();
    await expect(a.open(b.peerId, 'nothing-here')).rejects.toThrow();
    expect(a.stats().streams.failed).toBe(1);
    expect(() => a.handle('bad/name', async () => {})).toThrow(/invalid stream protocol name/);
  });
});
