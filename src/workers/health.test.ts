import { describe, expect, it } from 'vitest';
import { initialHealth, nextHealth, type HealthState } from './health.js';

const T = { successThreshold: 2, failureThreshold: 3 };

function run(start: HealthState, results: boolean[], budget?: number): HealthState[] {
  const out: HealthState[] = [];
  let s = start;
  for (const ok of results) {
    s = nextHealth(s, ok, T, budget);
    out.push(s);
  }
  return out;
}

const statuses = (xs: HealthState[]) => xs.map((s) => s.status);

describe('health state machine (SMG §5.3)', () => {
  it('pending → ready at the first success (first admission ignores s, as SMG activates on registration)', () => {
    expect(statuses(run(initialHealth(), [true]))).toEqual(['ready']);
    expect(statuses(run(initialHealth(), [false, false, true]))).toEqual(['pending', 'pending', 'ready']);
    // with any success threshold
    expect(nextHealth(initialHealth(), true, { successThreshold: 5, failureThreshold: 3 }).status).toBe(
      'ready',
    );
  });

  it('pending → failed after 10·f probes without promotion', () => {
    const out = run(initialHealth(), Array(30).fill(false));
    expect(out[28].status).toBe('pending');
    expect(out[29].status).toBe('failed');
  });

  it('the pending budget can be given in probes', () => {
    const out = run(initialHealth(), Array(5).fill(false), 5);
    expect(statuses(out)).toEqual(['pending', 'pending', 'pending', 'pending', 'failed']);
  });

  it('ready → not_ready after f consecutive failures; a success resets the count', () => {
    const ready = initialHealth('ready');
    expect(statuses(run(ready, [false, false, true, false, false, false]))).toEqual([
      'ready',
      'ready',
      'ready',
      'ready',
      'ready',
      'not_ready',
    ]);
  });

  it('not_ready → ready after s successes, → failed after 3·f consecutive failures', () => {
    const notReady: HealthState = { ...initialHealth('not_ready'), consecutiveFailures: 3 };
    expect(statuses(run(notReady, [true, true]))).toEqual(['not_ready', 'ready']);
    expect(statuses(run(notReady, [true, false, true, true]))).toEqual([
      'not_ready',
      'not_ready',
      'not_ready',
      'ready',
    ]);
    const out = run(notReady, Array(6).fill(false));
    expect(out[4].status).toBe('not_ready');
    expect(out[5].status).toBe('failed');
  });

  it('failed is terminal and draining is left alone', () => {
    expect(statuses(run(initialHealth('failed'), [true, true, true]))).toEqual([
      'failed',
      'failed',
      'failed',
    ]);
    expect(statuses(run(initialHealth('draining'), [false, false, false, false]))).toEqual(
      Array(4).fill('draining'),
    );
  });
});
