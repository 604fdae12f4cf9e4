/**
 * The priority scheduler (SMG `--priority-scheduler-enabled`, inventory §5.5): four classes, low to
 * high `bulk, default, interactive, system`, chosen by `x-smg-priority` and clamped down to the
 * tenant's `max_class`. Slots come from the fleet's capacity; each class holds a reservation that
 * lower classes cannot take while it is unused. A request that finds no slot may preempt one
 * lower-class request that has not sent its first byte (if its class may preempt), else waits in its
 * class's FIFO queue. Released slots go to the highest class first, except that a queue head older
 * than its class's starvation threshold is served first, past the reservations.
 *
 * Differences from SMG, all deliberate:
 * - Preemption is synchronous: the victim's slot passes to the preemptor at once (the victim's hook
 *   makes the proxy answer 503 and abort upstream), instead of polling up to 50 ms for it to free.
 *   A preemption happens only when the freed slot is usable by the preemptor.
 * - When the reservations do not fit the capacity, SMG clamps them (system first) into the whole
 *   capacity, which leaves `default` and `bulk` no slot at all on a fleet below ~180 slots with the
 *   built-in settings (they then get in only through starvation promotion, after 30 s). Here they
 *   are clamped into 3/4 of the capacity, so a quarter always stays shared.
 * - A new arrival queues behind waiters of its own class instead of racing them for a slot.
 * - The tenant label of the clamp and unknown-priority counters keeps the first N tenants it sees
 *   (`--priority-scheduler-tenant-metric-top-n`); later ones are counted as `other`.
 */
import type { PriorityClass } from '../../cli/config-types.js';
import type { Metrics } from '../../observability/metrics.js';
import { ConfigFileError, parseConfigSource, readConfigSource } from '../../protocols/config-file.js';
import { MAX_DURATION_NOTE, MAX_DURATION_SECS } from '../../protocols/durations.js';
import { errors, type SmgError } from '../../protocols/errors.js';
import type { WorkerView } from '../../state/registry.js';
import {
  Alarm,
  HOLD_EWMA_ALPHA,
  WaitQueue,
  type Queued,
  type QueuedWait,
  type Timers,
} from './concurrency.js';

/** low → high; a class's index is its rank */
export const PRIORITY_CLASSES: readonly PriorityClass[] = ['bulk', 'default', 'interactive', 'system'];
const BULK = 0;
const DEFAULT = 1;
const SYSTEM = 3;

export function classRank(cls: PriorityClass): number {
  return PRIORITY_CLASSES.indexOf(cls);
}

export interface ParsedPriority {
  rank: number;
  /** a value was sent that names no class (treated as `default`) */
  unknown: boolean;
}

/** `x-smg-priority`, case-insensitive and trimmed; absent or empty means `default` */
export function parsePriority(raw: string | undefined): ParsedPriority {
  if (raw === undefined) return { rank: DEFAULT, unknown: false };
  const v = raw.trim().toLowerCase();
  if (v === '') return { rank: DEFAULT, unknown: false };
  const rank = PRIORITY_CLASSES.indexOf(v as PriorityClass);
  return rank < 0 ? { rank: DEFAULT, unknown: true } : { rank, unknown: false };
}

export interface ClassSettings {
  /** slots always reserved for the class */
  reservedFloor: number;
  /** share of the capacity reserved: effective = max(floor, ceil(share × capacity)) */
  reservedPerSlot: number;
  queueSize: number;
  queueTimeoutSecs: number;
  starvationThresholdSecs: number;
  canPreempt: boolean;
}

/** SMG's built-in per-class settings */
export const DEFAULT_CLASS_SETTINGS: Readonly<Record<PriorityClass, Readonly<ClassSettings>>> = {
  system: {
    reservedFloor: 32,
    reservedPerSlot: 0,
    queueSize: 64,
    queueTimeoutSecs: 30,
    starvationThresholdSecs: 5,
    canPreempt: true,
  },
  interactive: {
    reservedFloor: 128,
    reservedPerSlot: 0.25,
    queueSize: 256,
    queueTimeoutSecs: 30,
    starvationThresholdSecs: 5,
    canPreempt: true,
  },
  default: {
    reservedFloor: 0,
    reservedPerSlot: 0.1,
    queueSize: 512,
    queueTimeoutSecs: 60,
    starvationThresholdSecs: 30,
    canPreempt: false,
  },
  bulk: {
    reservedFloor: 0,
    reservedPerSlot: 0,
    queueSize: 1024,
    queueTimeoutSecs: 300,
    starvationThresholdSecs: 120,
    canPreempt: false,
  },
};

/** one class's overrides as written in the YAML file */
export interface ClassConfigYaml {
  reserved_floor?: number;
  reserved_per_slot?: number;
  queue_size?: number;
  queue_timeout_secs?: number;
  starvation_threshold_secs?: number;
  can_preempt?: boolean;
}

/** `--priority-scheduler-config`, validated */
export interface PrioritySchedulerFile {
  /** fixed capacity (slots) instead of the one derived from the workers */
  capacity?: number;
  classes?: Partial<Record<PriorityClass, ClassConfigYaml>>;
  tenant_policies?: { tenant_key: string; max_class: PriorityClass }[];
}

// ---------------------------------------------------------------------------------------------
// config file

const FILE_KEYS = ['capacity', 'classes', 'tenant_policies'];
const CLASS_KEYS: (keyof ClassConfigYaml)[] = [
  'reserved_floor',
  'reserved_per_slot',
  'queue_size',
  'queue_timeout_secs',
  'starvation_threshold_secs',
  'can_preempt',
];
const MAX_CAPACITY = 65_535;

function show(v: unknown): string {
  return typeof v === 'string'
    ? JSON.stringify(v)
    : v === undefined
      ? 'nothing'
      : (JSON.stringify(v) ?? String(v));
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** reads and validates `--priority-scheduler-config`; errors name the file and the key */
export function loadPrioritySchedulerConfig(path: string): PrioritySchedulerFile {
  let doc: unknown;
  try {
    doc = parseConfigSource(readConfigSource(path), 'yaml');
  } catch (err) {
    const problem = err instanceof ConfigFileError ? err.problem : 'invalid';
    const what = problem === 'unreadable' ? 'cannot read: ' : problem === 'invalid' ? 'invalid YAML: ' : '';
    throw new Error(`priority scheduler config ${path}: ${what}${(err as Error).message}`, { cause: err });
  }
  return parsePrioritySchedulerConfig(doc, path);
}

/** validates an already parsed document (`source` names it in errors) */
export function parsePrioritySchedulerConfig(doc: unknown, source: string): PrioritySchedulerFile {
  const fail = (where: string, problem: string): never => {
    throw new Error(`priority scheduler config ${source}: ${where}: ${problem}`);
  };
  if (doc === null || doc === undefined) return {};
  if (!isMapping(doc)) return fail('top level', `expected a mapping, got ${show(doc)}`);
  for (const k of Object.keys(doc)) {
    if (!FILE_KEYS.includes(k)) fail(k, `unknown key (expected one of ${FILE_KEYS.join(', ')})`);
  }
  const out: PrioritySchedulerFile = {};
  const nonNegInt = (where: string, v: unknown, min = 0): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
      fail(where, `expected an integer ≥ ${min}, got ${show(v)}`);
    }
    return v as number;
  };
  if (doc.capacity !== undefined) {
    out.capacity = nonNegInt('capacity', doc.capacity, 1);
    if (out.capacity > MAX_CAPACITY) fail('capacity', `must be ≤ ${MAX_CAPACITY}, got ${out.capacity}`);
  }
  if (doc.classes !== undefined && doc.classes !== null) {
    if (!isMapping(doc.classes))
      fail('classes', `expected a mapping of class names, got ${show(doc.classes)}`);
    const classes: Partial<Record<PriorityClass, ClassConfigYaml>> = {};
    for (const [name, body] of Object.entries(doc.classes as Record<string, unknown>)) {
      const where = `classes.${name}`;
      if (!PRIORITY_CLASSES.includes(name as PriorityClass)) {
        fail(where, `unknown class (expected one of ${PRIORITY_CLASSES.join(', ')})`);
      }
      if (body === null || body === undefined) continue;
      if (!isMapping(body)) fail(where, `expected a mapping, got ${show(body)}`);
      const b = body as Record<string, unknown>;
      const cfg: ClassConfigYaml = {};
      for (const [k, v] of Object.entries(b)) {
        const at = `${where}.${k}`;
        switch (k) {
          case 'reserved_floor':
          case 'queue_size':
            cfg[k] = nonNegInt(at, v);
            break;
          case 'queue_timeout_secs':
          case 'starvation_threshold_secs':
            if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > MAX_DURATION_SECS) {
              fail(
                at,
                `expected a number of seconds > 0 and at most ${MAX_DURATION_SECS} (${MAX_DURATION_NOTE}), got ${show(v)}`,
              );
            }
            cfg[k] = v as number;
            break;
          case 'reserved_per_slot':
            if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1) {
              fail(at, `expected a share of the capacity between 0 and 1, got ${show(v)}`);
            }
            cfg[k] = v as number;
            break;
          case 'can_preempt':
            if (typeof v !== 'boolean') fail(at, `expected true or false, got ${show(v)}`);
            cfg[k] = v as boolean;
            break;
          default:
            fail(at, `unknown key (expected one of ${CLASS_KEYS.join(', ')})`);
        }
      }
      classes[name as PriorityClass] = cfg;
    }
    out.classes = classes;
  }
  if (doc.tenant_policies !== undefined && doc.tenant_policies !== null) {
    if (!Array.isArray(doc.tenant_policies)) {
      fail('tenant_policies', `expected a list of {tenant_key, max_class}, got ${show(doc.tenant_policies)}`);
    }
    const seen = new Set<string>();
    out.tenant_policies = (doc.tenant_policies as unknown[]).map((entry, i) => {
      const where = `tenant_policies[${i}]`;
      if (!isMapping(entry)) return fail(where, `expected a mapping, got ${show(entry)}`);
      for (const k of Object.keys(entry)) {
        if (k !== 'tenant_key' && k !== 'max_class') {
          fail(`${where}.${k}`, 'unknown key (expected tenant_key, max_class)');
        }
      }
      const key = entry.tenant_key;
      if (typeof key !== 'string' || key.trim() === '' || key.trim() !== key) {
        fail(
          `${where}.tenant_key`,
          `expected a non-empty tenant key without spaces around it, got ${show(key)}`,
        );
      }
      if (seen.has(key as string)) fail(`${where}.tenant_key`, `duplicate tenant ${show(key)}`);
      seen.add(key as string);
      const cls = entry.max_class;
      if (typeof cls !== 'string' || !PRIORITY_CLASSES.includes(cls as PriorityClass)) {
        fail(`${where}.max_class`, `expected one of ${PRIORITY_CLASSES.join(', ')}, got ${show(cls)}`);
      }
      return { tenant_key: key as string, max_class: cls as PriorityClass };
    });
  }
  if (out.capacity !== undefined) {
    // a fixed capacity that cannot hold the reservations is a mistake SMG refuses at start too
    const classes = classSettings(out);
    const total = desiredReservations(classes, out.capacity).reduce((a, b) => a + b, 0);
    if (total > out.capacity) {
      fail('capacity', `${out.capacity} slots cannot hold the class reservations (${total} slots)`);
    }
  }
  return out;
}

/** the four classes' settings, built-in defaults overridden by the file (index = rank) */
export function classSettings(file: PrioritySchedulerFile | undefined): ClassSettings[] {
  return PRIORITY_CLASSES.map((name) => {
    const d = DEFAULT_CLASS_SETTINGS[name];
    const y = file?.classes?.[name] ?? {};
    return {
      reservedFloor: y.reserved_floor ?? d.reservedFloor,
      reservedPerSlot: y.reserved_per_slot ?? d.reservedPerSlot,
      queueSize: y.queue_size ?? d.queueSize,
      queueTimeoutSecs: y.queue_timeout_secs ?? d.queueTimeoutSecs,
      starvationThresholdSecs: y.starvation_threshold_secs ?? d.starvationThresholdSecs,
      canPreempt: y.can_preempt ?? d.canPreempt,
    };
  });
}

// ---------------------------------------------------------------------------------------------
// capacity and reservations

/** slots a worker is assumed to have when it does not report `max_running_requests` */
export const SLOTS_PER_UNREPORTED_WORKER = 64;
/** capacity when no worker is routable and `--max-concurrent-requests` is off */
export const CAPACITY_WITHOUT_WORKERS = 1024;

/**
 * Capacity of the routable workers: the sum of their `max_running_requests` labels when all report
 * one, reporters plus 64 per non-reporter otherwise, `fallback` when there are none.
 */
export function workerCapacity(workers: readonly WorkerView[], fallback = CAPACITY_WITHOUT_WORKERS): number {
  let sum = 0;
  let routable = 0;
  for (const w of workers) {
    if (!w.routable) continue;
    routable++;
    const raw = w.spec.labels?.max_running_requests;
    const n = raw === undefined ? NaN : Number(raw.trim());
    sum += Number.isInteger(n) && n > 0 ? n : SLOTS_PER_UNREPORTED_WORKER;
  }
  return Math.min(routable === 0 ? fallback : sum, MAX_CAPACITY);
}

/** max(floor, ceil(share × capacity)) per class, each at most the capacity */
export function desiredReservations(classes: readonly ClassSettings[], capacity: number): number[] {
  return classes.map((c) =>
    Math.min(capacity, Math.max(c.reservedFloor, Math.ceil(c.reservedPerSlot * capacity))),
  );
}

/** the reservations in force: as desired when they fit; else clamped, highest class first, into 3/4 of capacity */
export function effectiveReservations(classes: readonly ClassSettings[], capacity: number): number[] {
  const desired = desiredReservations(classes, capacity);
  if (desired.reduce((a, b) => a + b, 0) <= capacity) return desired;
  let left = capacity - Math.ceil(capacity / 4);
  const out = [0, 0, 0, 0];
  for (let c = SYSTEM; c >= BULK; c--) {
    out[c] = Math.min(desired[c], left);
    left -= out[c];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// tenant label cardinality

/** the first `limit` tenants keep their name as a metric label; later ones become `other` */
export class TenantLabels {
  private readonly known = new Set<string>();
  constructor(private readonly limit: number) {}

  label(tenant: string): string {
    if (this.known.has(tenant)) return tenant;
    if (this.known.size < this.limit) {
      this.known.add(tenant);
      return tenant;
    }
    return 'other';
  }
}

// ---------------------------------------------------------------------------------------------
// the scheduler

export interface PrioritySettings {
  /** per class, index = rank */
  classes: ClassSettings[];
  defaultMaxClass: PriorityClass;
  /** tenant key → max class */
  tenantMaxClass: Map<string, PriorityClass>;
  /** fixed capacity; otherwise `setCapacity` feeds the workers' */
  fixedCapacity?: number;
  tenantMetricTopN: number;
}

export function prioritySettings(
  file: PrioritySchedulerFile | undefined,
  opts: { defaultMaxClass: PriorityClass; tenantMetricTopN: number },
): PrioritySettings {
  return {
    classes: classSettings(file),
    defaultMaxClass: opts.defaultMaxClass,
    tenantMaxClass: new Map((file?.tenant_policies ?? []).map((p) => [p.tenant_key, p.max_class])),
    ...(file?.capacity !== undefined && { fixedCapacity: file.capacity }),
    tenantMetricTopN: opts.tenantMetricTopN,
  };
}

export interface PriorityDeps {
  now: () => number;
  timers: Timers;
  metrics?: Metrics;
  /** capacity until the first `setCapacity` (ignored with a fixed capacity) */
  initialCapacity?: number;
}

export type PermitDone = (err: SmgError | undefined, permit: SchedulerPermit | undefined) => void;

/** an admitted request's slot */
export class SchedulerPermit {
  /** set by the request path: called at most once if the request is preempted before its first byte */
  onPreempt: (() => void) | undefined = undefined;
  firstByteSent = false;
  preempted = false;
  released = false;
  /** the outcome counter was bumped (admitted or preempted) */
  counted = false;

  constructor(
    private readonly owner: PriorityScheduler,
    readonly rank: number,
    readonly admittedAt: number,
  ) {}

  get className(): PriorityClass {
    return PRIORITY_CLASSES[this.rank];
  }

  /** the response started: from now on the request cannot be preempted */
  firstByte(): void {
    if (this.firstByteSent || this.released || this.preempted) return;
    this.firstByteSent = true;
    this.owner.firstByteOf(this);
  }

  /** idempotent */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.owner.releasePermit(this);
  }
}

class PriorityWaiter implements Queued, QueuedWait {
  queued = false;
  constructor(
    private readonly owner: PriorityScheduler,
    readonly rank: number,
    readonly enqueuedAt: number,
    readonly done: PermitDone,
  ) {}

  cancel(): void {
    this.owner.cancelWaiter(this);
  }
}

export class PriorityScheduler {
  private capacity: number;
  private reserved: number[];
  private readonly inflight = [0, 0, 0, 0];
  private readonly queues = [0, 1, 2, 3].map(() => new WaitQueue<PriorityWaiter>());
  /** admitted, no first byte yet: the preemption candidates, oldest first */
  private readonly preemptible = [0, 1, 2, 3].map(() => new Set<SchedulerPermit>());
  private readonly alarm: Alarm;
  private readonly labels: TenantLabels;
  private holdMs = 1000;
  private dispatching = false;
  private redispatch = false;
  private closed = false;

  constructor(
    readonly settings: PrioritySettings,
    private readonly deps: PriorityDeps,
  ) {
    this.capacity = Math.max(
      0,
      Math.floor(settings.fixedCapacity ?? deps.initialCapacity ?? CAPACITY_WITHOUT_WORKERS),
    );
    this.reserved = effectiveReservations(settings.classes, this.capacity);
    this.alarm = new Alarm(deps.timers, deps.now, () => this.dispatch());
    this.labels = new TenantLabels(settings.tenantMetricTopN);
  }

  /** the effective class of a request: the header's class clamped to the tenant's max class */
  resolve(tenant: string, rawPriority: string | undefined): number {
    const parsed = parsePriority(rawPriority);
    const m = this.deps.metrics;
    if (parsed.unknown && m) m.inc(m.schedulerUnknownPriority, { tenant: this.labels.label(tenant) });
    const max = classRank(this.settings.tenantMaxClass.get(tenant) ?? this.settings.defaultMaxClass);
    if (parsed.rank <= max) return parsed.rank;
    if (m) {
      m.inc(m.schedulerClamp, {
        tenant: this.labels.label(tenant),
        requested_class: PRIORITY_CLASSES[parsed.rank],
        effective_class: PRIORITY_CLASSES[max],
      });
    }
    return max;
  }

  /**
   * Admits a request of class `rank` (see `resolve`): `done` runs synchronously when the decision is
   * immediate; the returned handle exists only while the request is queued.
   */
  admit(rank: number, done: PermitDone): QueuedWait | undefined {
    const queue = this.queues[rank];
    if (queue.size > 0) this.dispatch();
    const now = this.deps.now();
    if (queue.size === 0) {
      if (this.available(rank) > 0) {
        done(undefined, this.grant(rank, now));
        return undefined;
      }
      const permit = this.settings.classes[rank].canPreempt ? this.preemptFor(rank, now) : undefined;
      if (permit) {
        done(undefined, permit);
        return undefined;
      }
    }
    if (this.closed || queue.size >= this.settings.classes[rank].queueSize) {
      this.outcome(rank, 'rejected_queue_full');
      done(errors.schedulerQueueFull(PRIORITY_CLASSES[rank], this.expectedWaitSecs(rank)), undefined);
      return undefined;
    }
    const w = new PriorityWaiter(this, rank, now, done);
    queue.push(w);
    this.arm(now);
    return w;
  }

  /** the observed fleet capacity changed (ignored when the file fixes it) */
  setCapacity(capacity: number): void {
    if (this.settings.fixedCapacity !== undefined) return;
    const next = Math.max(0, Math.min(MAX_CAPACITY, Math.floor(capacity)));
    if (next === this.capacity) return;
    this.capacity = next;
    this.reserved = effectiveReservations(this.settings.classes, next);
    this.dispatch();
  }

  /** sets the smg_scheduler_* gauges; called from the metrics scrape hook */
  refreshGauges(): void {
    const m = this.deps.metrics;
    if (!m) return;
    let total = 0;
    for (let c = BULK; c <= SYSTEM; c++) {
      const cls = PRIORITY_CLASSES[c];
      const depth = this.queues[c].size;
      const limit = this.settings.classes[c].queueSize;
      total += this.inflight[c];
      m.schedulerInflight.set({ class: cls }, this.inflight[c]);
      m.schedulerQueueDepth.set({ class: cls }, depth);
      m.schedulerQueueSizeLimit.set({ class: cls }, limit);
      m.schedulerCapacityPressure.set({ class: cls }, this.pressure(c));
    }
    m.schedulerUtilization.set(this.capacity > 0 ? total / this.capacity : 0);
  }

  /** the longest any class lets a request wait */
  maxQueueWaitMs(): number {
    let secs = 0;
    for (let c = BULK; c <= SYSTEM; c++) secs = Math.max(secs, this.settings.classes[c].queueTimeoutSecs);
    return secs * 1000;
  }

  stats(): {
    capacity: number;
    classes: Record<PriorityClass, { inflight: number; queued: number; reserved: number; available: number }>;
  } {
    const classes = {} as Record<
      PriorityClass,
      { inflight: number; queued: number; reserved: number; available: number }
    >;
    for (let c = BULK; c <= SYSTEM; c++) {
      classes[PRIORITY_CLASSES[c]] = {
        inflight: this.inflight[c],
        queued: this.queues[c].size,
        reserved: this.reserved[c],
        available: this.available(c),
      };
    }
    return { capacity: this.capacity, classes };
  }

  /** stops the timer and answers every waiter with `err(class, waitedSecs)` */
  close(err: (cls: PriorityClass, waitedSecs: number) => SmgError): void {
    this.closed = true;
    this.alarm.clear();
    const now = this.deps.now();
    for (let c = SYSTEM; c >= BULK; c--) {
      for (const w of this.queues[c].drain())
        w.done(err(PRIORITY_CLASSES[c], (now - w.enqueuedAt) / 1000), undefined);
    }
  }

  /** @internal */
  firstByteOf(p: SchedulerPermit): void {
    this.preemptible[p.rank].delete(p);
    this.countAdmitted(p);
  }

  /** @internal */
  releasePermit(p: SchedulerPermit): void {
    this.preemptible[p.rank].delete(p);
    if (p.preempted) return; // its slot already went to the preemptor
    this.countAdmitted(p);
    this.inflight[p.rank]--;
    this.holdMs += HOLD_EWMA_ALPHA * (Math.max(0, this.deps.now() - p.admittedAt) - this.holdMs);
    if (this.queued() > 0) this.dispatch();
  }

  /** @internal */
  cancelWaiter(w: PriorityWaiter): void {
    if (!this.queues[w.rank].remove(w)) return;
    const now = this.deps.now();
    this.outcome(w.rank, 'client_cancelled');
    this.observeWait(w, now);
    this.arm(now);
  }

  /**
   * Slots `rank` may take now: free capacity minus what higher classes hold reserved but do not
   * use. A class's own reservation never limits itself.
   */
  private available(rank: number): number {
    let used = 0;
    for (let c = BULK; c <= SYSTEM; c++) used += this.inflight[c];
    let held = 0;
    for (let c = rank + 1; c <= SYSTEM; c++) held += Math.max(0, this.reserved[c] - this.inflight[c]);
    return this.capacity - used - held;
  }

  private queued(): number {
    return this.queues[0].size + this.queues[1].size + this.queues[2].size + this.queues[3].size;
  }

  private grant(rank: number, now: number): SchedulerPermit {
    this.inflight[rank]++;
    const p = new SchedulerPermit(this, rank, now);
    this.preemptible[rank].add(p);
    return p;
  }

  /**
   * Takes the slot of the youngest not-yet-answering request of the lowest class below `rank`
   * whose request path can be told (`onPreempt` set). Only when that slot is usable by `rank`:
   * the victims are all below `rank`, so one freed slot helps iff `available(rank) ≥ 0`.
   */
  private preemptFor(rank: number, now: number): SchedulerPermit | undefined {
    if (this.available(rank) < 0) return undefined;
    for (let c = BULK; c < rank; c++) {
      let victim: SchedulerPermit | undefined;
      for (const p of this.preemptible[c]) if (p.onPreempt) victim = p;
      if (!victim) continue;
      this.preemptible[c].delete(victim);
      victim.preempted = true;
      this.inflight[c]--;
      const m = this.deps.metrics;
      if (m)
        m.inc(m.schedulerPreemption, { victim_class: PRIORITY_CLASSES[c], by_class: PRIORITY_CLASSES[rank] });
      if (!victim.counted) {
        victim.counted = true;
        this.outcome(c, 'preempted');
      }
      const permit = this.grant(rank, now);
      const hook = victim.onPreempt as () => void;
      victim.onPreempt = undefined;
      hook();
      return permit;
    }
    return undefined;
  }

  /** serves queue heads while slots allow; re-entrant calls fold into the running loop */
  private dispatch(): void {
    if (this.dispatching) {
      this.redispatch = true;
      return;
    }
    this.dispatching = true;
    try {
      do {
        this.redispatch = false;
        while (this.serveOne()) {
          /* keep serving */
        }
      } while (this.redispatch);
    } finally {
      this.dispatching = false;
    }
    this.arm(this.deps.now());
  }

  private serveOne(): boolean {
    const now = this.deps.now();
    this.expire(now);
    let used = 0;
    for (let c = BULK; c <= SYSTEM; c++) used += this.inflight[c];
    // a head past its starvation threshold goes first, lowest class first, past the reservations
    for (let c = BULK; c < SYSTEM && used < this.capacity; c++) {
      const head = this.queues[c].peek();
      if (!head || now - head.enqueuedAt < this.settings.classes[c].starvationThresholdSecs * 1000) continue;
      const m = this.deps.metrics;
      if (m) m.inc(m.schedulerStarvationPromotion, { class: PRIORITY_CLASSES[c] });
      this.serveHead(c, now);
      return true;
    }
    for (let c = SYSTEM; c >= BULK; c--) {
      if (this.queues[c].size > 0 && this.available(c) > 0) {
        this.serveHead(c, now);
        return true;
      }
    }
    return false;
  }

  private serveHead(rank: number, now: number): void {
    const w = this.queues[rank].shift() as PriorityWaiter;
    this.observeWait(w, now);
    w.done(undefined, this.grant(rank, now));
  }

  /** answers queue heads past their class's timeout with 408 */
  private expire(now: number): void {
    for (let c = BULK; c <= SYSTEM; c++) {
      const timeoutMs = this.settings.classes[c].queueTimeoutSecs * 1000;
      const q = this.queues[c];
      for (let head = q.peek(); head && now - head.enqueuedAt >= timeoutMs; head = q.peek()) {
        q.shift();
        this.outcome(c, 'rejected_queue_timeout');
        this.observeWait(head, now);
        const cls = PRIORITY_CLASSES[c];
        head.done(
          errors.schedulerQueueTimeout(cls, (now - head.enqueuedAt) / 1000, this.expectedWaitSecs(c)),
          undefined,
        );
      }
    }
  }

  /** wakes for the earliest head timeout or starvation threshold still ahead */
  private arm(now: number): void {
    let at = Infinity;
    if (!this.closed) {
      for (let c = BULK; c <= SYSTEM; c++) {
        const head = this.queues[c].peek();
        if (!head) continue;
        const s = this.settings.classes[c];
        at = Math.min(at, head.enqueuedAt + s.queueTimeoutSecs * 1000);
        const starvedAt = head.enqueuedAt + s.starvationThresholdSecs * 1000;
        if (c < SYSTEM && starvedAt > now) at = Math.min(at, starvedAt);
      }
    }
    this.alarm.set(at);
  }

  private countAdmitted(p: SchedulerPermit): void {
    if (p.counted) return;
    p.counted = true;
    this.outcome(p.rank, 'admitted');
  }

  private outcome(rank: number, outcome: string): void {
    const m = this.deps.metrics;
    if (m) m.inc(m.schedulerAdmit, { class: PRIORITY_CLASSES[rank], outcome });
  }

  private observeWait(w: PriorityWaiter, now: number): void {
    this.deps.metrics?.schedulerQueueWait.observe(
      { class: PRIORITY_CLASSES[w.rank] },
      (now - w.enqueuedAt) / 1000,
    );
  }

  /** SMG's per-class pressure: max(queue fill, in-flight beyond the reservation over the headroom) */
  private pressure(rank: number): number {
    const limit = this.settings.classes[rank].queueSize;
    const queue = limit > 0 ? this.queues[rank].size / limit : 0;
    let higher = 0;
    for (let c = rank + 1; c <= SYSTEM; c++) higher += this.reserved[c];
    const headroom = Math.max(1, this.capacity - higher);
    const slots = Math.max(0, this.inflight[rank] - this.reserved[rank]) / headroom;
    return Math.min(1, Math.max(queue, slots));
  }

  /** a rough wait for a new arrival: the queues it waits behind drained at the slot turnover */
  private expectedWaitSecs(rank: number): number {
    let ahead = 1;
    for (let c = rank; c <= SYSTEM; c++) ahead += this.queues[c].size;
    const secs = ((ahead / Math.max(1, this.capacity)) * this.holdMs) / 1000;
    return Math.min(Math.max(secs, 1), this.settings.classes[rank].queueTimeoutSecs);
  }
}
