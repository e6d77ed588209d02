import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { SqlPool } from '../src/database/client.ts'
import { Prisma } from '../src/generated/prisma/client.ts'
import { ManualClock } from '../src/services/clock.ts'
import { DEFAULT_FARGATE_PRICES } from '../src/services/cost.ts'
import { RetentionService } from '../src/services/retention.ts'
import { Retention } from '../src/workers/retention.ts'
import { buildTestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// Retention (RETENTION_DAYS): leases, their idempotency keys and the events of sessions
// STOPPED or FAILED longer ago than the retention age are purged; GET /v1/costs keeps
// answering exactly as before from daily per-holder rollups; a live session's rows and
// recently ended sessions' rows stay. The history is written on a manual clock set
// months back; the purge compares ages with Postgres's now().

const OPERATOR = 'operator-key-0123456789'
const CLIENT_A = 'client-a-key-0123456789'
const CLIENT_B = 'client-b-key-0123456789'
const DAY = 86400
const root = await mkdtemp(join(tmpdir(), 'retention-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
for (const dir of ['receipts', 'local', 'failing', 'recent', 'live']) await mkdir(join(root, dir))
const snap = (name: string) => `file://${join(root, name)}`
const SIZE = { cpuUnits: 1024, memoryMiB: 2048, architecture: 'x86_64' as const, capacityProvider: 'FARGATE' }

t.test('a purge keeps GET /v1/costs as it was and removes only what retention allows', async (t) => {
  // 90 days ago, at a UTC midnight plus 10 hours.
  const start = Math.floor((Date.now() - 90 * DAY * 1000) / (DAY * 1000)) * DAY * 1000 + 10 * 3600 * 1000
  const clock = new ManualClock(start)
  const launcher = new ScriptedLauncher()
  launcher.failLaunchesOf.add('failing')
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.healthy = true
  const ctx = await buildTestApp(t, {
    snapshotRoot: root,
    clock,
    launcher,
    apiKeys: [{ role: 'operator', key: OPERATOR }, { role: 'client', key: CLIENT_A }, { role: 'client', key: CLIENT_B }],
  })
  const passes = async (n = 2) => {
    for (let i = 0; i < n; i++) await ctx.workers.reconciler.reconcileOnce()
  }
  const acquire = async (key: string, body: Record<string, unknown>, idempotencyKey?: string) => {
    const res = await ctx.app.inject({
      method: 'POST',
      url: '/v1/leases',
      headers: { 'x-api-key': key, ...(idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}) },
      payload: { ttlSeconds: DAY, ...body },
    })
    t.equal(res.statusCode, 201, res.body)
    return res.json()
  }
  const release = (key: string, id: string) => ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${id}`, headers: { 'x-api-key': key } })
  const forceStop = async (sessionId: string) => {
    await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${sessionId}?force=true`, headers: { 'x-api-key': OPERATOR } })
    launcher.states.set(sessionId, { state: 'stopped', reason: 'stopped' })
    await passes()
  }
  const status = async (id: string) => (await ctx.services.sessions.get(id)).status

  // 90 days ago: a priced shared session held by two workflows and two clients...
  const a = await acquire(CLIENT_A, { snapshot: snap('receipts'), holder: 'wf-a' }, 'retry-key-1')
  launcher.states.set(a.session.id, chroma.running(SIZE))
  await passes()
  clock.advance(600)
  const b = await acquire(CLIENT_B, { snapshot: snap('receipts'), holder: 'wf-b' })
  clock.advance(600)
  await release(CLIENT_A, a.id)
  // ...the next day a second lease of wf-a on it, and one without a holder...
  clock.advance(DAY)
  const a2 = await acquire(CLIENT_A, { snapshot: snap('receipts'), holder: 'wf-a' })
  const anonymous = await acquire(CLIENT_B, { snapshot: snap('receipts') })
  clock.advance(1800)
  await release(CLIENT_B, anonymous.id)
  await forceStop(a.session.id)
  t.equal(await status(a.session.id), 'STOPPED')
  // ...an unpriced local session, stopped...
  const local = await acquire(CLIENT_B, { snapshot: snap('local'), holder: 'wf-b', mode: 'exclusive' })
  launcher.states.set(local.session.id, chroma.running())
  await passes()
  clock.advance(300)
  await forceStop(local.session.id)
  t.equal(await status(local.session.id), 'STOPPED')
  // ...one that failed to launch...
  const failed = await acquire(CLIENT_A, { snapshot: snap('failing'), holder: 'wf-a', mode: 'exclusive' })
  await passes()
  t.equal(await status(failed.session.id), 'FAILED')
  // ...and one that still serves, with an ended lease and a live one (READY: the reaper has not run).
  const liveEnded = await acquire(CLIENT_A, { snapshot: snap('live'), holder: 'wf-live' })
  launcher.states.set(liveEnded.session.id, chroma.running(SIZE))
  await passes()
  clock.advance(600)
  await release(CLIENT_A, liveEnded.id)
  const liveHeld = await acquire(CLIENT_A, { snapshot: snap('live'), holder: 'wf-live' })
  t.equal(liveHeld.session.id, liveEnded.session.id)

  // 2 days ago: a session that ended recently (within RETENTION_DAYS).
  clock.advance(86 * DAY)
  const recent = await acquire(CLIENT_B, { snapshot: snap('recent'), holder: 'wf-b' })
  launcher.states.set(recent.session.id, chroma.running(SIZE))
  await passes()
  clock.advance(3600)
  await release(CLIENT_B, recent.id)
  await forceStop(recent.session.id)
  t.equal(await status(recent.session.id), 'STOPPED')
  t.equal(await status(liveHeld.session.id), 'READY')
  clock.advance(DAY)

  const rowsOf = async (sessionId: string) => {
    const [row] = await ctx.sql.rows<{ leases: number; events: number; sessions: number }>(Prisma.sql`
      SELECT (SELECT count(*) FROM leases WHERE session_id = ${sessionId}::uuid)::int AS leases,
             (SELECT count(*) FROM session_events WHERE session_id = ${sessionId}::uuid)::int AS events,
             (SELECT count(*) FROM sessions WHERE id = ${sessionId}::uuid)::int AS sessions`)
    return row!
  }
  const day = (offsetDays: number) => new Date(start - (start % (DAY * 1000)) + offsetDays * DAY * 1000).toISOString()
  const reports: Array<[string, string]> = [
    [OPERATOR, ''],
    [CLIENT_A, ''],
    [CLIENT_B, ''],
    [OPERATOR, '?holder=wf-a'],
    [CLIENT_B, '?holder=wf-b'],
    [OPERATOR, `?since=${day(0)}`],
    [OPERATOR, `?since=${day(1)}`],
    [OPERATOR, `?since=${day(2)}`],
    [CLIENT_A, `?since=${day(1)}`],
    [OPERATOR, '?limit=2'],
  ]
  const answers = async () => {
    const out: unknown[] = []
    for (const [key, query] of reports) {
      const res = await ctx.app.inject({ url: `/v1/costs${query}`, headers: { 'x-api-key': key } })
      t.equal(res.statusCode, 200, res.body)
      out.push({ key, query, workflows: res.json().workflows })
    }
    return out
  }
  const before = await answers()
  const beforeRows = {
    live: await rowsOf(liveHeld.session.id),
    recent: await rowsOf(recent.session.id),
  }
  const old = [a.session.id, local.session.id, failed.session.id]
  for (const id of old) t.ok((await rowsOf(id)).leases > 0, 'an old ended session has leases before the purge')
  const wfA = (before[0] as { workflows: Array<{ holder: string | null; costUsd: number; sessions: number; leases: number }> }).workflows.find((w) => w.holder === 'wf-a')!
  t.ok(wfA.costUsd > 0 && wfA.leases === 3 && wfA.sessions === 2, 'the report has priced shares to keep')

  // Batches of one session: the pass goes on until a batch comes back short.
  const retention = new Retention(clock, ctx.services.retention, { retentionDays: 30, batchSize: 1 })
  const purged = await retention.purgeOnce()
  t.same(purged.sessions, 3, 'the three sessions that ended 89 days ago')
  t.equal(purged.leases, 6)
  t.ok(purged.events > 0)

  for (const id of old) t.same(await rowsOf(id), { leases: 0, events: 0, sessions: 1 }, 'their leases and events are gone; the session row stays')
  t.same(await rowsOf(liveHeld.session.id), beforeRows.live, "a live session's rows stay, its old ended lease too")
  t.same(await rowsOf(recent.session.id), beforeRows.recent, 'a recently ended session stays')
  t.same(await answers(), before, 'GET /v1/costs answers exactly as before the purge')

  t.same(await retention.purgeOnce(), { sessions: 0, leases: 0, events: 0 }, 'a second pass finds nothing')
  t.same(await answers(), before, 'and the answers still hold')

  // The purged lease's idempotency key went with it: a retry now makes a new lease.
  const again = await acquire(CLIENT_A, { snapshot: snap('receipts'), holder: 'wf-a' }, 'retry-key-1')
  t.not(again.id, a.id)
})

t.test('an acquire does not wait for a purge in progress', async (t) => {
  const clock = new ManualClock(Date.now() - 60 * DAY * 1000)
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.healthy = true
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock, launcher })
  const acquire = async (body: Record<string, unknown>) => {
    const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { ttlSeconds: DAY, ...body } })
    t.equal(res.statusCode < 300, true, res.body)
    return res.json()
  }
  // An old stopped session to purge, and a READY one of the same snapshot to attach to.
  const old = await acquire({ snapshot: snap('receipts'), mode: 'exclusive' })
  launcher.states.set(old.session.id, chroma.running(SIZE))
  await ctx.workers.reconciler.reconcileOnce()
  await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${old.session.id}?force=true` })
  launcher.states.set(old.session.id, { state: 'stopped', reason: 'stopped' })
  for (let i = 0; i < 2; i++) await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(old.session.id)).status, 'STOPPED')
  const live = await acquire({ snapshot: snap('live') })
  launcher.states.set(live.session.id, chroma.running(SIZE))
  for (let i = 0; i < 2; i++) await ctx.workers.reconciler.reconcileOnce()

  // The purge's statement, run in a transaction left open: its locks stay held.
  const client = new pg.Client({ connectionString: ctx.databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('BEGIN')
  clock.advance(31 * 86400) // the old session ended over RETENTION_DAYS ago, by the clock the SQL reads
  const purged = await new RetentionService(new SqlPool(client as unknown as pg.Pool), DEFAULT_FARGATE_PRICES).purgeBatch(30, 50, clock.sql)
  t.equal(purged.sessions, 1, 'the purge holds the old session and its deleted rows')

  const inTime = <T>(p: Promise<T>) =>
    Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the acquire waited on the purge')), 30_000))])
  const attached = await inTime(acquire({ snapshot: snap('live') }))
  t.equal(attached.session.id, live.session.id, 'an acquire attaches to a serving session meanwhile')
  const fresh = await inTime(acquire({ snapshot: snap('receipts'), mode: 'exclusive' }))
  t.not(fresh.session.id, old.session.id, 'and one starts a new session of the purged snapshot')
  await client.query('COMMIT')
})
