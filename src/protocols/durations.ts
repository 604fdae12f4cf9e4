/**
 * The longest durations a setting may take, shared by every place that validates one (flags, the
 * `--config` file, WorkerSpec bodies, the priority scheduler file).
 *
 * Node keeps a timer's delay as a signed 32-bit count of milliseconds: a delay above 2^31-1 ms
 * (24.8 days) is replaced by 1 ms, with a warning. So `--health-check-interval-secs 3000000`, or
 * the same interval in a WorkerSpec, turned the health prober into a 1 ms loop (30 % of a core,
 * 16,000 warnings in 16 s). Every seconds or milliseconds setting that reaches a timer is
 * therefore validated against these bounds, and the error names them.
 */

/** the longest delay a Node timer (and undici's, and AbortSignal.timeout) can wait */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * 24 days, in seconds: below the timer limit with room for the few seconds some timers add
 * (the shutdown watchdog waits the grace period plus 10 s).
 */
export const MAX_DURATION_SECS = 24 * 24 * 60 * 60;

/** the same bound for settings given in milliseconds */
export const MAX_DURATION_MS = MAX_DURATION_SECS * 1000;

/**
 * One hour: a retry backoff, in milliseconds. Jitter can double a delay, and a request retried an
 * hour later has long been given up by its client.
 */
export const MAX_BACKOFF_MS = 60 * 60 * 1000;

/** what the bounds mean, for error messages */
export const MAX_DURATION_NOTE = '24 days, the longest a timer can wait';
export const MAX_BACKOFF_NOTE = 'one hour';
