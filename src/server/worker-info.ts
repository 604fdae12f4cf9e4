/**
 * SMG's WorkerInfo JSON: the spec flattened (api_key withheld) plus runtime fields, and the body of
 * `GET /workers`.
 *
 * `GET /workers` lists every worker (2,000 in SMG's scale test: 600 KB of JSON), so its body is
 * assembled as bytes from a per-view cache: a view is immutable and replaced when its spec or
 * status changes, so only `load` and `job_status` (which change without a new view) are encoded
 * per request, and nothing is stringified, concatenated as text and re-encoded per call.
 */
import type { JobStatus } from '../workers/manager.js';
import type { WorkerView } from '../state/registry.js';

export interface WorkerInfo extends Record<string, unknown> {
  id: string;
  url: string;
  model_id: string;
  is_healthy: boolean;
  status: string;
  load: number;
}

/** everything but `load` and `job_status`, in the order SMG writes the fields */
function staticInfo(w: WorkerView): Record<string, unknown> {
  const { api_key: _secret, ...spec } = w.spec;
  return {
    ...spec,
    models: spec.models.map((id) => ({ id })),
    id: w.id,
    url: w.url,
    model_id: w.models[0] ?? '*',
    is_healthy: w.status === 'ready',
    status: w.status,
  };
}

export function workerInfo(w: WorkerView, load: number, job?: JobStatus): WorkerInfo {
  const info = { ...staticInfo(w), load } as WorkerInfo;
  if (job && job.state !== 'completed') info.job_status = job;
  return info;
}

/** the UTF-8 JSON of `staticInfo` without its closing brace, per view */
const staticBytes = new WeakMap<WorkerView, Buffer>();
const IDLE_TAIL = Buffer.from(',"load":0}');
const COMMA = Buffer.from(',');

function workerInfoBytes(w: WorkerView, load: number, job: JobStatus | undefined, out: Buffer[]): void {
  let head = staticBytes.get(w);
  if (head === undefined) {
    head = Buffer.from(JSON.stringify(staticInfo(w)).slice(0, -1));
    staticBytes.set(w, head);
  }
  out.push(head);
  const running = job !== undefined && job.state !== 'completed';
  if (load === 0 && !running) out.push(IDLE_TAIL);
  else
    out.push(
      Buffer.from(`,"load":${JSON.stringify(load)}${running ? `,"job_status":${JSON.stringify(job)}` : ''}}`),
    );
}

/** the last body built per worker list, with the loads and jobs it was built from */
const lastBody = new WeakMap<
  readonly WorkerView[],
  { loads: Float64Array; jobs: (JobStatus | undefined)[]; body: Buffer }
>();

/**
 * The body of `GET /workers`: `{"workers":[WorkerInfo…],"total":n,"stats":{…}}`, byte for byte
 * `JSON.stringify` of the same objects. The same list with the same loads and jobs as the last call
 * (a dashboard polling an idle fleet) gets the same bytes back without assembling them again.
 */
export function workersBody(
  list: readonly WorkerView[],
  loadOf: (id: string) => number,
  jobOf: (id: string) => JobStatus | undefined,
): Buffer {
  const loads = new Float64Array(list.length);
  const jobs = new Array<JobStatus | undefined>(list.length);
  for (let i = 0; i < list.length; i++) {
    loads[i] = loadOf(list[i].id);
    jobs[i] = jobOf(list[i].id);
  }
  const last = lastBody.get(list);
  if (last && last.loads.every((l, i) => l === loads[i]) && last.jobs.every((j, i) => j === jobs[i]))
    return last.body;
  const stats = { prefill_count: 0, decode_count: 0, regular_count: 0 };
  const parts: Buffer[] = [Buffer.from('{"workers":[')];
  for (let i = 0; i < list.length; i++) {
    const w = list[i];
    if (w.spec.worker_type === 'prefill') stats.prefill_count++;
    else if (w.spec.worker_type === 'decode') stats.decode_count++;
    else stats.regular_count++;
    if (i > 0) parts.push(COMMA);
    workerInfoBytes(w, loads[i], jobs[i], parts);
  }
  parts.push(Buffer.from(`],"total":${list.length},"stats":${JSON.stringify(stats)}}`));
  const body = Buffer.concat(parts);
  lastBody.set(list, { loads, jobs, body });
  return body;
}
