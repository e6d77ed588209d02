import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { PostgresChangeFeed, type Change } from '../src/database/change-feed.ts'
import { SqlPool } from '../src/database/client.ts'
import { Prisma } from '../src/generated/prisma/client.ts'
import { ManualClock } from '../src/services/clock.ts'
import { LeaseRouter } from '../src/services/lease-routes.ts'
import { buildTestApp, type TestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// The proxy's route cache against the database it caches: an expiry only moves forward,
// a renew on another replica is seen, and a change that lands while a route loads counts.
// The keep-alive statement reads the clock's SQL, here the manual clock's instant; it
// starts at the real time so that rows written with Postgres's own now() agree with it.

const root = await mkdtemp(join(tmpdir(), 'lease-routes-'))
await mkdir(join(root, 'receipts'))
const snapshot = `file://${join(root, 'receipts')}`
const clock = new ManualClock(Date.now())
const chroma = await new FakeChroma().start()
chroma.healthy = true
t.teardown(() => chroma.close())
const launcher = new ScriptedLauncher()
const a = await buildTestApp(t, { snapshotRoot: root, clock, launcher, listen: false })
// A second replica on the same database and clock.
const b = await buildTestApp(t, { snapshotRoot: root, clock, launcher, databaseUrl: a.databaseUrl })

async function readyLease(ctx: TestApp, ttlSeconds = 60) {
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, mode: 'exclusive', ttlSeconds } })
  t.equal(res.statusCode, 201)
  const lease = res.json() as { id: string; token: string; session: { id: string } }
  launcher.states.set(lease.session.id, chroma.running())
  for (let i = 0; i < 5 && (await ctx.services.sessions.get(lease.session.id)).status !== 'READY'; i++) await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY')
  return lease
}

const expiresAt = async (id: string) => (await a.sql.rows<{ expires_at: Date }>(Prisma.sql`SELECT expires_at FROM leases WHERE id = ${id}::uuid`))[0]!.expires_at.getTime()
const heartbeat = (ctx: TestApp, token: string) => ctx.app.inject({ url: '/api/v2/heartbeat', headers: { 'x-chroma-token': token } })

t.test("proxied use never moves a lease's expiry earlier than a renew put it", async (t) => {
  const lease = await readyLease(a, 60)
  t.equal((await heartbeat(a, lease.token)).statusCode, 200, 'the route is cached with the 60 s TTL')
  const renewed = await a.app.inject({ method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: { ttlSeconds: 3600 } })
  t.equal(renewed.statusCode, 200)
  const renewedUntil = Date.parse(renewed.json().expiresAt)
  clock.advance(30) // past a third of the cached 60 s TTL: the proxy's keep-alive writes
  t.equal((await heartbeat(a, lease.token)).statusCode, 200)
  await a.services.router.flush()
  const after = await expiresAt(lease.id)
  t.ok(after >= renewedUntil, `the keep-alive kept the renewed expiry (${new Date(after).toISOString()} >= ${new Date(renewedUntil).toISOString()})`)
  clock.advance(100) // past what a keep-alive of now + 60 s would have set
  t.equal((await heartbeat(a, lease.token)).statusCode, 200, 'the route cache holds what the write returned')
})

t.test("a renew on another replica is not refused by this replica's route cache", async (t) => {
  const lease = await readyLease(a, 60)
  t.equal((await heartbeat(a, lease.token)).statusCode, 200, 'replica a caches the route (60 s)')
  const renewed = await b.app.inject({ method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: { ttlSeconds: 3600 } })
  t.equal(renewed.statusCode, 200, 'renewed through replica b')
  clock.advance(70) // past the expiry replica a cached, well within the renewed one
  const res = await heartbeat(a, lease.token)
  t.equal(res.statusCode, 200, `replica a serves the renewed lease (${res.body})`)
  clock.advance(3600) // and an expiry that the database confirms is still refused
  const ended = await heartbeat(a, lease.token)
  t.equal(ended.statusCode, 401)
  t.equal(ended.json().code, 'lease_ended')
})

t.test('a change notification that arrives while a route loads is not lost', async (t) => {
  const lease = await readyLease(a, 600)
  // A router of its own whose first read is held after Postgres answered it, until the
  // lease's release has been committed and its notification delivered.
  let hold: Promise<void> | null = null
  let readDone!: () => void
  const readAnswered = new Promise<void>((r) => (readDone = r))
  class HeldPool extends SqlPool {
    override async rows<T>(query: Prisma.Sql): Promise<T[]> {
      const rows = await a.sql.rows<T>(query)
      if (hold) {
        const h = hold
        hold = null
        readDone()
        await h
      }
      return rows
    }
    override execute(query: Prisma.Sql) {
      return a.sql.execute(query)
    }
  }
  const changes = await PostgresChangeFeed.connect(a.databaseUrl)
  t.teardown(() => changes.close())
  const router = new LeaseRouter(new HeldPool(null as never), clock, changes, a.services.tokens)
  t.teardown(() => router.close())
  let release!: () => void
  hold = new Promise((r) => (release = r))

  const first = router.resolve(lease.token, lease.session.id).then(
    () => 'served',
    (err: { code?: string }) => err.code,
  )
  await readAnswered // the route's row is read: the lease is still active in it
  const notified = new Promise<void>((resolve) => {
    const off = changes.on((c: Change) => {
      if (c.kind === 'lease' && c.leaseId === lease.id) resolve(off())
    })
  })
  t.equal((await a.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })).json().status, 'released')
  await notified // the router, subscribed first, has seen it too
  release()
  t.equal(await first, 'lease_ended', 'the load that raced the release reads again')
  const second = await router.resolve(lease.token, lease.session.id).then(
    () => 'served',
    (err: { code?: string }) => err.code,
  )
  t.equal(second, 'lease_ended', 'and no stale route was cached')
})

t.test("a replica whose estimate of the database's clock runs ahead does not refuse a live lease", async (t) => {
  // A DatabaseClock's estimate is only as good as its last sync: a replica paused or
  // starved in the middle of one comes back seconds off. The chaos suite saw such a
  // replica answer 401 lease_ended to a lease with most of a second left. Postgres, not
  // the estimate, judges an expiry the route cache sees.
  const ahead = { now: () => new Date(clock.now().getTime() + 10_000), get sql() { return clock.sql } }
  const c = await buildTestApp(t, { snapshotRoot: root, clock: ahead, launcher, databaseUrl: a.databaseUrl })
  const lease = await readyLease(a, 6)
  t.equal((await heartbeat(c, lease.token)).statusCode, 200, 'the first use, read from the database')
  t.equal((await heartbeat(c, lease.token)).statusCode, 200, 'a second use soon after')
  clock.advance(7)
  t.equal((await heartbeat(c, lease.token)).statusCode, 401, 'refused once Postgres says it expired')
})
