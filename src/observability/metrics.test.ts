import { describe, expect, it } from 'vitest';
import { Metrics, SMG_DURATION_BUCKETS } from './metrics.js';

describe('Metrics', () => {
  it("registers at least 40 smg_ families with SMG's names, besides process metrics", async () => {
    const m = new Metrics();
    const names = (await m.registry.getMetricsAsJSON()).map((x) => x.name);
    const own = names.filter((n) => n.startsWith('smg_') && !n.startsWith('smg_process_'));
    expect(own.length).toBeGreaterThanOrEqual(40);
    for (const n of [
      'smg_http_requests_total',
      'smg_http_rate_limit_total',
      'smg_router_ttft_seconds',
      'smg_router_tpot_seconds',
      'smg_router_tokens_total',
      'smg_worker_cb_state',
      'smg_worker_cb_transitions_total',
      'smg_worker_retries_total',
      'smg_worker_retries_exhausted_total',
      'smg_worker_retry_backoff_seconds',
      'smg_scheduler_admit_total',
      'smg_scheduler_queue_wait_seconds',
      'smg_engine_running_requests',
      'smg_node_event_loop_delay_seconds',
    ]) {
      expect(names).toContain(n);
    }
  });

  it("uses SMG's 29 duration buckets for TTFT and TPOT", async () => {
    const m = new Metrics();
    m.routerTtft.observe({ router_type: 'http', backend_type: 'regular', model: 'm', endpoint: 'chat' }, 0.2);
    const text = await m.registry.metrics();
    const buckets = text.split('\n').filter((l) => l.startsWith('smg_router_ttft_seconds_bucket{'));
    expect(buckets).toHaveLength(SMG_DURATION_BUCKETS.length + 1);
  });
});
