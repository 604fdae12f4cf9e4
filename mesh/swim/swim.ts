/**
 * SWIM membership with Lifeguard, after hashicorp/memberlist's design.
 *
 * - Failure detection: one probe per (awareness-scaled) interval, round robin over a shuffled member
 *   list; a direct ping, then `indirectChecks` relays asked to ping on our behalf (and to nack when
 *   they get no answer), then suspicion.
 * - Suspicion: a suspect has a timeout that shrinks as independent members confirm it; only when
 *   it fires is the member declared dead. A member that hears itself suspected or declared dead
 *   refutes by raising its incarnation.
 * - Dissemination: every state change is queued and piggybacked on pings, acks and a gossip tick,
 *   each item a bounded number of times; a periodic push-pull full-state exchange repairs the rest
 *   and is how a node joins.
 *
 * Everything runs off the injected clock, random source and packet transport, so the same code
 * runs over UDP and inside the deterministic simulator.
 */
import {
  MAX_PACKET_BYTES,
  MESSAGE_FRAME_BYTES,
  PACKET_HEADER_BYTES,
  decodePacket,
  encodeMessage,
  encodePacket,
  splitPushPull,
  type AliveMessage,
  type DeadMessage,
  type LeaveMessage,
  type Message,
  type PushPullMessage,
  type PushPullState,
  type SuspectMessage,
} from './messages.js';
import {
  Awareness,
  BroadcastQueue,
  Suspicion,
  retransmitLimit,
  suspicionMinTimeoutMs,
  type Member,
  type MemberState,
  type Meta,
} from './member.js';
import type { Clock, DropReason, PacketTransport, Random } from './transport.js';

export interface SwimConfig {
  /** unique, stable name of this member */
  name: string;
  probeIntervalMs: number;
  probeTimeoutMs: number;
  indirectChecks: number;
  suspicionMult: number;
  suspicionMaxTimeoutMult: number;
  retransmitMult: number;
  awarenessMaxMultiplier: number;
  pushPullIntervalMs: number;
  gossipIntervalMs: number;
  gossipNodes: number;
  /** dead members still receive gossip this long, so a falsely declared member hears it and refutes */
  gossipToTheDeadMs: number;
  maxPacketBytes: number;
  /**
   * A member that learns of a suspicion probes the suspect itself at once (with probability
   * min(1, suspicionProbes / (N − 2)), so about this many members do in a large cluster), so
   * confirmations, or the refutation, come within one probe interval. 0 turns this off.
   */
  suspicionProbes: number;
  /**
   * In a cluster where every member re-probes a suspect (N ≤ suspicionProbes + 2): once every other
   * active member has suspected it on its own, the suspicion times out after this × probeIntervalMs
   * (from its start) if that is sooner than the usual minimum. 0 turns this off. See TIMING.md.
   */
  suspicionUnanimousMult: number;
  /**
   * Dead and left members are removed from the table this long after they died or left (no
   * onMemberChange event); news of them afterwards adds them as new members. Keep it above
   * gossipToTheDeadMs.
   */
  deadReapMs: number;
}

/**
 * memberlist's DefaultLANConfig timings, plus re-probing of suspects, the unanimous-suspicion
 * shortcut for small clusters and reaping (see TIMING.md for the measurements behind them)
 */
export const DEFAULT_SWIM_CONFIG: Omit<SwimConfig, 'name'> = {
  probeIntervalMs: 1000,
  probeTimeoutMs: 500,
  indirectChecks: 3,
  suspicionMult: 4,
  suspicionMaxTimeoutMult: 6,
  retransmitMult: 4,
  awarenessMaxMultiplier: 8,
  pushPullIntervalMs: 30_000,
  gossipIntervalMs: 200,
  gossipNodes: 3,
  gossipToTheDeadMs: 30_000,
  maxPacketBytes: MAX_PACKET_BYTES,
  suspicionProbes: 8,
  suspicionUnanimousMult: 2.5,
  deadReapMs: 300_000,
};

export interface SwimNodeOptions {
  transport: PacketTransport;
  clock: Clock;
  random: Random;
  config: Partial<SwimConfig> & { name: string };
  meta?: Meta;
  /** start above the incarnation stored by a previous run, so stale news about us is refuted at once */
  incarnation?: number;
}

export interface JoinOptions {
  /** wait this long for an answer before the next attempt; doubles up to maxBackoffMs */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** give up (reject) after this many attempts; default: retry forever */
  maxAttempts?: number;
}

export interface SwimStats {
  members: Record<MemberState, number>;
  probes: number;
  probesFailed: number;
  probeRttMs: { count: number; sum: number; max: number };
  /** members this node moved from alive to suspect */
  suspicionsRaised: number;
  /** suspects this node saw come back alive (the suspect refuted) */
  suspicionsRefuted: number;
  /** times this node refuted news of its own suspicion or death */
  selfRefutations: number;
  declaredDead: number;
  /** dead or left members removed from the table after deadReapMs */
  reaped: number;
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  bytesOut: number;
  messagesIn: number;
  messagesOut: number;
  dropped: Record<DropReason, number>;
  healthScore: number;
  broadcastQueue: number;
}

export type MemberChangeHandler = (member: Member, prevState: MemberState | undefined) => void;

interface JoinWaiter {
  part(from: string, part: number, parts: number): void;
  abort(err: Error): void;
}

interface AckHandler {
  onAck(): void;
  onNack(): void;
}

const ACTIVE: ReadonlySet<MemberState> = new Set(['alive', 'suspect']);

export class SwimNode {
  readonly config: SwimConfig;
  private readonly transport: PacketTransport;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly self: Member;
  private readonly table = new Map<string, Member>();
  private readonly suspicions = new Map<string, Suspicion>();
  private readonly acks = new Map<number, AckHandler>();
  /** probes running per member name (scheduled and out-of-band) */
  private readonly probing = new Map<string, number>();
  private readonly queue = new BroadcastQueue();
  private readonly awareness: Awareness;
  private readonly timers = new Set<unknown>();
  private readonly handlers = new Set<MemberChangeHandler>();
  private readonly rttHandlers = new Set<(ms: number) => void>();
  /** push-pull requests already answered, `from/seq` → time, so a multi-part request gets one answer */
  private readonly answered = new Map<string, number>();
  private readonly joinWaiters = new Map<number, JoinWaiter>();
  private probeOrder: string[] = [];
  private probeIndex = 0;
  private seq = 0;
  private started = false;
  private leaving: Promise<void> | undefined;
  private closed = false;
  private readonly counters = {
    probes: 0,
    probesFailed: 0,
    rttCount: 0,
    rttSum: 0,
    rttMax: 0,
    suspicionsRaised: 0,
    suspicionsRefuted: 0,
    selfRefutations: 0,
    declaredDead: 0,
    reaped: 0,
    packetsIn: 0,
    packetsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    messagesIn: 0,
    messagesOut: 0,
  };
  private readonly dropped: Record<DropReason, number> = {
    auth: 0,
    replay: 0,
    malformed: 0,
    oversized: 0,
    unknown_sender: 0,
  };

  constructor(opts: SwimNodeOptions) {
    this.config = { ...DEFAULT_SWIM_CONFIG, ...opts.config };
    validateConfig(this.config);
    this.transport = opts.transport;
    this.clock = opts.clock;
    this.random = opts.random;
    this.awareness = new Awareness(this.config.awarenessMaxMultiplier);
    this.self = {
      name: this.config.name,
      address: opts.transport.localAddress,
      incarnation: opts.incarnation ?? 0,
      state: 'alive',
      meta: { ...(opts.meta ?? {}) },
      stateChangedAt: this.clock.now(),
    };
    // fail fast on a name, address or meta that cannot be encoded
    encodeMessage(this.aliveOf(this.self));
    this.table.set(this.self.name, this.self);
    this.transport.onPacket((from, packet) => this.onPacket(from, packet));
  }

  get name(): string {
    return this.self.name;
  }
  get incarnation(): number {
    return this.self.incarnation;
  }
  get healthScore(): number {
    return this.awareness.score;
  }

  /** starts probing, gossiping and push-pull; timers are staggered so members do not run in lockstep */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.broadcastSelf();
    this.later(() => this.probeTick(), this.random() * this.config.probeIntervalMs);
    this.later(() => this.gossipTick(), this.random() * this.config.gossipIntervalMs);
    this.later(() => this.pushPullTick(), this.random() * this.pushPullInterval());
  }

  /**
   * Exchanges full state with every seed, again and again with backoff, until one answers. Resolves
   * with the address of the first seed that answered, or null when there is no seed but this node.
   */
  join(seeds: readonly string[], opts: JoinOptions = {}): Promise<string | null> {
    this.start();
    const targets = seeds.filter((s) => s !== this.self.address);
    if (targets.length === 0) return Promise.resolve(null);
    if (this.closed) return Promise.reject(new Error('swim node is shut down'));
    const initial = opts.initialBackoffMs ?? 2 * this.config.probeIntervalMs;
    const maxBackoff = opts.maxBackoffMs ?? 30_000;
    return new Promise((resolve, reject) => {
      let attempt = 0;
      let timer: unknown;
      // every attempt has its own seq: a seed answers each request once, so a retry under the old
      // seq would go unanswered after a lost answer
      const seqs: number[] = [];
      // parts received per answering seed; the join is complete once one seed's answer is whole
      const parts = new Map<string, Set<number>>();
      const settle = (): void => {
        for (const s of seqs) this.joinWaiters.delete(s);
        this.cancel(timer);
      };
      const waiter: JoinWaiter = {
        part: (from, part, total) => {
          const key = `${from}/${total}`;
          const got = parts.get(key) ?? new Set<number>();
          parts.set(key, got);
          got.add(part);
          if (got.size < total) return;
          settle();
          resolve(from);
        },
        abort: (err) => {
          settle();
          reject(err);
        },
      };
      const tryOnce = (): void => {
        attempt++;
        const seq = this.nextSeq();
        seqs.push(seq);
        this.joinWaiters.set(seq, waiter);
        for (const seed of targets) this.sendState(seed, seq, false, true);
        timer = this.later(
          () => {
            if (opts.maxAttempts !== undefined && attempt >= opts.maxAttempts) {
              waiter.abort(new Error(`no seed answered after ${attempt} attempts: ${targets.join(', ')}`));
              return;
            }
            tryOnce();
          },
          Math.min(maxBackoff, initial * 2 ** (attempt - 1)),
        );
      };
      tryOnce();
    });
  }

  /**
   * Graceful leave: marks this node left, stops probing and gossips the leave until it has been
   * sent its full retransmit count (or timeoutMs passes). Call shutdown() afterwards.
   */
  leave(timeoutMs = 5000): Promise<void> {
    if (this.leaving) return this.leaving;
    this.leaving = new Promise((resolve) => {
      const prev = this.self.state;
      this.self.state = 'left';
      this.self.stateChangedAt = this.clock.now();
      this.emit(this.self, prev);
      if (this.closed || this.activeOthers() === 0) {
        resolve();
        return;
      }
      const timer = this.later(resolve, timeoutMs);
      const msg: LeaveMessage = { type: 'leave', node: this.self.name, incarnation: this.self.incarnation };
      this.queue.push(this.self.name, encodeMessage(msg), () => {
        this.cancel(timer);
        resolve();
      });
    });
    return this.leaving;
  }

  /** stops every timer and closes the transport */
  async shutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers.clear();
    for (const s of this.suspicions.values()) s.cancel();
    this.suspicions.clear();
    this.acks.clear();
    this.probing.clear();
    this.queue.clear();
    for (const w of new Set(this.joinWaiters.values()))
      w.abort(new Error('swim node shut down before joining'));
    this.joinWaiters.clear();
    await this.transport.close();
  }

  /** replaces this node's metadata and tells everyone (a new incarnation makes the news win) */
  setMeta(meta: Meta): void {
    const next = { ...meta };
    encodeMessage({ ...this.aliveOf(this.self), meta: next });
    this.self.meta = next;
    this.self.incarnation++;
    this.broadcastSelf();
    this.emit(this.self, this.self.state);
  }

  /**
   * Probes one member right away, out of turn: a direct ping, then indirect pings, then suspicion on
   * failure, exactly like a scheduled probe, but the round robin is left as it is. Ignored when a
   * probe of that member is already running, when it is not alive or suspect, or when this node is
   * not running. Meant for outside evidence that a member may be gone (its TCP connection closed).
   */
  probeNow(name: string): void {
    if (!this.started || this.closed || this.leaving) return;
    const m = this.table.get(name);
    if (!m || m === this.self || !ACTIVE.has(m.state) || this.probing.has(name)) return;
    this.probe(m, this.awareness.scale(this.config.probeIntervalMs));
  }

  onMemberChange(handler: MemberChangeHandler): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  onProbeRtt(handler: (ms: number) => void): () => void {
    this.rttHandlers.add(handler);
    return () => this.rttHandlers.delete(handler);
  }

  members(): Member[] {
    return [...this.table.values()].map(copy);
  }

  member(name: string): Member | undefined {
    const m = this.table.get(name);
    return m && copy(m);
  }

  stats(): SwimStats {
    const members: Record<MemberState, number> = { alive: 0, suspect: 0, dead: 0, left: 0 };
    for (const m of this.table.values()) members[m.state]++;
    const c = this.counters;
    return {
      members,
      probes: c.probes,
      probesFailed: c.probesFailed,
      probeRttMs: { count: c.rttCount, sum: c.rttSum, max: c.rttMax },
      suspicionsRaised: c.suspicionsRaised,
      suspicionsRefuted: c.suspicionsRefuted,
      selfRefutations: c.selfRefutations,
      declaredDead: c.declaredDead,
      reaped: c.reaped,
      packetsIn: c.packetsIn,
      packetsOut: c.packetsOut,
      bytesIn: c.bytesIn,
      bytesOut: c.bytesOut,
      messagesIn: c.messagesIn,
      messagesOut: c.messagesOut,
      dropped: { ...this.dropped },
      healthScore: this.awareness.score,
      broadcastQueue: this.queue.size,
    };
  }

  // ---- timers -------------------------------------------------------------------------------

  private later(fn: () => void, ms: number): unknown {
    const handle: unknown = this.clock.setTimeout(() => {
      this.timers.delete(handle);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(handle);
    return handle;
  }

  private cancel(handle: unknown): void {
    if (handle === undefined) return;
    this.timers.delete(handle);
    this.clock.clearTimeout(handle);
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  // ---- failure detection ----------------------------------------------------------------------

  private probeTick(): void {
    this.reap();
    if (this.leaving) return;
    const interval = this.awareness.scale(this.config.probeIntervalMs);
    const target = this.nextProbeTarget();
    // the probe's own timers are set first so its verdict lands before the next round starts
    if (target) this.probe(target, interval);
    this.later(() => this.probeTick(), interval);
  }

  private nextProbeTarget(): Member | undefined {
    for (let checked = 0; checked <= this.probeOrder.length; checked++) {
      if (this.probeIndex >= this.probeOrder.length) {
        this.probeOrder = [...this.table.keys()].filter((n) => n !== this.self.name);
        shuffle(this.probeOrder, this.random);
        this.probeIndex = 0;
        if (this.probeOrder.length === 0) return undefined;
      }
      const m = this.table.get(this.probeOrder[this.probeIndex++]);
      if (m && ACTIVE.has(m.state) && m !== this.self) return m;
    }
    return undefined;
  }

  private probe(target: Member, interval: number): void {
    this.counters.probes++;
    const seq = this.nextSeq();
    const sentAt = this.clock.now();
    let acked = false;
    let nacks = 0;
    let expectedNacks = 0;
    const timers: unknown[] = [];
    const name = target.name;
    this.probing.set(name, (this.probing.get(name) ?? 0) + 1);
    const done = (): void => {
      const left = (this.probing.get(name) ?? 1) - 1;
      if (left > 0) this.probing.set(name, left);
      else this.probing.delete(name);
    };
    this.acks.set(seq, {
      onAck: () => {
        if (acked) return;
        acked = true;
        this.acks.delete(seq);
        done();
        for (const t of timers) this.cancel(t);
        this.recordRtt(this.clock.now() - sentAt);
        this.awareness.apply(-1);
      },
      onNack: () => {
        nacks++;
      },
    });
    this.send(target.address, { type: 'ping', seq, target: target.name });
    timers.push(
      this.later(() => {
        const relays = this.randomMembers(
          this.config.indirectChecks,
          (m) => m.state === 'alive' && m !== this.self && m.name !== target.name,
        );
        expectedNacks = relays.length;
        for (const r of relays) {
          this.send(r.address, {
            type: 'indirect-ping',
            seq,
            target: target.name,
            targetAddress: target.address,
            wantNack: true,
          });
        }
      }, this.awareness.scale(this.config.probeTimeoutMs)),
    );
    timers.push(
      this.later(() => {
        this.acks.delete(seq);
        done();
        this.counters.probesFailed++;
        // Lifeguard: relays that did not even nack suggest the trouble is on our side; with no
        // relays to ask we cannot tell, and count the failure against ourselves
        this.awareness.apply(expectedNacks > 0 ? Math.max(0, expectedNacks - nacks) : 1);
        const cur = this.table.get(target.name);
        if (cur && ACTIVE.has(cur.state)) {
          this.onSuspect({
            type: 'suspect',
            node: cur.name,
            incarnation: cur.incarnation,
            from: this.self.name,
          });
        }
      }, interval),
    );
  }

  /**
   * Removes members dead or left for deadReapMs, so the table stays bounded under churn. No
   * onMemberChange event: the member's last event (dead or left) stands. A member that comes back
   * afterwards is added again as new (any incarnation), with an event whose prevState is undefined.
   */
  private reap(): void {
    const now = this.clock.now();
    for (const [name, m] of this.table) {
      if ((m.state === 'dead' || m.state === 'left') && m !== this.self) {
        if (now - m.stateChangedAt < this.config.deadReapMs) continue;
        this.table.delete(name);
        this.endSuspicion(name);
        this.counters.reaped++;
      }
    }
  }

  private recordRtt(ms: number): void {
    this.counters.rttCount++;
    this.counters.rttSum += ms;
    this.counters.rttMax = Math.max(this.counters.rttMax, ms);
    for (const h of this.rttHandlers) h(ms);
  }

  /** relays a ping for a prober that could not reach the target directly */
  private relayPing(from: string, msg: Extract<Message, { type: 'indirect-ping' }>): void {
    const seq = this.nextSeq();
    const timer = this.later(() => {
      this.acks.delete(seq);
      if (msg.wantNack) this.send(from, { type: 'nack', seq: msg.seq });
    }, this.config.probeTimeoutMs);
    this.acks.set(seq, {
      onAck: () => {
        this.acks.delete(seq);
        this.cancel(timer);
        this.send(from, { type: 'ack', seq: msg.seq });
      },
      onNack: () => {},
    });
    this.send(msg.targetAddress, { type: 'ping', seq, target: msg.target });
  }

  // ---- state rules (incarnation ordering as in SWIM) --------------------------------------------

  private onAlive(msg: AliveMessage): void {
    if (msg.node === this.self.name) {
      // someone carries a newer or different version of us (a previous run of this node): outbid it
      if (!this.leaving && msg.incarnation >= this.self.incarnation && !this.isSelfAlive(msg)) {
        this.refute(msg.incarnation);
      }
      return;
    }
    const m = this.table.get(msg.node);
    if (!m) {
      const member: Member = {
        name: msg.node,
        address: msg.address,
        incarnation: msg.incarnation,
        state: 'alive',
        meta: msg.meta,
        stateChangedAt: this.clock.now(),
      };
      this.table.set(member.name, member);
      // a random position so a newcomer is not probed by everyone at once
      this.probeOrder.splice(
        this.probeIndex + Math.floor(this.random() * (this.probeOrder.length - this.probeIndex + 1)),
        0,
        member.name,
      );
      this.rebroadcast(msg);
      this.emit(member, undefined);
      return;
    }
    if (msg.incarnation <= m.incarnation) return;
    const prev = m.state;
    this.endSuspicion(m.name);
    if (prev === 'suspect') this.counters.suspicionsRefuted++;
    m.incarnation = msg.incarnation;
    m.address = msg.address;
    m.meta = msg.meta;
    if (prev !== 'alive') {
      m.state = 'alive';
      m.stateChangedAt = this.clock.now();
    }
    this.rebroadcast(msg);
    this.emit(m, prev);
  }

  private onSuspect(msg: SuspectMessage): void {
    const m = this.table.get(msg.node);
    if (!m || msg.incarnation < m.incarnation) return;
    if (m === this.self) {
      if (!this.leaving) this.refute(msg.incarnation);
      return;
    }
    if (m.state === 'suspect') {
      // an independent confirmation shortens the timeout; pass it on so others count it too
      if (this.suspicions.get(m.name)?.confirm(msg.from)) this.rebroadcast(msg);
      return;
    }
    if (m.state !== 'alive') return;
    m.incarnation = msg.incarnation;
    m.state = 'suspect';
    m.stateChangedAt = this.clock.now();
    this.counters.suspicionsRaised++;
    this.rebroadcast(msg);
    const n = this.activeCount();
    // confirmations expected; in a cluster too small to supply them the minimum applies at once
    const expected = n - 2 < this.config.suspicionMult - 2 ? 0 : this.config.suspicionMult - 2;
    const min = suspicionMinTimeoutMs(this.config.suspicionMult, n, this.config.probeIntervalMs);
    const max = this.config.suspicionMaxTimeoutMult * min;
    // every member re-probes the suspect: when all of them (all active members but the suspect)
    // fail to reach it, the shorter unanimous timeout applies
    const { suspicionProbes, suspicionUnanimousMult, probeIntervalMs } = this.config;
    const everyoneProbes = suspicionProbes > 0 && n - 2 <= suspicionProbes;
    const unanimous =
      everyoneProbes && suspicionUnanimousMult > 0
        ? { suspectors: n - 1, ms: suspicionUnanimousMult * probeIntervalMs }
        : undefined;
    const incarnation = m.incarnation;
    const suspicion = new Suspicion(
      this.clock,
      msg.from,
      expected,
      min,
      max,
      () => {
        this.suspicions.delete(m.name);
        if (this.closed) return;
        const cur = this.table.get(m.name);
        if (cur && cur.state === 'suspect' && cur.incarnation === incarnation) {
          this.onDead({ type: 'dead', node: cur.name, incarnation, from: this.self.name });
        }
      },
      unanimous,
    );
    this.suspicions.set(m.name, suspicion);
    if (msg.from === this.self.name) {
      // our own verdict: spread it now rather than at the next gossip tick
      this.gossipNow();
    } else if (
      suspicionProbes > 0 &&
      (everyoneProbes || this.random() < suspicionProbes / Math.max(1, n - 2))
    ) {
      // someone else's verdict: check it ourselves, so a confirmation (or the refutation) comes
      // within one probe interval instead of whenever the round robin gets there
      this.probeNow(m.name);
    }
    this.emit(m, 'alive');
  }

  private onDead(msg: DeadMessage | LeaveMessage): void {
    const m = this.table.get(msg.node);
    if (!m || msg.incarnation < m.incarnation) return;
    const next: MemberState = msg.type === 'leave' ? 'left' : 'dead';
    if (m === this.self) {
      // news of our death or departure while we are here: refute (a leaving node lets it stand)
      if (!this.leaving) this.refute(msg.incarnation);
      return;
    }
    if (m.state === 'left' || (m.state === 'dead' && next === 'dead')) return;
    const prev = m.state;
    this.endSuspicion(m.name);
    m.incarnation = msg.incarnation;
    m.state = next;
    m.stateChangedAt = this.clock.now();
    if (next === 'dead') this.counters.declaredDead++;
    this.rebroadcast(msg);
    if (msg.type === 'dead' && msg.from === this.self.name) this.gossipNow();
    this.emit(m, prev);
  }

  private refute(incarnation: number): void {
    this.self.incarnation = Math.max(this.self.incarnation, incarnation) + 1;
    this.counters.selfRefutations++;
    // having to refute means others could not hear from us in time: probe more patiently
    this.awareness.apply(1);
    this.broadcastSelf();
    // in a cluster where everyone re-probes a suspect, everyone probably holds us suspect and the
    // suspicion may be unanimous (short timeout): tell each member directly rather than trust gossip
    // alone (its few transmissions tend to go to the members that pinged us while we were away)
    if (this.config.suspicionProbes > 0 && this.activeCount() - 2 <= this.config.suspicionProbes) {
      const alive = encodeMessage(this.aliveOf(this.self));
      for (const m of this.table.values()) {
        if (m !== this.self && ACTIVE.has(m.state)) this.sendRaw(m.address, [alive]);
      }
    }
  }

  private isSelfAlive(msg: AliveMessage): boolean {
    if (msg.incarnation !== this.self.incarnation || msg.address !== this.self.address) return false;
    const a = Object.entries(msg.meta);
    return a.length === Object.keys(this.self.meta).length && a.every(([k, v]) => this.self.meta[k] === v);
  }

  private endSuspicion(name: string): void {
    const s = this.suspicions.get(name);
    if (s) {
      s.cancel();
      this.suspicions.delete(name);
    }
  }

  // ---- dissemination ---------------------------------------------------------------------------

  private aliveOf(m: Member): AliveMessage {
    return { type: 'alive', node: m.name, address: m.address, incarnation: m.incarnation, meta: m.meta };
  }

  private broadcastSelf(): void {
    this.rebroadcast(this.aliveOf(this.self));
  }

  private rebroadcast(msg: AliveMessage | SuspectMessage | DeadMessage | LeaveMessage): void {
    // suspicions from different members are independent confirmations: keep each one queued
    this.queue.push(msg.node, encodeMessage(msg), undefined, msg.type === 'suspect' ? msg.from : undefined);
  }

  private gossipTick(): void {
    this.later(() => this.gossipTick(), this.config.gossipIntervalMs);
    this.gossipNow();
  }

  /** one round of gossip: queued broadcasts to gossipNodes random members */
  private gossipNow(): void {
    if (this.queue.size === 0 || !this.started || this.closed) return;
    const now = this.clock.now();
    const targets = this.randomMembers(
      this.config.gossipNodes,
      (m) =>
        m !== this.self &&
        (ACTIVE.has(m.state) ||
          (m.state === 'dead' && now - m.stateChangedAt < this.config.gossipToTheDeadMs)),
    );
    const budget = this.config.maxPacketBytes - PACKET_HEADER_BYTES;
    for (const t of targets) {
      const items = this.queue.take(budget, MESSAGE_FRAME_BYTES, this.limit(), 255);
      if (items.length === 0) return;
      this.sendRaw(t.address, items);
    }
  }

  private limit(): number {
    return retransmitLimit(this.config.retransmitMult, this.activeCount());
  }

  /** sends one message with as many queued broadcasts piggybacked as fit the packet */
  private send(to: string, msg: Message): void {
    const primary = encodeMessage(msg);
    const budget = this.config.maxPacketBytes - PACKET_HEADER_BYTES - MESSAGE_FRAME_BYTES - primary.length;
    const extra = this.queue.take(budget, MESSAGE_FRAME_BYTES, this.limit(), 254);
    this.sendRaw(to, [primary, ...extra]);
  }

  private sendRaw(to: string, messages: Uint8Array[]): void {
    const packet = encodePacket(messages);
    this.counters.packetsOut++;
    this.counters.messagesOut += messages.length;
    this.counters.bytesOut += packet.length;
    this.transport.send(to, packet);
  }

  // ---- push-pull ---------------------------------------------------------------------------------

  /** memberlist stretches the push-pull interval in large clusters so the total sync load stays flat */
  private pushPullInterval(): number {
    const n = this.activeCount();
    if (n <= 32) return this.config.pushPullIntervalMs;
    return this.config.pushPullIntervalMs * (Math.ceil(Math.log2(n) - Math.log2(32)) + 1);
  }

  private pushPullTick(): void {
    this.later(() => this.pushPullTick(), this.pushPullInterval());
    if (this.leaving) return;
    // dead members are candidates too: that is how the two sides of a healed partition find each other
    const [peer] = this.randomMembers(1, (m) => m !== this.self && m.state !== 'left');
    if (peer) this.sendState(peer.address, this.nextSeq(), false, false);
  }

  private sendState(to: string, seq: number, response: boolean, join: boolean): void {
    const states: PushPullState[] = [...this.table.values()].map((m) => ({
      name: m.name,
      address: m.address,
      incarnation: m.incarnation,
      state: m.state,
      meta: m.meta,
    }));
    for (const msg of splitPushPull(states, { seq, response, join }, this.config.maxPacketBytes)) {
      this.sendRaw(to, [encodeMessage(msg)]);
    }
  }

  private onPushPull(from: string, msg: PushPullMessage): void {
    for (const s of msg.states) {
      switch (s.state) {
        case 'alive':
          this.onAlive({
            type: 'alive',
            node: s.name,
            address: s.address,
            incarnation: s.incarnation,
            meta: s.meta,
          });
          break;
        // a remote "dead" is only a suspicion here: the member gets its chance to refute
        case 'suspect':
        case 'dead':
          this.onSuspect({ type: 'suspect', node: s.name, incarnation: s.incarnation, from: this.self.name });
          break;
        case 'left':
          this.onDead({ type: 'leave', node: s.name, incarnation: s.incarnation });
          break;
      }
    }
    if (msg.response) {
      if (msg.join) this.joinWaiters.get(msg.seq)?.part(from, msg.part, msg.parts);
      return;
    }
    const key = `${from}/${msg.seq}`;
    if (this.answered.has(key)) return;
    const now = this.clock.now();
    this.answered.set(key, now);
    // Map keeps insertion order: expire from the oldest end, and bound the size against floods
    for (const [k, at] of this.answered) {
      if (now - at < 60_000 && this.answered.size <= 4096) break;
      this.answered.delete(k);
    }
    this.sendState(from, msg.seq, true, msg.join);
  }

  // ---- receive -----------------------------------------------------------------------------------

  private onPacket(from: string, packet: Uint8Array): void {
    // a node takes part only between start() and shutdown(): before, it has not announced itself
    if (!this.started || this.closed) return;
    this.counters.packetsIn++;
    this.counters.bytesIn += packet.length;
    const decoded = decodePacket(packet, this.config.maxPacketBytes);
    if (!decoded.ok) {
      this.dropped[decoded.reason]++;
      return;
    }
    this.counters.messagesIn += decoded.messages.length;
    for (const msg of decoded.messages) this.dispatch(from, msg);
  }

  private dispatch(from: string, msg: Message): void {
    switch (msg.type) {
      case 'ping':
        // after a restart under another name the address may be reused; that ping is not for us
        if (msg.target === this.self.name) this.send(from, { type: 'ack', seq: msg.seq });
        break;
      case 'indirect-ping':
        this.relayPing(from, msg);
        break;
      case 'ack':
        this.acks.get(msg.seq)?.onAck();
        break;
      case 'nack':
        this.acks.get(msg.seq)?.onNack();
        break;
      case 'alive':
        this.onAlive(msg);
        break;
      case 'suspect':
        this.onSuspect(msg);
        break;
      case 'dead':
      case 'leave':
        this.onDead(msg);
        break;
      case 'push-pull':
        this.onPushPull(from, msg);
        break;
    }
  }

  // ---- helpers -------------------------------------------------------------------------------------

  private activeCount(): number {
    let n = 0;
    for (const m of this.table.values()) if (ACTIVE.has(m.state)) n++;
    return n;
  }

  private activeOthers(): number {
    let n = 0;
    for (const m of this.table.values()) if (m !== this.self && ACTIVE.has(m.state)) n++;
    return n;
  }

  /** up to k distinct members passing `ok`, uniformly at random */
  private randomMembers(k: number, ok: (m: Member) => boolean): Member[] {
    const pool: Member[] = [];
    for (const m of this.table.values()) if (ok(m)) pool.push(m);
    const n = Math.min(k, pool.length);
    for (let i = 0; i < n; i++) {
      const j = i + Math.floor(this.random() * (pool.length - i));
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    pool.length = n;
    return pool;
  }

  private emit(m: Member, prev: MemberState | undefined): void {
    if (this.handlers.size === 0) return;
    const snapshot = copy(m);
    for (const h of this.handlers) {
      try {
        h(snapshot, prev);
      } catch (err) {
        // a listener's bug must not leave the protocol half-way through a state change; surface it
        // outside this call stack instead
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

function copy(m: Member): Member {
  return { ...m, meta: { ...m.meta } };
}

function shuffle<T>(a: T[], random: Random): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
}

function validateConfig(c: SwimConfig): void {
  const positive: (keyof SwimConfig)[] = [
    'probeIntervalMs',
    'probeTimeoutMs',
    'suspicionMult',
    'suspicionMaxTimeoutMult',
    'retransmitMult',
    'awarenessMaxMultiplier',
    'pushPullIntervalMs',
    'gossipIntervalMs',
    'maxPacketBytes',
    'deadReapMs',
  ];
  for (const k of positive) {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      throw new RangeError(`swim config ${k} must be > 0`);
  }
  if (c.probeTimeoutMs >= c.probeIntervalMs)
    throw new RangeError('probeTimeoutMs must be below probeIntervalMs');
  if (c.indirectChecks < 0 || c.gossipNodes < 0)
    throw new RangeError('indirectChecks and gossipNodes must be >= 0');
  for (const k of ['suspicionProbes', 'suspicionUnanimousMult'] as const) {
    if (!Number.isFinite(c[k]) || c[k] < 0) throw new RangeError(`swim config ${k} must be >= 0`);
  }
  if (c.maxPacketBytes < 576) throw new RangeError('maxPacketBytes must be at least 576');
}
