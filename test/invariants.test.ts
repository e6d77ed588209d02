import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import pg from 'pg'
import { openDatabase } from '../src/database/client.ts'
import { DatabaseClock, ManualClock, type Clock } from '../src/services/clock.ts'
import { buildTestApp, type TestApp } from './helpers/app.ts'
import { freshDatabaseUrl } from './helpers/database.ts'
import { ScriptedLauncher } from './helpers/fake-session.ts'

// DESIGN.md's invariants where they are easiest to break: the database's clock against
// a host clock that jumps, renew racing a stop, two releases and two reapers racing,
// and more sessions than one page of a worker's query. Each race is made deterministic
// by a transaction of the test's own that holds the row lock the product contends for.

const root = await mkdtemp(join(tmpdir(), 'invariants-'))
for (const dir of ['receipts', 'invoices']) await mkdir(join(root, dir))
const snap = (name: string) => `file://${join(root, name)}`

async function setup(tt: Parameters<typeof buildTestApp>[0], opts: { clock?: Clock; databaseUrl?: string; idleTtlSeconds?: number } = {}) {
  const launcher = new ScriptedLauncher()
  const ctx = await buildTestApp(tt, { snapshotRoot: root, launcher, clock: opts.clock ?? new ManualClock(), databaseUrl: opts.databaseUrl, idleTtlSeconds: opts.idleTtlSeconds })
  const acquire = async (body: Record<string, unknown> = {}) => {
    const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: snap('receipts'), ...body } })
    tt.equal(res.statusCode, 201, 'acquired')
    return res.json()
  }
  // Tests that move time hand in a ManualClock (the default).
  return { ...ctx, clock: ctx.clock as ManualClock, launcher, acquire }
}

/** Puts a session straight into READY, as a reconcile pass would once its Chroma answered. */
async function makeReady(ctx: TestApp, sessionId: string) {
  await ctx.db.$executeRaw`UPDATE sessions SET status = 'READY', ready_at = ${ctx.clock.sql}, launched_at = ${ctx.clock.sql},
    host = '127.0.0.1', port = 9, launch_ref = 'fake' WHERE id = ${sessionId}::uuid`
}

/** A connection of the test's own, for transactions that hold locks the product waits on. */
async function rawClient(tt: Parameters<typeof buildTestApp>[0], url: string) {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  tt.teardown(() => c.end())
  return c
}

/** Waits until `n` backends of this database wait on a lock (the statements under test have started). */
async function lockWaiters(c: pg.Client, n: number, deadlineMs = 20_000, settled: () => boolean = () => false) {
  const deadline = Date.now() + deadlineMs
  for (;;) {
    if (settled()) return
    const { rows } = await c.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`)
    if (rows[0].n >= n) return
    if (Date.now() > deadline) throw new Error(`fewer than ${n} statements waiting on a lock after ${deadlineMs} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

t.test("one clock: a replica whose host clock jumps an hour ahead ends no lease and stops no session early", async (t) => {
  const databaseUrl = await freshDatabaseUrl()
  // Both replicas run on the database's real clock; the second one's host clock jumps
  // an hour ahead after its last sync, as a host with a bad NTP step would.
  const clockDb = openDatabase(databaseUrl, 1).db
  t.teardown(() => clockDb.$disconnect())
  const steady = new DatabaseClock(clockDb)
  let jump = 0
  const jumping = new DatabaseClock(clockDb, () => Date.now() + jump)
  await steady.sync()
  await jumping.sync()
  const a = await setup(t, { clock: steady, databaseUrl, idleTtlSeconds: 300 })
  const b = await setup(t, { clock: jumping, databaseUrl, idleTtlSeconds: 300 })

  const held = await a.acquire({ ttlSeconds: 300, holder: 'held' })
  const renewed = await a.acquire({ ttlSeconds: 300, holder: 'renewed' })
  const released = await a.acquire({ ttlSeconds: 300, holder: 'released' })
  await makeReady(a, held.session.id)
  // A session that has just gone idle: its idle TTL (300 s) is far from over.
  const idle = await a.acquire({ snapshot: snap('invoices'), ttlSeconds: 300 })
  await makeReady(a, idle.session.id)
  await a.app.inject({ method: 'DELETE', url: `/v1/leases/${idle.id}` })
  // A session that started launching a moment ago (start timeout 120 s).
  const starting = await a.acquire({ mode: 'exclusive', ttlSeconds: 300 })
  await a.workers.reconciler.reconcileOnce()
  t.equal((await a.services.sessions.get(starting.session.id)).status, 'STARTING')

  jump = 3600_000
  t.ok(jumping.now().getTime() - Date.now() > 3500_000, "the replica's host clock is an hour ahead")
  const reaped = await b.workers.reaper.reapOnce()
  t.same(reaped, { leasesExpired: 0, drained: 0, stopped: [] }, 'its reaper expires no lease and stops no session')
  await b.workers.reconciler.reconcileOnce()
  t.equal((await b.services.sessions.get(starting.session.id)).status, 'STARTING', 'its reconciler fails no session for a start timeout that has not passed')

  const renew = await b.app.inject({ method: 'POST', url: `/v1/leases/${renewed.id}/renew`, payload: { ttlSeconds: 60 } })
  t.equal(renew.statusCode, 200, 'it renews a live lease')
  t.equal(renew.json().status, 'active')
  t.equal(renew.json().expiresAt, renewed.expiresAt, 'a shorter TTL never moves the expiry earlier')
  const release = await b.app.inject({ method: 'DELETE', url: `/v1/leases/${released.id}` })
  t.match(release.json(), { status: 'released', endReason: 'released' }, 'a release is a release, not an expiry')
  t.ok(Date.parse(release.json().endedAt) < Date.parse(released.expiresAt), 'ended when released, by the database clock')
  const read = await b.app.inject({ method: 'GET', url: `/v1/leases/${held.id}` })
  t.match(read.json(), { status: 'active', session: { status: 'READY', leaseCount: 2 } }, 'it shows a live lease as active')
  for (const s of [held.session.id, idle.session.id]) t.equal((await a.services.sessions.get(s)).status, 'READY')
  const ended = await a.db.lease.count({ where: { endedAt: { not: null }, id: { not: released.id } } })
  t.equal(ended, 1, 'only the released leases ended (and the idle session\'s, released before the jump)')
})

t.test('renew takes the session row lock: a stop that won makes it 410, a renew that won keeps the session', async (t) => {
  const ctx = await setup(t)
  const c = await rawClient(t, ctx.databaseUrl)

  // Order 1: a stop holds the session's row lock and commits STOPPING while the renew waits.
  const first = await ctx.acquire({ ttlSeconds: 60 })
  await makeReady(ctx, first.session.id)
  await c.query('BEGIN')
  await c.query(`SELECT id FROM sessions WHERE id = $1 FOR UPDATE`, [first.session.id])
  await c.query(`UPDATE sessions SET status = 'STOPPING', stop_reason = 'idle' WHERE id = $1`, [first.session.id])
  const renewing = ctx.app.inject({ method: 'POST', url: `/v1/leases/${first.id}/renew`, payload: { ttlSeconds: 600 } })
  await lockWaiters(c, 1)
  await c.query('COMMIT')
  const refused = await renewing
  t.equal(refused.statusCode, 410, 'the stop won: the renew is refused')
  t.match(refused.json(), { code: 'lease_ended', detail: /stopping/ })
  const [after] = await ctx.db.$queryRaw<Array<{ expires_at: Date }>>`SELECT expires_at FROM leases WHERE id = ${first.id}::uuid`
  t.equal(after!.expires_at.toISOString(), first.expiresAt, 'its expiry did not move')

  // Order 2: an attach-style share lock is held while the renew goes through; the stop waits for it, then sees a live lease.
  const second = await ctx.acquire({ snapshot: snap('invoices'), ttlSeconds: 60 })
  await makeReady(ctx, second.session.id)
  ctx.clock.advance(59)
  await c.query('BEGIN')
  await c.query(`SELECT id FROM sessions WHERE id = $1 FOR SHARE`, [second.session.id])
  const renewed = await ctx.app.inject({ method: 'POST', url: `/v1/leases/${second.id}/renew`, payload: { ttlSeconds: 600 } })
  t.equal(renewed.statusCode, 200, 'the renew went first')
  ctx.clock.advance(2) // past the lease's first expiry: only the renewal keeps it alive
  const s = await ctx.services.sessions.get(second.session.id)
  const stopping = ctx.services.sessions.stopUnleased(s, 'idle')
  await lockWaiters(c, 1)
  await c.query('COMMIT')
  t.equal(await stopping, false, 'the stop sees the renewed lease and leaves the session')
  t.equal((await ctx.services.sessions.get(second.session.id)).status, 'READY')
})

t.test('an expiry only moves forward: a renew with a shorter TTL keeps the later one', async (t) => {
  const ctx = await setup(t)
  const lease = await ctx.acquire({ ttlSeconds: 3600 })
  ctx.clock.advance(10)
  const shorter = await ctx.app.inject({ method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: { ttlSeconds: 60 } })
  t.equal(shorter.statusCode, 200)
  t.equal(shorter.json().expiresAt, lease.expiresAt, 'a 60 s renew does not cut a 3600 s lease short')
  ctx.clock.advance(100)
  t.equal((await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json().status, 'active', 'still active past the shorter TTL')
  const longer = await ctx.app.inject({ method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: { ttlSeconds: 7200 } })
  t.equal(Date.parse(longer.json().expiresAt), ctx.clock.now().getTime() + 7200_000, 'a longer TTL moves it forward from now')
})

t.test('two concurrent releases of one lease both answer its final state', async (t) => {
  const ctx = await setup(t)
  const c = await rawClient(t, ctx.databaseUrl)
  const lease = await ctx.acquire({ ttlSeconds: 300 })
  // The first release has ended the lease but not committed when the second one starts.
  await c.query('BEGIN')
  await c.query(`UPDATE leases SET ended_at = $2, end_reason = 'released' WHERE id = $1`, [lease.id, ctx.clock.now()])
  const second = ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })
  await lockWaiters(c, 1)
  await c.query('COMMIT')
  const answer = await second
  t.equal(answer.statusCode, 200)
  t.match(answer.json(), { status: 'released', endReason: 'released' }, 'the loser answers "released", never "active"')
  t.equal(await ctx.db.sessionEvent.count({ where: { leaseId: lease.id, type: { startsWith: 'lease_' }, NOT: { type: 'lease_attached' } } }), 0, 'the loser wrote no event of its own')
})

t.test('one event per fact: two reapers expiring one lease write one lease_expired', async (t) => {
  const databaseUrl = await freshDatabaseUrl()
  const clock = new ManualClock()
  const a = await setup(t, { clock, databaseUrl })
  const b = await setup(t, { clock, databaseUrl })
  const c = await rawClient(t, databaseUrl)
  const lease = await a.acquire({ ttlSeconds: 30 })
  clock.advance(31)
  // Both reapers read the lease as due while a third party holds its row; then it lets go.
  await c.query('BEGIN')
  await c.query('SELECT id FROM leases WHERE id = $1 FOR UPDATE', [lease.id])
  let done = false
  const both = Promise.all([a.workers.reaper.expireLeases(), b.workers.reaper.expireLeases()]).finally(() => (done = true))
  // Either both wait on the row (and must not both write) or both skip it (and a later pass records it).
  await lockWaiters(c, 2, 20_000, () => done)
  await c.query('COMMIT')
  await both
  await a.workers.reaper.expireLeases()
  await b.workers.reaper.expireLeases()
  t.equal(await a.db.sessionEvent.count({ where: { leaseId: lease.id, type: 'lease_expired' } }), 1, 'one lease_expired event')
  t.match((await a.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json(), { status: 'expired', endReason: 'expired' })
})

t.test('a lease ended by its session failing says so', async (t) => {
  const ctx = await setup(t)
  const lease = await ctx.acquire({ ttlSeconds: 300 })
  await ctx.workers.reconciler.reconcileOnce()
  ctx.launcher.states.set(lease.session.id, { state: 'stopped', reason: 'task failed to start' })
  await ctx.workers.reconciler.reconcileOnce()
  const read = (await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json()
  t.match(read, { status: 'ended', endReason: 'session_failed', session: { status: 'FAILED' } }, 'not "released"')
})

t.test('the reaper sees every due session, however many leased ones come first', async (t) => {
  const ctx = await setup(t, { idleTtlSeconds: 60 })
  // 2,000 draining sessions that still hold leases, written before the one that is due.
  await ctx.db.$executeRaw`
    WITH s AS (
      INSERT INTO sessions (id, mode, pool_key, snapshot, status, launcher, idle_ttl_seconds, created_by, created_at, updated_at, ready_at, draining_at, stop_reason)
      SELECT gen_random_uuid(), 'exclusive', NULL, 'file:///held', 'DRAINING', 'process', 60, 'test', ${ctx.clock.sql}, ${ctx.clock.sql}, ${ctx.clock.sql}, ${ctx.clock.sql}, 'drain'
      FROM generate_series(1, 2000)
      RETURNING id)
    INSERT INTO leases (id, session_id, token_hash, principal, request_hash, ttl_seconds, expires_at, created_at)
    SELECT gen_random_uuid(), s.id, md5(s.id::text), 'anonymous', 'x', 3600, ${ctx.clock.sql} + interval '1 hour', ${ctx.clock.sql} FROM s`
  const due = await ctx.acquire({ ttlSeconds: 30 })
  await makeReady(ctx, due.session.id)
  await ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${due.id}` })
  ctx.clock.advance(61)
  const { stopped } = await ctx.workers.reaper.reapOnce()
  t.same(stopped, [{ id: due.session.id, reason: 'idle' }], 'the idle session is stopped, and no leased one')
  t.equal(await ctx.db.session.count({ where: { status: 'DRAINING' } }), 2000, 'the leased sessions keep draining')
})
