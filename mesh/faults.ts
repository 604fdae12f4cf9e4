/**
 * Fault injection for the mesh transports, for chaos runs only (chaos/). Off unless the process
 * is started with `SMG_MESH_FAULTS=<path to a JSON file>`; without it `meshFaultsFromEnv()` returns
 * null and the transports only test that null.
 *
 * The file is re-read whenever it changes (polled every 100 ms) and holds
 *
 *   {"blockHosts": ["127.0.0.3"], "lossRate": 0.1, "delayMs": 20}
 *
 * - blockHosts: mesh traffic (SWIM datagrams, libp2p connections) to or from these hosts is dropped;
 * - lossRate: 0..1, the probability that a datagram (either direction) is dropped;
 * - delayMs: outgoing datagrams are sent this much later.
 *
 * A missing, unreadable or invalid file means no faults; the problem is logged once per distinct
 * problem, never thrown. Only mesh traffic is affected: the HTTP listeners are untouched.
 */
import { readFileSync, statSync } from 'node:fs';
import { isIPv6 } from 'node:net';

export const FAULTS_ENV = 'SMG_MESH_FAULTS';
const POLL_MS = 100;

export interface FaultSpec {
  blockHosts: string[];
  lossRate: number;
  delayMs: number;
}

export const NO_FAULTS: Readonly<FaultSpec> = Object.freeze({ blockHosts: [], lossRate: 0, delayMs: 0 });

/** the part of a pino logger faults use */
export interface FaultLogger {
  warn(obj: object, msg: string): void;
  info?(obj: object, msg: string): void;
}

export type ParseResult = { ok: true; spec: FaultSpec } | { ok: false; error: string };

/** parses and validates the file's text; unknown keys are ignored, missing ones default to no fault */
export function parseFaults(text: string): ParseResult {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not JSON: ${err instanceof Error ? err.message : String(err)}` };
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    return { ok: false, error: 'not a JSON object' };
  }
  const o = raw as Record<string, unknown>;
  const blockHosts = o.blockHosts ?? [];
  if (!Array.isArray(blockHosts) || !blockHosts.every((h) => typeof h === 'string' && h.length > 0)) {
    return { ok: false, error: 'blockHosts must be an array of host strings' };
  }
  const lossRate = o.lossRate ?? 0;
  if (typeof lossRate !== 'number' || !(lossRate >= 0 && lossRate <= 1)) {
    return { ok: false, error: 'lossRate must be a number in 0..1' };
  }
  const delayMs = o.delayMs ?? 0;
  if (typeof delayMs !== 'number' || !Number.isFinite(delayMs) || delayMs < 0 || delayMs > 60_000) {
    return { ok: false, error: 'delayMs must be a number in 0..60000' };
  }
  return {
    ok: true,
    spec: { blockHosts: (blockHosts as string[]).map(normalizeHost), lossRate, delayMs },
  };
}

/** lower case, brackets and an IPv4-mapped IPv6 prefix removed: the form hosts are compared in */
export function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.startsWith('::ffff:') && !isIPv6(h.slice(7))) h = h.slice(7);
  return h;
}

/** the host of `host:port`, `[v6]:port`, a bare host, or a multiaddr (`/ip4/h/tcp/p/...`) */
export function hostOfAddress(addr: string): string {
  if (addr.startsWith('/')) {
    const parts = addr.split('/');
    const i = parts.findIndex(
      (p) => p === 'ip4' || p === 'ip6' || p === 'dns4' || p === 'dns6' || p === 'dns',
    );
    return i >= 0 && parts[i + 1] !== undefined ? normalizeHost(parts[i + 1]) : '';
  }
  if (addr.startsWith('[')) {
    const end = addr.indexOf(']');
    return normalizeHost(end > 0 ? addr.slice(1, end) : addr);
  }
  const colon = addr.lastIndexOf(':');
  if (colon > 0 && addr.indexOf(':') === colon) return normalizeHost(addr.slice(0, colon));
  return normalizeHost(addr);
}

/** The current faults of a process; `onChange` listeners run after every accepted change. */
export class MeshFaults {
  private spec: FaultSpec = { ...NO_FAULTS, blockHosts: [] };
  private blocked = new Set<string>();
  private readonly listeners = new Set<(spec: FaultSpec) => void>();
  private lastProblem = '';
  private timer: ReturnType<typeof setInterval> | undefined;
  /** mtime, size and inode of the file when last read ('' = missing) */
  private stamp = '';
  /** counters, for tests and logs */
  readonly counts = { blockedOut: 0, blockedIn: 0, lostOut: 0, lostIn: 0, delayed: 0, deniedConnections: 0 };

  constructor(
    private readonly path: string | undefined = undefined,
    private readonly logger: FaultLogger | undefined = undefined,
    private readonly random: () => number = Math.random,
  ) {}

  /** reads the file once and polls it for changes (unref'd: never keeps the process alive) */
  start(): this {
    if (this.path === undefined || this.timer !== undefined) return this;
    this.stamp = this.statStamp();
    this.reload();
    this.timer = setInterval(() => {
      const stamp = this.statStamp();
      if (stamp === this.stamp) return;
      this.stamp = stamp;
      this.reload();
    }, POLL_MS);
    this.timer.unref();
    return this;
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }

  private statStamp(): string {
    if (this.path === undefined) return '';
    try {
      const st = statSync(this.path);
      return `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      return '';
    }
  }

  /** re-reads the file; a missing or invalid file = no faults (logged once per distinct problem) */
  reload(): void {
    if (this.path === undefined) return;
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      this.problem(`cannot read ${this.path} (${code})`);
      this.set(NO_FAULTS);
      return;
    }
    const r = parseFaults(text);
    if (!r.ok) {
      this.problem(`invalid ${this.path}: ${r.error}`);
      this.set(NO_FAULTS);
      return;
    }
    this.lastProblem = '';
    this.set(r.spec);
  }

  /** replaces the faults (what reload() does with a parsed file; tests call it directly) */
  set(spec: FaultSpec): void {
    const next: FaultSpec = {
      blockHosts: spec.blockHosts.map(normalizeHost),
      lossRate: spec.lossRate,
      delayMs: spec.delayMs,
    };
    const same =
      next.lossRate === this.spec.lossRate &&
      next.delayMs === this.spec.delayMs &&
      next.blockHosts.length === this.spec.blockHosts.length &&
      next.blockHosts.every((h, i) => h === this.spec.blockHosts[i]);
    if (same) return;
    this.spec = next;
    this.blocked = new Set(next.blockHosts);
    this.logger?.warn({ faults: next }, 'mesh faults: injecting');
    for (const l of [...this.listeners]) {
      try {
        l(next);
      } catch (err) {
        this.logger?.warn(
          { err: err instanceof Error ? err.message : String(err) },
          'mesh faults: listener threw',
        );
      }
    }
  }

  current(): FaultSpec {
    return { ...this.spec, blockHosts: [...this.spec.blockHosts] };
  }

  onChange(listener: (spec: FaultSpec) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** is mesh traffic to/from this host (bare host, host:port, [v6]:port or multiaddr) blocked? */
  isBlocked(addr: string): boolean {
    if (this.blocked.size === 0) return false;
    return this.blocked.has(hostOfAddress(addr));
  }

  /**
   * What to do with an outgoing datagram to `to`: 'drop', or the delay in ms (0 = send now).
   * Blocking is checked first, then loss, then delay.
   */
  outgoing(to: string): 'drop' | number {
    if (this.isBlocked(to)) {
      this.counts.blockedOut++;
      return 'drop';
    }
    if (this.spec.lossRate > 0 && this.random() < this.spec.lossRate) {
      this.counts.lostOut++;
      return 'drop';
    }
    if (this.spec.delayMs > 0) this.counts.delayed++;
    return this.spec.delayMs;
  }

  /** should an incoming datagram from `from` be dropped? */
  dropIncoming(from: string): boolean {
    if (this.isBlocked(from)) {
      this.counts.blockedIn++;
      return true;
    }
    if (this.spec.lossRate > 0 && this.random() < this.spec.lossRate) {
      this.counts.lostIn++;
      return true;
    }
    return false;
  }

  /** a libp2p connection (dial or inbound) to/from this address is denied; counted */
  denyConnection(addr: string): boolean {
    if (!this.isBlocked(addr)) return false;
    this.counts.deniedConnections++;
    return true;
  }

  private problem(msg: string): void {
    if (msg === this.lastProblem) return;
    this.lastProblem = msg;
    this.logger?.warn({ env: FAULTS_ENV }, `mesh faults: ${msg}; no faults injected`);
  }
}

/**
 * The faults named by `SMG_MESH_FAULTS`, watching the file; null (no fault injection at all, the
 * normal case) when the variable is unset or empty.
 */
export function meshFaultsFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  logger?: FaultLogger,
): MeshFaults | null {
  const file = env[FAULTS_ENV];
  if (file === undefined || file === '') return null;
  logger?.warn({ file }, `mesh faults: ${FAULTS_ENV} is set, fault injection enabled (chaos testing only)`);
  return new MeshFaults(file, logger).start();
}
