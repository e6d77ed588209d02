import { readdir, readFile, readlink, realpath } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import type pg from 'pg'
import type { Recorder } from './record.ts'

/** The invariants a run counts; each must be 0. */
export const INVARIANTS = {
  lost_lease: 'an acknowledged lease that ended (or was refused) before its acknowledged expiry without a release',
  stopped_under_live_lease: "a session stopped or failed under a live lease with no fault on that session's own processes",
  duplicate_shared_session: 'two live shared sessions for one pool key (the snapshot) at once',
  leaked_compute: 'compute left once every lease ended and the idle TTL passed: agent or Chroma processes, listening ports, rows not STOPPED or FAILED (besides at most WARM_POOL_MAX live warm agents, and only their own processes)',
  wrong_answer: 'a proxied query answered wrongly or from another session',
  unresolved_acquire: 'an acquire that became neither READY nor FAILED (with a problem) within its wait plus the margin',
  unexpected_5xx: "a 5xx outside its allowed window (see CHAOS.md, Allowed 5xx)",
  idempotency_broken: 'two answers to one Idempotency-Key naming different leases',
  replica_crashed: 'a replica that exited without being killed or stopped (outside its own start-up)',
} as const
export type InvariantName = keyof typeof INVARIANTS

export interface Verdict {
  counts: Record<InvariantName, number>
  examples: Record<InvariantName, string[]>
  /** Things that were allowed only because of a fault, counted for the report. */
  excused: Record<string, number>
}

/** Grace after a fault ends during which its consequences are allowed (pools reconnect, sessions are re-probed). */
export const GRACE = { replicaMs: 5_000, postgresMs: 10_000, sessionMs: 15_000 }

export function newVerdict(): Verdict {
  const names = Object.keys(INVARIANTS) as InvariantName[]
  return {
    counts: Object.fromEntries(names.map((n) => [n, 0])) as Record<InvariantName, number>,
    examples: Object.fromEntries(names.map((n) => [n, []])) as unknown as Record<InvariantName, string[]>,
    excused: {},
  }
}

function flag(v: Verdict, name: InvariantName, example: string): void {
  v.counts[name]++
  if (v.examples[name].length < 10) v.examples[name].push(example)
}

function excuse(v: Verdict, what: string): void {
  v.excused[what] = (v.excused[what] ?? 0) + 1
}

/** Sessions with a fault on their own processes (agent or Chroma killed or stopped). */
function faultedSessions(rec: Recorder): Map<string, number> {
  const m = new Map<string, number>()
  for (const f of rec.faults) if (f.sessionId && !m.has(f.sessionId)) m.set(f.sessionId, f.start)
  return m
}

/** Sampled while the run goes: the database's own view of live shared sessions per pool. */
export async function samplePools(rec: Recorder, db: pg.Pool): Promise<void> {
  const { rows } = await db.query<{ pool_key: string; ids: string[] }>(
    `SELECT pool_key, array_agg(id::text) AS ids FROM sessions WHERE mode = 'shared' AND status IN ('PENDING','STARTING','READY') GROUP BY pool_key HAVING count(*) > 1`,
  )
  for (const r of rows) rec.poolDuplicates.push({ at: Date.now(), poolKey: r.pool_key, sessions: r.ids })
}

/** Judges the recorded run against Postgres's rows, after quiescence. */
export async function judge(rec: Recorder, db: pg.Pool, leftovers: string[], crashes: string[] = []): Promise<Verdict> {
  const v = newVerdict()
  const faulted = faultedSessions(rec)
  const at = (t: number) => rec.rel(t)

  // 1. Lost leases: the rows of every lease a replica acknowledged.
  const ids = [...rec.leases.keys()]
  const { rows: leaseRows } = await db.query<{ id: string; session_id: string; expires_at: Date; ended_at: Date | null; end_reason: string | null }>(
    `SELECT id::text, session_id::text, expires_at, ended_at, end_reason FROM leases WHERE id = ANY($1::uuid[])`,
    [ids],
  )
  const byId = new Map(leaseRows.map((r) => [r.id, r]))
  for (const lease of rec.leases.values()) {
    const row = byId.get(lease.id)
    if (!row) {
      flag(v, 'lost_lease', `lease ${lease.id} acknowledged at ${at(lease.ackAt)} has no row`)
      continue
    }
    // A lease's expiry only ever moves forward (DESIGN.md): an earlier one than acknowledged loses the lease.
    if (row.expires_at.getTime() < lease.ackExpiresAt) {
      flag(v, 'lost_lease', `lease ${lease.id} (session ${row.session_id}) expires at ${at(row.expires_at.getTime())}, earlier than the ${at(lease.ackExpiresAt)} a replica acknowledged; near: ${rec.near(row.expires_at.getTime())}`)
      continue
    }
    if (!row.ended_at || !row.end_reason) continue
    const endedAt = row.ended_at.getTime()
    const expiry = Math.max(lease.ackExpiresAt, row.expires_at.getTime())
    if (row.end_reason === 'released') {
      if (lease.releaseSentAt === null) flag(v, 'lost_lease', `lease ${lease.id} ended 'released' at ${at(endedAt)}, but nobody released it; near: ${rec.near(endedAt)}`)
      continue
    }
    if (endedAt >= expiry) continue
    if (faulted.has(row.session_id) && faulted.get(row.session_id)! <= endedAt) {
      excuse(v, `lease ended early (${row.end_reason}) after a fault on its session's processes`)
      continue
    }
    flag(v, 'lost_lease', `lease ${lease.id} (session ${row.session_id}) ended '${row.end_reason}' at ${at(endedAt)}, ${((expiry - endedAt) / 1000).toFixed(1)} s before its expiry; near: ${rec.near(endedAt)}`)
  }
  for (const s of rec.suspects) {
    if (s.leaseId === '-') continue
    const f = faulted.get(s.sessionId)
    if (f !== undefined && f <= s.at) {
      excuse(v, 'refusal after a fault on the session')
      continue
    }
    flag(v, 'lost_lease', `lease ${s.leaseId} (session ${s.sessionId}): ${s.what} at ${at(s.at)}, before its acknowledged expiry; near: ${rec.near(s.at)}`)
  }

  // 2. Sessions stopped or failed while a lease on them was live.
  const { rows: stopped } = await db.query<{ id: string; status: string; stop_at: Date; stop_reason: string | null; error: string | null; lease_id: string; expires_at: Date }>(
    `SELECT s.id::text, s.status::text, coalesce(s.stopping_at, s.ended_at) AS stop_at, s.stop_reason, s.error, l.id::text AS lease_id, l.expires_at
       FROM sessions s JOIN leases l ON l.session_id = s.id
      WHERE coalesce(s.stopping_at, s.ended_at) IS NOT NULL
        AND l.created_at < coalesce(s.stopping_at, s.ended_at)
        AND l.expires_at > coalesce(s.stopping_at, s.ended_at)
        AND (l.ended_at IS NULL OR l.ended_at >= coalesce(s.stopping_at, s.ended_at) OR l.end_reason <> 'released')`,
  )
  const seen = new Set<string>()
  for (const r of stopped) {
    if (seen.has(r.id)) continue
    seen.add(r.id)
    const f = faulted.get(r.id)
    if (f !== undefined && f <= r.stop_at.getTime()) {
      excuse(v, 'session ended under a lease after a fault on its processes')
      continue
    }
    flag(v, 'stopped_under_live_lease', `session ${r.id} ${r.status} at ${at(r.stop_at.getTime())} (${r.stop_reason ?? r.error ?? ''}) under lease ${r.lease_id} expiring ${at(r.expires_at.getTime())}; near: ${rec.near(r.stop_at.getTime())}`)
  }

  // 3. Two live shared sessions of one pool: sampled, and from the rows' own history.
  for (const d of rec.poolDuplicates) flag(v, 'duplicate_shared_session', `pool ${d.poolKey} had ${d.sessions.join(', ')} live at ${at(d.at)}`)
  const { rows: overlaps } = await db.query<{ a: string; b: string; pool_key: string; at: Date }>(
    `WITH live AS (
       -- a claimed warm agent joins its pool at its claim, not at its launch
       SELECT id, pool_key, coalesce(claimed_at, created_at) AS since, coalesce(draining_at, stopping_at, ended_at, 'infinity') AS until
         FROM sessions WHERE mode = 'shared')
     SELECT x.id::text AS a, y.id::text AS b, x.pool_key, greatest(x.since, y.since) AS at
       FROM live x JOIN live y ON x.pool_key = y.pool_key AND x.id < y.id
      WHERE x.since < y.until AND y.since < x.until`,
  )
  for (const o of overlaps) flag(v, 'duplicate_shared_session', `pool ${o.pool_key}: sessions ${o.a} and ${o.b} both live at ${at(o.at.getTime())}`)

  // 4. Leftover compute, found by the caller after its wait.
  for (const l of leftovers) flag(v, 'leaked_compute', l)

  // 5. Wrong answers.
  for (const w of rec.wrongAnswers) flag(v, 'wrong_answer', `lease ${w.leaseId} session ${w.sessionId} at ${at(w.at)}: ${w.detail}; near: ${rec.near(w.at)}`)

  // 6. Acquires that never resolved.
  for (const a of rec.acquires) {
    if (a.outcome !== 'unresolved') continue
    flag(v, 'unresolved_acquire', `acquire ${a.key} (${a.mode}, snapshot ${a.snapshot}) from ${at(a.start)}: ${a.detail ?? ''} lease ${a.leaseId ?? '-'} session ${a.sessionId ?? '-'}; near: ${rec.near(a.start, 10_000, a.deadline - a.start)}`)
  }

  // 7. 5xx outside their windows.
  for (const e of rec.serverErrors) {
    const why = allowed5xx(rec, e)
    if (why) excuse(v, `${e.status} ${e.code ?? ''}: ${why}`)
    else flag(v, 'unexpected_5xx', `${e.status} ${e.code} from ${e.replica} on ${e.method} ${e.path} at ${at(e.at)}: ${e.detail ?? ''}; near: ${rec.near(e.at)}`)
  }

  for (const i of rec.idempotencyBroken) flag(v, 'idempotency_broken', `key ${i.key} at ${at(i.at)}: ${i.detail}`)
  for (const c of crashes) flag(v, 'replica_crashed', c)
  return v
}

/**
 * The 5xx the contract allows, and when (CHAOS.md, "Allowed 5xx"):
 * - any 5xx from a replica between its own kill or SIGSTOP and GRACE.replicaMs after it is ready again;
 * - 503 database_unavailable between the start of a Postgres restart or connection cut and GRACE.postgresMs after it ended;
 * - 502/504 on a session's data path (query, proxy) between a fault on that session's own processes and GRACE.sessionMs after it ended.
 */
export function allowed5xx(rec: Recorder, e: { at: number; replica: string; status: number; code: string | null; path: string; sessionId?: string }): string | null {
  for (const f of rec.faults) {
    const end = (f.end ?? Infinity)
    if ((f.kind === 'replica_kill' || f.kind === 'replica_stop') && f.replica === e.replica && e.at >= f.start && e.at <= end + GRACE.replicaMs) return `${f.kind} of ${f.replica}`
    if ((f.kind === 'pg_restart' || f.kind === 'pg_cut') && e.status === 503 && e.code === 'database_unavailable' && e.at >= f.start && e.at <= end + GRACE.postgresMs) return f.kind
  }
  if (e.sessionId && /^\/v1\/sessions\/:id\/(query|chroma)|^\/api\/v2\//.test(e.path) && (e.status === 502 || e.status === 504)) {
    const f = rec.faults.find((f) => f.sessionId === e.sessionId && e.at >= f.start && e.at <= (f.end ?? Infinity) + GRACE.sessionMs)
    if (f) return `${f.kind} of its session`
  }
  return null
}

/**
 * Processes, ports and rows left behind under the sessions directory; empty when clean.
 * The warm pool keeps agents running with no lease by design: live warm rows (at most
 * `warmMax`) and the processes and ports of their own launch directories are not leftovers.
 */
export async function findLeftovers(db: pg.Pool, sessionsDir: string, warmMax = 0): Promise<string[]> {
  const out: string[] = []
  const { rows: warm } = await db.query<{ id: string; generation: number }>(
    `SELECT id::text, generation FROM sessions WHERE mode = 'warm' AND status IN ('PENDING','STARTING','READY')`,
  )
  if (warm.length > warmMax) out.push(`${warm.length} live warm agents, more than WARM_POOL_MAX ${warmMax}`)
  const warmDirs = new Set(warm.map((w) => `${w.id}-g${w.generation}`))
  const root = await realpath(sessionsDir).catch(() => null)
  if (root) {
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => null)
      if (!cwd || !cwd.startsWith(root + '/')) continue
      if (warmDirs.has(cwd.slice(root.length + 1).split('/')[0]!)) continue
      const cmd = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean)
      const what = cmd.some((c) => c.includes('chroma-server')) ? 'chroma' : cmd.some((c) => c.includes('agent')) ? 'agent' : 'process'
      out.push(`${what} process ${entry} in ${cwd.slice(root.length + 1)}`)
    }
    for (const dir of await readdir(root).catch(() => [] as string[])) {
      if (warmDirs.has(dir)) continue
      const port = Number((await readFile(join(root, dir, 'port'), 'utf8').catch(() => '')).trim())
      if (port && (await listening(port))) out.push(`port ${port} of ${dir} still listening`)
    }
  }
  const { rows } = await db.query<{ id: string; status: string }>(
    `SELECT id::text, status::text FROM sessions WHERE status NOT IN ('STOPPED','FAILED') AND NOT (mode = 'warm' AND status IN ('PENDING','STARTING','READY'))`,
  )
  for (const r of rows) out.push(`session ${r.id} is ${r.status}`)
  return out
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.setTimeout(1_000)
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
    s.once('timeout', () => (s.destroy(), resolve(false)))
  })
}
