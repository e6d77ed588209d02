import pg from 'pg'
import t from 'tap'
import { formatReport, runChaos } from '../chaos/run.ts'
import { INVARIANTS, judge, type InvariantName } from '../chaos/invariants.ts'
import { Recorder } from '../chaos/record.ts'
import { freshDatabaseUrl, stopTestDatabase } from './helpers/database.ts'

// The chaos suite (CHAOS.md). First its checker, on rows written to break each
// invariant once (a checker that cannot count is worth nothing); then the short seeded
// run: two replicas as real processes on a Postgres of their own, real Chroma sessions,
// faults at seeded moments for 45 s, and every invariant count must be 0.
// Setup, 45 s of load and quiescence take about 80 s alone; a loaded 2-core CI box runs
// other test files beside it, hence the generous file timeout.
t.setTimeout(600_000)
t.teardown(stopTestDatabase)

t.test('the checker counts each kind of violation, and excuses only what a fault explains', async (t) => {
  const db = new pg.Pool({ connectionString: await freshDatabaseUrl() })
  t.teardown(() => db.end())
  const rec = new Recorder()
  const t0 = rec.t0
  const at = (s: number) => new Date(t0 + s * 1000)
  const session = async (id: string, pool: string | null, status: string, createdAt: Date, stoppingAt: Date | null, endedAt: Date | null) =>
    db.query(
      `INSERT INTO sessions (id, mode, pool_key, snapshot, status, launcher, idle_ttl_seconds, created_by, created_at, updated_at, stopping_at, ended_at)
       VALUES ($1, $2, $3, 'file:///s', $4, 'process', 2, 'test', $5, $5, $6, $7)`,
      [id, pool ? 'shared' : 'exclusive', pool, status, createdAt, stoppingAt, endedAt],
    )
  const lease = async (id: string, sessionId: string, createdAt: Date, expiresAt: Date, endedAt: Date | null, endReason: string | null) =>
    db.query(
      `INSERT INTO leases (id, session_id, token_hash, principal, request_hash, ttl_seconds, expires_at, created_at, ended_at, end_reason)
       VALUES ($1, $2, $3, 'anonymous', 'h', 6, $4, $5, $6, $7)`,
      [id, sessionId, `hash-${id}`, expiresAt, createdAt, endedAt, endReason],
    )
  const ack = (id: string, sessionId: string, expiresAt: Date) =>
    rec.leases.set(id, { id, token: 't', sessionId, snapshot: 0, mode: 'shared', idempotencyKey: id, ackAt: t0, ackExpiresAt: expiresAt.getTime(), releaseSentAt: null, abandoned: false })

  // A session stopped at 10 s under a lease acknowledged until 20 s: one lost lease, one stop under a live lease.
  const [s1, l1] = [crypto.randomUUID(), crypto.randomUUID()]
  await session(s1, 'pool-1', 'STOPPED', at(0), at(10), at(11))
  await lease(l1, s1, at(0), at(20), at(10), 'session_ended')
  ack(l1, s1, at(20))
  // The same on a session whose agent the run killed: excused, not counted.
  const [s2, l2] = [crypto.randomUUID(), crypto.randomUUID()]
  await session(s2, null, 'FAILED', at(0), null, at(12))
  await lease(l2, s2, at(0), at(20), at(12), 'session_failed')
  ack(l2, s2, at(20))
  Object.assign(rec.fault('agent_kill', s2, { sessionId: s2 }), { start: t0 + 11_000, end: t0 + 11_000 })
  // A lease whose expiry moved earlier than a replica acknowledged is lost, ended or not.
  const l4 = crypto.randomUUID()
  await lease(l4, s2, at(0), at(8), null, null)
  ack(l4, s2, at(9))
  // A lease that expired on time is fine.
  const l3 = crypto.randomUUID()
  await lease(l3, s1, at(0), at(5), at(5), 'expired')
  ack(l3, s1, at(5))
  // Two shared sessions of one pool live at once (the second created before the first ended).
  await session(crypto.randomUUID(), 'pool-2', 'STOPPED', at(0), null, at(30))
  await session(crypto.randomUUID(), 'pool-2', 'READY', at(20), null, null)

  rec.wrongAnswers.push({ at: t0, leaseId: l1, sessionId: s1, detail: 'asked vector(1), got r-2' })
  rec.acquires.push({ key: 'k', worker: 1, snapshot: 0, mode: 'shared', start: t0, deadline: t0 + 1, resolvedAt: null, outcome: 'unresolved' })
  rec.idempotencyBroken.push({ at: t0, key: 'k', detail: 'two leases' })
  Object.assign(rec.fault('pg_restart', 'postgres'), { start: t0 + 1_000, end: t0 + 2_000 })
  rec.serverErrors.push(
    { at: t0 + 1_500, replica: 'replica-1', method: 'POST', path: '/v1/leases', status: 503, code: 'database_unavailable' }, // in the outage: allowed
    { at: t0 + 1_500, replica: 'replica-1', method: 'POST', path: '/v1/leases', status: 500, code: 'internal_error' }, // in the outage, but a 500
    { at: t0 + 60_000, replica: 'replica-1', method: 'GET', path: '/v1/sessions', status: 503, code: 'database_unavailable' }, // long after it
    { at: t0 + 11_500, replica: 'replica-2', method: 'POST', path: '/v1/sessions/:id/query', status: 502, code: 'session_unreachable', sessionId: s2 }, // its agent was killed: allowed
    { at: t0 + 11_500, replica: 'replica-2', method: 'POST', path: '/v1/sessions/:id/query', status: 502, code: 'session_unreachable', sessionId: s1 }, // no fault on s1
  )

  const verdict = await judge(rec, db, ['agent process 1 in x-g1'], ['replica-1 exited by itself'])
  t.same(verdict.counts, {
    lost_lease: 2,
    stopped_under_live_lease: 1,
    duplicate_shared_session: 1,
    leaked_compute: 1,
    wrong_answer: 1,
    unresolved_acquire: 1,
    unexpected_5xx: 3,
    idempotency_broken: 1,
    replica_crashed: 1,
  }, JSON.stringify(verdict.examples, null, 1))
  t.equal(Object.values(verdict.excused).reduce((a, b) => a + b, 0), 4, `excused: ${JSON.stringify(verdict.excused)}`)
})

t.test('a short seeded chaos run keeps every invariant', async (t) => {
  const seed = Number(process.env.CHAOS_SEED ?? 4)
  const result = await runChaos({ seed, durationSeconds: 45, replicas: 2, workers: 3, faultGapSeconds: [2, 5], log: (line: string) => t.comment(line) })
  const report = formatReport(result)
  t.comment(report)
  t.ok(Object.values(result.faults).reduce((a, b) => a + b, 0) >= 5, `faults were injected: ${JSON.stringify(result.faults)}`)
  t.ok((result.ops.query_checked ?? 0) > 0, 'queries were answered and checked')
  t.ok((result.ops.leases_acknowledged ?? 0) > 0, 'leases were acknowledged')
  for (const name of Object.keys(INVARIANTS) as InvariantName[]) {
    t.equal(result.verdict.counts[name], 0, `${name}: ${INVARIANTS[name]}`, { examples: result.verdict.examples[name] })
  }
})
