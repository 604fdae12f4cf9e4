/**
 * This node's circuit breakers, one per registered worker, wired to the routable views (an open
 * circuit takes the worker out of every policy's candidate list on this node only) and to SMG's
 * `smg_worker_cb_*` metrics.
 */
import type { Logger } from 'pino';
import type { CircuitBreakerConfig } from '../cli/config-types.js';
import type { Metrics } from '../observability/metrics.js';
import type { WorkerView } from '../state/registry.js';
import type { Replica } from '../state/replica.js';
import type { WorkerResilience } from '../state/worker.js';
import {
  BREAKER_STATE_CODE,
  breakerSettings,
  CircuitBreaker,
  type BreakerClock,
  type BreakerState,
  type Outcome,
} from './circuit-breaker.js';

interface Entry {
  url: string;
  breaker: CircuitBreaker;
  /** labelled outcome counters, resolved once (the hot path records one outcome per attempt) */
  outcomes: Record<Outcome, { inc(): void }>;
  resilience: WorkerResilience | undefined;
}

export class WorkerBreakers {
  private readonly entries = new Map<string, Entry>();
  private readonly unsubscribe: () => void;

  constructor(
    private readonly cfg: CircuitBreakerConfig,
    private readonly replica: Replica,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    private readonly clock?: BreakerClock,
  ) {
    this.unsubscribe = replica.onApplied((ev, changed) => {
      if (changed && ev.kind === 'worker.remove') this.drop(ev.id);
    });
  }

  /** the breaker of a worker, created on first use; settings follow the worker's spec */
  get(worker: WorkerView): CircuitBreaker {
    let e = this.entries.get(worker.id);
    if (!e) {
      const url = worker.url;
      const id = worker.id;
      const breaker = new CircuitBreaker(
        breakerSettings(this.cfg, worker.spec.resilience),
        {
          onTransition: (from: BreakerState, to: BreakerState) => {
            this.metrics.inc(this.metrics.cbTransitions, { worker: url, from, to });
            this.metrics.cbState.set({ worker: url }, BREAKER_STATE_CODE[to]);
            const level = to === 'open' ? 'warn' : 'info';
            this.logger[level]({ worker: url, from, to }, 'circuit breaker state changed');
          },
          onAvailability: (available: boolean) => this.replica.registry.setExcluded(id, !available),
        },
        this.clock,
      );
      e = {
        url,
        breaker,
        outcomes: {
          success: this.metrics.cbOutcomes.labels({ worker: url, outcome: 'success' }),
          failure: this.metrics.cbOutcomes.labels({ worker: url, outcome: 'failure' }),
        },
        resilience: worker.spec.resilience,
      };
      this.entries.set(worker.id, e);
      this.metrics.cbState.set({ worker: url }, 0);
    } else if (e.resilience !== worker.spec.resilience) {
      e.resilience = worker.spec.resilience;
      e.breaker.configure(breakerSettings(this.cfg, worker.spec.resilience));
    }
    return e.breaker;
  }

  /** records an attempt's verdict (undefined = cancelled) and refreshes the gauges */
  record(worker: WorkerView, breaker: CircuitBreaker, outcome: Outcome | undefined, wasTrial: boolean): void {
    breaker.record(outcome, wasTrial);
    if (outcome === undefined) return;
    this.entries.get(worker.id)?.outcomes[outcome].inc();
    if (outcome === 'failure') this.onFailure?.(worker.id);
  }

  /**
   * Called on every failed attempt (connection error, timeout, 5xx; never a 4xx): the mesh turns it
   * into a suspect hint so the worker's probers check it now. The breaker stays this node's own.
   */
  onFailure: ((workerId: string) => void) | undefined;

  /** consecutive-run gauges, refreshed at scrape time rather than on every request */
  refreshGauges(): void {
    for (const e of this.entries.values()) {
      this.metrics.cbConsecutiveFailures.set({ worker: e.url }, e.breaker.consecutiveFailures);
      this.metrics.cbConsecutiveSuccesses.set({ worker: e.url }, e.breaker.consecutiveSuccesses);
    }
  }

  close(): void {
    this.unsubscribe();
    for (const e of this.entries.values()) e.breaker.dispose();
    this.entries.clear();
  }

  private drop(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    e.breaker.dispose();
    this.entries.delete(id);
    for (const g of [
      this.metrics.cbState,
      this.metrics.cbConsecutiveFailures,
      this.metrics.cbConsecutiveSuccesses,
    ]) {
      g.remove({ worker: e.url });
    }
    this.replica.registry.setExcluded(id, false);
  }
}
