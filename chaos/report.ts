/**
 * The measurements of a chaos scenario and the invariants checked on them. Pure functions over
 * what the harness recorded from real processes (chaos/scenarios.ts): no I/O here, so every rule is
 * unit-tested (report.test.ts).
 */

/** one answered (or finally failed) chat turn as the failover client saw it */
export interface TurnRecord {
  conversation: number;
  turn: number;
  /** when the request was first sent (ms since epoch) */
  sentAt: number;
  /** the engine that served it (`x-mock-worker`), '' when it failed */
  worker: string;
  ok: boolean;
}

/** one admin write: acknowledged (2xx) or not */
export interface WriteRecord {
  key: string;
  value: string;
  peer: string;
  acked: boolean;
}

export const THRESHOLDS = {
  failedRequests: 0,
  lostWrites: 0,
  /** same engine as the previous turn, for conversations that started before the fault */
  routingConsistency: 0.95,
  /** max admitted per 1-s window / limit */
  overAdmission: 1.05,
} as const;

export interface RoutingStats {
  /** later turns (after the fault) of conversations that had a turn before it */
  turns: number;
  sameWorker: number;
  /** sameWorker / turns; null when there was no such turn */
  ratio: number | null;
}

/**
 * For conversations with a successful turn sent before `faultAt`: the share of their successful
 * turns sent at or after `faultAt` served by the same engine as the conversation's previous
 * successful turn.
 */
export function routingConsistency(turns: TurnRecord[], faultAt: number): RoutingStats {
  let total = 0;
  let same = 0;
  for (const list of successfulTurnsByConversation(turns, () => true)) {
    if (list.length === 0 || list[0].sentAt >= faultAt) continue;
    for (let i = 1; i < list.length; i++) {
      if (list[i].sentAt < faultAt) continue;
      total++;
      if (list[i].worker === list[i - 1].worker) same++;
    }
  }
  return { turns: total, sameWorker: same, ratio: total === 0 ? null : same / total };
}

/** routing consistency before the fault (every turn vs its previous turn), the baseline to compare with */
export function baselineConsistency(turns: TurnRecord[], faultAt: number): RoutingStats {
  let total = 0;
  let same = 0;
  for (const list of successfulTurnsByConversation(turns, (t) => t.sentAt < faultAt)) {
    for (let i = 1; i < list.length; i++) {
      total++;
      if (list[i].worker === list[i - 1].worker) same++;
    }
  }
  return { turns: total, sameWorker: same, ratio: total === 0 ? null : same / total };
}

/** the successful turns that pass `keep`, per conversation, in turn order */
function successfulTurnsByConversation(
  turns: TurnRecord[],
  keep: (t: TurnRecord) => boolean,
): TurnRecord[][] {
  const byConv = new Map<number, TurnRecord[]>();
  for (const t of turns) {
    if (!t.ok || !keep(t)) continue;
    let list = byConv.get(t.conversation);
    if (!list) byConv.set(t.conversation, (list = []));
    list.push(t);
  }
  const lists = [...byConv.values()];
  for (const list of lists) list.sort((a, b) => a.turn - b.turn);
  return lists;
}

/** counts of timestamps per whole window of `windowMs` (aligned to the first timestamp's window) */
export function windowCounts(times: number[], windowMs = 1000): number[] {
  if (times.length === 0) return [];
  const sorted = [...times].sort((a, b) => a - b);
  const start = Math.floor(sorted[0] / windowMs) * windowMs;
  const n = Math.floor((sorted[sorted.length - 1] - start) / windowMs) + 1;
  const counts = new Array<number>(n).fill(0);
  for (const t of sorted) counts[Math.floor((t - start) / windowMs)]++;
  return counts;
}

export interface AdmissionStats {
  limitPerSecond: number;
  sent: number;
  admitted: number;
  rejected429: number;
  other: number;
  /** admitted per whole 1-s window (by send time); partial first and last windows left out */
  windows: number[];
  maxAdmitted: number;
  /** maxAdmitted / limit */
  ratio: number;
}

export function admissionStats(
  limitPerSecond: number,
  sends: { sentAt: number; status: number }[],
  windowMs = 1000,
): AdmissionStats {
  const admittedTimes = sends.filter((s) => s.status === 200).map((s) => s.sentAt);
  let windows: number[] = [];
  if (sends.length > 0) {
    // whole windows over the sending period, by send time of every request
    const all = sends.map((s) => s.sentAt).sort((a, b) => a - b);
    const first = Math.ceil(all[0] / windowMs) * windowMs;
    const last = Math.floor(all[all.length - 1] / windowMs) * windowMs;
    for (let w = first; w + windowMs <= last; w += windowMs) {
      windows.push(admittedTimes.filter((t) => t >= w && t < w + windowMs).length);
    }
    if (windows.length === 0) windows = windowCounts(admittedTimes, windowMs);
  }
  const maxAdmitted = windows.length === 0 ? 0 : Math.max(...windows);
  return {
    limitPerSecond,
    sent: sends.length,
    admitted: admittedTimes.length,
    rejected429: sends.filter((s) => s.status === 429).length,
    other: sends.filter((s) => s.status !== 200 && s.status !== 429).length,
    windows,
    maxAdmitted,
    ratio: limitPerSecond > 0 ? maxAdmitted / limitPerSecond : Number.POSITIVE_INFINITY,
  };
}

/** acknowledged writes missing (or with another value) on some live peer after recovery */
export function lostWrites(
  writes: WriteRecord[],
  configByPeer: Record<string, Record<string, string>>,
): { acked: number; unacked: number; lost: { key: string; peer: string }[] } {
  const lost: { key: string; peer: string }[] = [];
  const acked = writes.filter((w) => w.acked);
  for (const w of acked) {
    for (const [peer, cfg] of Object.entries(configByPeer)) {
      if (cfg[w.key] !== w.value) lost.push({ key: w.key, peer });
    }
  }
  return { acked: acked.length, unacked: writes.length - acked.length, lost };
}

export interface ScenarioResult {
  scenario: string;
  mode: string;
  peers: number;
  seed: number;
  /** what was done to whom, e.g. "kill -9 peer-2" */
  fault: string;
  durationMs: number;
  requests: { sent: number; ok: number; failed: number; retried: number; failovers: number };
  latencyMs: { p50: number; p99: number; max: number };
  writes: { acked: number; unacked: number; lost: number; lostExamples: { key: string; peer: string }[] };
  /**
   * did the fault take effect: ms from the fault until a live peer first reported a member not
   * alive (null = never), the most members one peer saw not alive; `required` = an invariant
   */
  observed: { detectionMs: number | null; maxNotAlive: number; required: boolean };
  /** ms from heal/restart/resume (or the kill) until every live peer agrees; null = never (timeout) */
  convergenceMs: number | null;
  /** the last time (ms after the heal) members, config or registry still disagreed */
  convergenceParts: { members: number; config: number; registry: number };
  convergenceTimeoutMs: number;
  routing: RoutingStats & { baseline: RoutingStats };
  /** the measurement, or why the phase could not measure (which fails the invariant) */
  admission: AdmissionStats | { error: string };
  failureSamples: string[];
}

export interface InvariantCheck {
  name: string;
  ok: boolean;
  /** 'skipped' when the measurement was not possible (said why in detail) */
  skipped?: boolean;
  value: number | string | null;
  threshold: string;
  detail?: string;
}

export function checkInvariants(r: ScenarioResult): InvariantCheck[] {
  const checks: InvariantCheck[] = [
    {
      name: 'failed_requests',
      ok: r.requests.failed <= THRESHOLDS.failedRequests,
      value: r.requests.failed,
      threshold: `<= ${THRESHOLDS.failedRequests}`,
      ...(r.failureSamples.length > 0 && { detail: r.failureSamples.slice(0, 3).join(' | ') }),
    },
    {
      name: 'lost_writes',
      ok: r.writes.lost <= THRESHOLDS.lostWrites && r.writes.acked > 0,
      value: r.writes.lost,
      threshold: `<= ${THRESHOLDS.lostWrites} (of ${r.writes.acked} acknowledged, > 0 needed)`,
    },
    {
      name: 'fault_took_effect',
      ok: !r.observed.required || r.observed.detectionMs !== null,
      ...(!r.observed.required && { skipped: true }),
      value: r.observed.detectionMs,
      threshold: r.observed.required ? 'a live peer saw a member not alive' : 'reported only',
    },
    {
      name: 'convergence',
      ok: r.convergenceMs !== null,
      value: r.convergenceMs,
      threshold: `< ${r.convergenceTimeoutMs} ms`,
    },
  ];
  const ratio = r.routing.ratio;
  checks.push(
    ratio === null
      ? {
          name: 'routing_consistency',
          ok: false,
          value: null,
          threshold: `>= ${THRESHOLDS.routingConsistency}`,
          detail: 'no turn after the fault of a conversation begun before it: nothing measured',
        }
      : {
          name: 'routing_consistency',
          ok: ratio >= THRESHOLDS.routingConsistency,
          value: round(ratio, 4),
          threshold: `>= ${THRESHOLDS.routingConsistency}`,
          detail: `${r.routing.sameWorker}/${r.routing.turns} later turns on the previous engine; baseline before the fault ${fmtRatio(r.routing.baseline)}`,
        },
  );
  if ('error' in r.admission) {
    // a phase that could not measure proves nothing: the invariant fails, never skips
    checks.push({
      name: 'over_admission',
      ok: false,
      value: null,
      threshold: `<= ${THRESHOLDS.overAdmission}`,
      detail: `the admission phase failed: ${r.admission.error}`,
    });
  } else {
    checks.push({
      name: 'over_admission',
      ok: r.admission.ratio <= THRESHOLDS.overAdmission,
      value: round(r.admission.ratio, 3),
      threshold: `<= ${THRESHOLDS.overAdmission}`,
      detail: `max ${r.admission.maxAdmitted} admitted in a 1-s window at a limit of ${r.admission.limitPerSecond}/s`,
    });
  }
  return checks;
}

function fmtRatio(s: RoutingStats): string {
  return s.ratio === null ? 'n/a' : `${(s.ratio * 100).toFixed(1)} % (${s.sameWorker}/${s.turns})`;
}

export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** nearest-rank percentile of unsorted samples; 0 when empty */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return 0;
  const s = [...samples].sort((a, b) => a - b);
  const rank = Math.min(s.length, Math.max(1, Math.ceil((p / 100) * s.length)));
  return s[rank - 1];
}

/** the human-readable report of one scenario */
export function formatReport(r: ScenarioResult, checks: InvariantCheck[]): string {
  const lines = [
    `== chaos ${r.scenario} (${r.mode}, ${r.peers} peers, seed ${r.seed}): ${r.fault}`,
    `   requests: ${r.requests.sent} sent, ${r.requests.ok} ok, ${r.requests.failed} failed, ` +
      `${r.requests.retried} retried on another peer (${r.requests.failovers} failovers); ` +
      `latency p50 ${r.latencyMs.p50} ms, p99 ${r.latencyMs.p99} ms, max ${r.latencyMs.max} ms`,
    `   admin writes: ${r.writes.acked} acknowledged, ${r.writes.unacked} not acknowledged, ${r.writes.lost} lost`,
    `   fault noticed: ${r.observed.detectionMs === null ? 'never' : `after ${r.observed.detectionMs} ms`} (at most ${r.observed.maxNotAlive} member(s) not alive on one peer)`,
    `   convergence: ${r.convergenceMs === null ? `none within ${r.convergenceTimeoutMs} ms` : `${r.convergenceMs} ms`} ` +
      `(last disagreement after the heal: members ${r.convergenceParts.members} ms, config ${r.convergenceParts.config} ms, registry ${r.convergenceParts.registry} ms)`,
    `   routing: ${fmtRatio(r.routing)} of later turns on the previous engine (before the fault ${fmtRatio(r.routing.baseline)})`,
    `   admission: ${'error' in r.admission ? `failed: ${r.admission.error}` : `max ${r.admission.maxAdmitted}/s admitted at a limit of ${r.admission.limitPerSecond}/s (x${round(r.admission.ratio, 3)}), windows ${r.admission.windows.join(',')}`}`,
  ];
  for (const c of checks) {
    const state = c.skipped ? 'SKIP' : c.ok ? 'ok  ' : 'FAIL';
    lines.push(
      `   [${state}] ${c.name} = ${c.value === null ? 'n/a' : c.value} (${c.threshold})${c.detail ? ` — ${c.detail}` : ''}`,
    );
  }
  return lines.join('\n');
}

/** the machine-readable line: `CHAOS {json}` */
export function jsonLine(r: ScenarioResult, checks: InvariantCheck[]): string {
  return (
    'CHAOS ' +
    JSON.stringify({
      ...r,
      ok: checks.every((c) => c.ok),
      invariants: checks.map(({ name, ok, skipped, value }) => ({
        name,
        ok,
        ...(skipped && { skipped }),
        value,
      })),
    })
  );
}
