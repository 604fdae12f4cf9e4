/**
 * A deterministic discrete-event simulator for SWIM: virtual time driven by a priority queue of
 * events, an in-memory lossy network with latency and partitions, and members that can be killed
 * or paused. Everything random comes from one seeded PRNG, so a seed replays the same run exactly.
 */
import { SwimNode, type SwimConfig } from './swim.js';
import type { Clock, PacketTransport, Random } from './transport.js';
import { seededRandom } from '../../src/testing/prng.js';

/** the project's seeded PRNG (mulberry32), re-exported for simulator users */
export { seededRandom };

interface SimEvent {
  at: number;
  /** tie-break: events due at the same time run in the order they were scheduled */
  order: number;
  /** the member whose timer or inbox this is; undefined for the test's own events */
  owner: Endpoint | undefined;
  fn: () => void;
  cancelled: boolean;
}

/** binary min-heap on (at, order) */
class EventQueue {
  private heap: SimEvent[] = [];
  get size(): number {
    return this.heap.length;
  }
  peek(): SimEvent | undefined {
    return this.heap[0];
  }
  push(e: SimEvent): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  pop(): SimEvent | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop() as SimEvent;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l], h[m])) m = l;
        if (r < h.length && less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

function less(a: SimEvent, b: SimEvent): boolean {
  return a.at < b.at || (a.at === b.at && a.order < b.order);
}

export interface NetworkOptions {
  seed: number;
  /** probability that any packet is lost, 0..1 */
  lossRate?: number;
  /** one-way latency, uniform in [min, max] ms */
  latencyMs?: { min: number; max: number };
}

export interface SimNetworkStats {
  sent: number;
  delivered: number;
  lost: number;
  partitioned: number;
  toDead: number;
}

type EndpointStatus = 'running' | 'paused' | 'killed' | 'closed';

class Endpoint {
  status: EndpointStatus = 'running';
  handler: ((from: string, packet: Uint8Array) => void) | undefined;
  /** events that came due while paused, in their original order */
  deferred: SimEvent[] = [];
  group: number | undefined;
  constructor(readonly address: string) {}
}

/** what a simulated member gets: its transport and its clock (both virtual) */
export interface SimHost {
  address: string;
  transport: PacketTransport;
  clock: Clock;
  random: Random;
}

export class Simulator {
  readonly random: Random;
  private readonly events = new EventQueue();
  private readonly endpoints = new Map<string, Endpoint>();
  private time = 0;
  private order = 0;
  private lossRate: number;
  private latency: { min: number; max: number };
  private readonly counters: SimNetworkStats = { sent: 0, delivered: 0, lost: 0, partitioned: 0, toDead: 0 };

  constructor(opts: NetworkOptions) {
    this.random = seededRandom(opts.seed);
    this.lossRate = opts.lossRate ?? 0;
    this.latency = opts.latencyMs ?? { min: 1, max: 5 };
  }

  now(): number {
    return this.time;
  }

  get stats(): SimNetworkStats {
    return { ...this.counters };
  }

  setLossRate(rate: number): void {
    this.lossRate = rate;
  }

  /** adds a member at `address`; its PRNG is derived from the simulator's, keeping runs reproducible */
  addHost(address: string): SimHost {
    if (this.endpoints.has(address)) throw new Error(`address ${address} already in use`);
    const ep = new Endpoint(address);
    this.endpoints.set(address, ep);
    const transport: PacketTransport = {
      localAddress: address,
      send: (to, packet) => this.send(ep, to, packet),
      onPacket: (handler) => {
        ep.handler = handler;
      },
      close: async () => {
        ep.status = 'closed';
      },
    };
    const clock: Clock = {
      now: () => this.time,
      setTimeout: (fn, ms) => this.schedule(this.time + Math.max(0, ms), ep, fn),
      clearTimeout: (handle) => {
        if (handle && typeof handle === 'object' && 'cancelled' in handle)
          (handle as SimEvent).cancelled = true;
      },
    };
    return { address, transport, clock, random: seededRandom(Math.floor(this.random() * 2 ** 32)) };
  }

  /**
   * A fresh host at the address of a killed or closed one, as a process restarted on the same
   * host:port: nothing of the old one (timers, packets in flight to it) reaches the new one.
   */
  restartHost(address: string): SimHost {
    const old = this.endpoint(address);
    if (old.status !== 'killed' && old.status !== 'closed')
      throw new Error(`host ${address} is still running: kill it first`);
    this.endpoints.delete(address);
    return this.addHost(address);
  }

  /** runs `fn` at virtual time `at` (for test scripts: kill at t, heal at t, …) */
  at(at: number, fn: () => void): void {
    this.schedule(Math.max(at, this.time), undefined, fn);
  }

  /** the member stops for good: its timers never fire, it sends and receives nothing */
  kill(address: string): void {
    this.endpoint(address).status = 'killed';
  }

  /** a stop-the-world pause (GC, SIGSTOP): due timers and arriving packets wait until resume */
  pause(address: string): void {
    const ep = this.endpoint(address);
    if (ep.status === 'running') ep.status = 'paused';
  }

  /** replays what came due during the pause, in order, at the resume time */
  resume(address: string): void {
    const ep = this.endpoint(address);
    if (ep.status !== 'paused') return;
    ep.status = 'running';
    const deferred = ep.deferred;
    ep.deferred = [];
    for (const e of deferred) {
      if (!e.cancelled) this.schedule(this.time, ep, e.fn);
    }
  }

  isPaused(address: string): boolean {
    return this.endpoint(address).status === 'paused';
  }

  /**
   * Splits the network: members in different groups cannot exchange packets. Members named in no
   * group reach everyone.
   */
  partition(groups: readonly (readonly string[])[]): void {
    for (const ep of this.endpoints.values()) ep.group = undefined;
    groups.forEach((g, i) => {
      for (const a of g) this.endpoint(a).group = i;
    });
  }

  heal(): void {
    for (const ep of this.endpoints.values()) ep.group = undefined;
  }

  /** advances virtual time to `untilMs`, running every event due by then */
  run(untilMs: number): void {
    for (;;) {
      const next = this.events.peek();
      if (!next || next.at > untilMs) break;
      this.events.pop();
      if (next.cancelled) continue;
      this.time = next.at;
      const owner = next.owner;
      if (owner) {
        if (owner.status === 'killed' || owner.status === 'closed') continue;
        if (owner.status === 'paused') {
          owner.deferred.push(next);
          continue;
        }
      }
      next.fn();
    }
    this.time = Math.max(this.time, untilMs);
  }

  runFor(ms: number): void {
    this.run(this.time + ms);
  }

  /** runs in `stepMs` steps until `done()` holds or `limitMs` more virtual time has passed */
  runUntil(done: () => boolean, limitMs: number, stepMs = 100): boolean {
    const end = this.time + limitMs;
    while (this.time < end) {
      if (done()) return true;
      this.run(Math.min(end, this.time + stepMs));
    }
    return done();
  }

  private endpoint(address: string): Endpoint {
    const ep = this.endpoints.get(address);
    if (!ep) throw new Error(`unknown address ${address}`);
    return ep;
  }

  private schedule(at: number, owner: Endpoint | undefined, fn: () => void): SimEvent {
    const e: SimEvent = { at, order: this.order++, owner, fn, cancelled: false };
    this.events.push(e);
    return e;
  }

  private send(from: Endpoint, to: string, packet: Uint8Array): void {
    if (from.status !== 'running') return;
    this.counters.sent++;
    const dest = this.endpoints.get(to);
    if (!dest || dest.status === 'killed' || dest.status === 'closed') {
      this.counters.toDead++;
      return;
    }
    if (from.group !== undefined && dest.group !== undefined && from.group !== dest.group) {
      this.counters.partitioned++;
      return;
    }
    if (this.random() < this.lossRate) {
      this.counters.lost++;
      return;
    }
    const { min, max } = this.latency;
    const delay = min + this.random() * (max - min);
    // a copy: the receiver must not see later writes to the sender's buffer
    const copy = packet.slice();
    this.schedule(this.time + delay, dest, () => {
      this.counters.delivered++;
      dest.handler?.(from.address, copy);
    });
  }
}

export interface SimMember {
  name: string;
  address: string;
  node: SwimNode;
}

/**
 * Creates `count` SWIM members on the simulated network, named `${prefix}${i}` at `10.0.x.y:7946`.
 * They are not started: call start() or join() on them.
 */
export function createSimMembers(
  sim: Simulator,
  count: number,
  opts: { config?: Partial<Omit<SwimConfig, 'name'>>; prefix?: string; firstIndex?: number } = {},
): SimMember[] {
  const out: SimMember[] = [];
  const first = opts.firstIndex ?? 0;
  for (let i = first; i < first + count; i++) {
    const name = `${opts.prefix ?? 'node-'}${i}`;
    const address = `10.0.${i >> 8}.${i & 0xff}:7946`;
    const host = sim.addHost(address);
    const node = new SwimNode({
      transport: host.transport,
      clock: host.clock,
      random: host.random,
      config: { ...opts.config, name },
    });
    out.push({ name, address, node });
  }
  return out;
}
