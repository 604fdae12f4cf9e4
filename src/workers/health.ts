/**
 * Worker health: SMG's state machine (inventory §5.3) as a pure function, plus the prober that
 * drives it. With success threshold s and failure threshold f:
 *   pending   → ready     at the first successful probe
 *   pending   → failed    after 10·f probe intervals without becoming ready
 *   ready     → not_ready after f consecutive failures
 *   not_ready → ready     after s consecutive successes
 *   not_ready → failed    after 3·f consecutive failures
 *   failed is terminal; draining is left alone by probes.
 * First admission is SMG's registration workflow, which activates a worker once it has answered:
 * the success threshold governs recovery from failure (not_ready), not a new worker's first
 * answer, so a worker added with `POST /workers` serves as soon as its first probe (sent at once)
 * succeeds. While it never answers, the WorkerManager retries it with backoff (1 s, doubling up to
 * the interval) and counts the 10·f intervals in wall time from its first probe, passing the
 * budget as 0 once they are over (see probe-scheduler.ts).
 */
import type { WorkerStatus } from '../state/worker.js';

export interface HealthThresholds {
  successThreshold: number;
  failureThreshold: number;
}

export interface HealthState {
  status: WorkerStatus;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  /** probes while pending */
  pendingProbes: number;
}

export function initialHealth(status: WorkerStatus = 'pending'): HealthState {
  return { status, consecutiveSuccesses: 0, consecutiveFailures: 0, pendingProbes: 0 };
}

/**
 * @param pendingProbeBudget probes a pending worker gets before it is declared failed
 *   (10·f regular intervals expressed in pending probes)
 */
export function nextHealth(
  s: HealthState,
  ok: boolean,
  t: HealthThresholds,
  pendingProbeBudget = 10 * t.failureThreshold,
): HealthState {
  if (s.status === 'failed' || s.status === 'draining') return s;
  const succ = ok ? s.consecutiveSuccesses + 1 : 0;
  const fail = ok ? 0 : s.consecutiveFailures + 1;
  const base = { consecutiveSuccesses: succ, consecutiveFailures: fail, pendingProbes: s.pendingProbes };
  switch (s.status) {
    case 'pending': {
      const probes = s.pendingProbes + 1;
      if (ok) return { ...base, status: 'ready', pendingProbes: 0 };
      if (probes >= pendingProbeBudget) return { ...base, status: 'failed', pendingProbes: probes };
      return { ...base, status: 'pending', pendingProbes: probes };
    }
    case 'ready':
      return { ...base, status: fail >= t.failureThreshold ? 'not_ready' : 'ready' };
    case 'not_ready':
      if (succ >= t.successThreshold) return { ...base, status: 'ready' };
      if (fail >= 3 * t.failureThreshold) return { ...base, status: 'failed' };
      return { ...base, status: 'not_ready' };
  }
}
