import { describe, expect, it } from 'vitest';
import { ManualClock } from '../testing/manual-clock.js';
import {
  breakerSettings,
  CircuitBreaker,
  outcomeOf,
  type BreakerSettings,
  type BreakerState,
} from './circuit-breaker.js';

const SETTINGS: BreakerSettings = {
  failureThreshold: 3,
  successThreshold: 2,
  timeoutMs: 10_000,
  windowMs: 60_000,
  disabled: false,
};

function make(over: Partial<BreakerSettings> = {}) {
  const clock = new ManualClock();
  const transitions: [BreakerState, BreakerState][] = [];
  const availability: boolean[] = [];
  const b = new CircuitBreaker(
    { ...SETTINGS, ...over },
    {
      onTransition: (from, to) => transitions.push([from, to]),
      onAvailability: (a) => availability.push(a),
    },
    { now: clock.now, setTimeout: clock.timers.setTimeout, clearTimeout: clock.timers.clearTimeout },
  );
  const run = (outcome: 'success' | 'failure') => {
    const trial = b.state === 'half_open';
    b.onStart();
    b.record(outcome, trial);
  };
  return { b, clock, transitions, availability, run };
}

describe('outcomeOf', () => {
  it('counts connection errors, timeouts and 5xx as failures, never a 4xx', () => {
    expect(outcomeOf(undefined)).toBe('failure');
    for (const s of [500, 502, 503, 504]) expect(outcomeOf(s)).toBe('failure');
    for (const s of [200, 204, 400, 404, 408, 413, 429]) expect(outcomeOf(s)).toBe('success');
  });
});

describe('CircuitBreaker', () => {
  it('opens after the threshold of consecutive failures; a success resets the run', () => {
    const { b, run, transitions, availability } = make();
    run('failure');
    run('failure');
    run('success');
    run('failure');
    run('failure');
    expect(b.state).toBe('closed');
    run('failure');
    expect(b.state).toBe('open');
    expect(b.canExecute()).toBe(false);
    expect(transitions).toEqual([['closed', 'open']]);
    expect(availability).toEqual([false]);
  });

  it('forgets failures older than the window', () => {
    const { b, run, clock } = make();
    run('failure');
    run('failure');
    clock.advance(61_000);
    run('failure');
    expect(b.state).toBe('closed');
    expect(b.windowFailures()).toBe(1);
    run('failure');
    run('failure');
    expect(b.state).toBe('open');
  });

  it('goes half-open after the timeout, on its own, and closes after enough successes', () => {
    const { b, run, clock, transitions, availability } = make();
    for (let i = 0; i < 3; i++) run('failure');
    clock.advance(9_999);
    expect(b.state).toBe('open');
    clock.advance(1);
    expect(b.state).toBe('half_open');
    expect(b.canExecute()).toBe(true);
    run('success');
    expect(b.state).toBe('half_open');
    run('success');
    expect(b.state).toBe('closed');
    expect(transitions).toEqual([
      ['closed', 'open'],
      ['open', 'half_open'],
      ['half_open', 'closed'],
    ]);
    expect(availability).toEqual([false, true]);
  });

  it('re-opens on a failure in half-open', () => {
    const { b, run, clock } = make();
    for (let i = 0; i < 3; i++) run('failure');
    clock.advance(10_000);
    run('success');
    run('failure');
    expect(b.state).toBe('open');
    clock.advance(10_000);
    expect(b.state).toBe('half_open');
  });

  it('lets at most success-threshold trial requests through at once in half-open', () => {
    const { b, run, clock } = make();
    for (let i = 0; i < 3; i++) run('failure');
    clock.advance(10_000);
    b.onStart();
    expect(b.canExecute()).toBe(true);
    b.onStart();
    expect(b.canExecute()).toBe(false);
    b.record('success', true);
    expect(b.canExecute()).toBe(true);
    // a cancelled trial frees its slot without a verdict
    b.onStart();
    b.record(undefined, true);
    expect(b.canExecute()).toBe(true);
    expect(b.state).toBe('half_open');
  });

  it('never opens when disabled', () => {
    const { b, run } = make({ disabled: true });
    for (let i = 0; i < 50; i++) run('failure');
    expect(b.state).toBe('closed');
    expect(b.canExecute()).toBe(true);
  });

  it('takes per-worker overrides over the flags', () => {
    const global = {
      failureThreshold: 10,
      successThreshold: 3,
      timeoutDurationSecs: 60,
      windowDurationSecs: 120,
      disabled: false,
    };
    expect(breakerSettings(global)).toEqual({
      failureThreshold: 10,
      successThreshold: 3,
      timeoutMs: 60_000,
      windowMs: 120_000,
      disabled: false,
    });
    expect(
      breakerSettings(global, { cb_failure_threshold: 2, cb_timeout_secs: 5, disable_circuit_breaker: true }),
    ).toMatchObject({ failureThreshold: 2, timeoutMs: 5000, disabled: true });
  });
});
