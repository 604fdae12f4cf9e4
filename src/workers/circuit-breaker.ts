/**
 * Per-worker circuit breakers (inventory §5.2), local to this node: one peer's breaker never takes
 * a worker out fleet-wide (ARCHITECTURE.md §3).
 *
 * Closed → Open after `failureThreshold` consecutive failures, counting only failures inside the
 * sliding window (`--cb-window-duration-secs`, which SMG accepts but ignores): a worker that failed
 * nine times over an hour of idleness is not one failure away from being cut off. Open → HalfOpen
 * after `timeoutMs` (on a timer, so the worker re-enters the candidate lists without waiting for a
 * request that could never pick it). HalfOpen lets at most `successThreshold` trial requests through
 * at once; `successThreshold` consecutive successes close the circuit, any failure re-opens it.
 *
 * What counts: connection errors, timeouts and 5xx are failures; any 4xx (408 and 429 included) is
 * the client's or the engine's admission problem, never the worker's failure (sglang#25811).
 */
import type { CircuitBreakerConfig } from '../cli/config-types.js';
import type { WorkerResilience } from '../state/worker.js';

export type BreakerState = 'closed' | 'open' | 'half_open';

/** SMG's gauge encoding */
export const BREAKER_STATE_CODE: Record<BreakerState, number> = { closed: 0, open: 1, half_open: 2 };

export interface BreakerSettings {
  failureThreshold: number;
  successThreshold: number;
  timeoutMs: number;
  windowMs: number;
  disabled: boolean;
}

export type Outcome = 'success' | 'failure';

/** failure iff the worker is at fault: connection error / timeout (no status) or a 5xx */
export function outcomeOf(status: number | undefined): Outcome {
  return status === undefined || status >= 500 ? 'failure' : 'success';
}

export interface BreakerListener {
  /** state changed; `routable` = whether the worker may be offered to policies now */
  onTransition(from: BreakerState, to: BreakerState): void;
  /** the worker's availability to new requests changed (state or half-open trial slots) */
  onAvailability(available: boolean): void;
}

export interface BreakerClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(t: unknown): void;
}

const SYSTEM_CLOCK: BreakerClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout),
};

export class CircuitBreaker {
  state: BreakerState = 'closed';
  consecutiveFailures = 0;
  consecutiveSuccesses = 0;
  /** times of the failures of the current run, oldest first (only those inside the window matter) */
  private failureTimes: number[] = [];
  private trials = 0;
  private timer: unknown;
  private available = true;

  constructor(
    private settings: BreakerSettings,
    private readonly listener: BreakerListener,
    private readonly clock: BreakerClock = SYSTEM_CLOCK,
  ) {}

  /** new settings (worker PUT/PATCH); the state is kept */
  configure(settings: BreakerSettings): void {
    this.settings = settings;
    if (settings.disabled && this.state !== 'closed') this.transition('closed');
    this.updateAvailability();
  }

  /** may a new request go to this worker now? */
  canExecute(): boolean {
    return this.available;
  }

  /** a request was sent to the worker (counts a half-open trial) */
  onStart(): void {
    if (this.state === 'half_open') {
      this.trials++;
      this.updateAvailability();
    }
  }

  /** the outcome of a request started with {@link onStart}; `undefined` = cancelled, no verdict */
  record(outcome: Outcome | undefined, wasTrial = this.state === 'half_open'): void {
    if (wasTrial && this.trials > 0) this.trials--;
    if (outcome === undefined || this.settings.disabled) {
      this.updateAvailability();
      return;
    }
    const now = this.clock.now();
    if (outcome === 'success') {
      this.consecutiveFailures = 0;
      if (this.failureTimes.length > 0) this.failureTimes = [];
      this.consecutiveSuccesses++;
      if (this.state === 'half_open' && this.consecutiveSuccesses >= this.settings.successThreshold) {
        this.transition('closed');
      }
    } else {
      this.consecutiveSuccesses = 0;
      this.consecutiveFailures++;
      this.failureTimes.push(now);
      const horizon = now - this.settings.windowMs;
      let drop = 0;
      while (drop < this.failureTimes.length && this.failureTimes[drop] < horizon) drop++;
      if (drop > 0) this.failureTimes = this.failureTimes.slice(drop);
      if (this.state === 'half_open') this.transition('open');
      else if (this.state === 'closed' && this.failureTimes.length >= this.settings.failureThreshold) {
        this.transition('open');
      }
    }
    this.updateAvailability();
  }

  /** stop timers (worker removed) */
  dispose(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** failures of the current run that still count (inside the window) */
  windowFailures(): number {
    const horizon = this.clock.now() - this.settings.windowMs;
    return this.failureTimes.filter((t) => t >= horizon).length;
  }

  private transition(to: BreakerState): void {
    const from = this.state;
    if (from === to) return;
    this.state = to;
    this.consecutiveSuccesses = 0;
    this.dispose();
    if (to === 'open') {
      const t = this.clock.setTimeout(() => {
        this.timer = undefined;
        if (this.state === 'open') {
          this.transition('half_open');
          this.updateAvailability();
        }
      }, this.settings.timeoutMs);
      if (typeof t === 'object' && t !== null && 'unref' in t) (t as NodeJS.Timeout).unref();
      this.timer = t;
    } else {
      this.consecutiveFailures = 0;
      this.failureTimes = [];
    }
    this.listener.onTransition(from, to);
  }

  private updateAvailability(): void {
    const available =
      this.settings.disabled ||
      this.state === 'closed' ||
      (this.state === 'half_open' && this.trials < this.settings.successThreshold);
    if (available !== this.available) {
      this.available = available;
      this.listener.onAvailability(available);
    }
  }
}

/** Breaker settings for a worker: the global flags, overridden by the worker's `resilience`. */
export function breakerSettings(
  global: CircuitBreakerConfig,
  resilience?: WorkerResilience,
): BreakerSettings {
  return {
    failureThreshold: resilience?.cb_failure_threshold ?? global.failureThreshold,
    successThreshold: resilience?.cb_success_threshold ?? global.successThreshold,
    timeoutMs: (resilience?.cb_timeout_secs ?? global.timeoutDurationSecs) * 1000,
    windowMs: (resilience?.cb_window_secs ?? global.windowDurationSecs) * 1000,
    disabled: resilience?.disable_circuit_breaker ?? global.disabled,
  };
}
