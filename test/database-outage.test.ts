import { once } from 'node:events'
import { mkdir, mkdtemp } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { InjectOptions } from 'fastify'
import t from 'tap'
import { createDatabase, isDatabaseUnavailable } from '../src/database/client.ts'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { startDedicatedPostgres } from './helpers/dedicated-postgres.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// Postgres really stopped under a running app: every route answers 503
// database_unavailable with Retry-After (not 500), proxied requests on routes already
// known keep flowing, and the app recovers by itself when Postgres is back.

const postgres = await startDedicatedPostgres(t)
const root = await mkdtemp(join(tmpdir(), 'outage-'))
await mkdir(join(root, 'receipts'))
const snapshot = `file://${join(root, 'receipts')}`
const clock = new ManualClock(Date.now())
const chroma = await new FakeChroma().start()
chroma.healthy = true
t.teardown(() => chroma.close())
const launcher = new ScriptedLauncher()
const ctx = await buildTestApp(t, { databaseUrl: postgres.url, snapshotRoot: root, clock, launcher })
const inject = ctx.app.inject.bind(ctx.app)

const lease = (await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, mode: 'exclusive' } })).json() as { id: string; token: string; session: { id: string } }
launcher.states.set(lease.session.id, chroma.running())
for (let i = 0; i < 5 && (await ctx.services.sessions.get(lease.session.id)).status !== 'READY'; i++) await ctx.workers.reconciler.reconcileOnce()
const proxied = () => inject({ url: '/api/v2/heartbeat', headers: { 'x-chroma-token': lease.token } })

t.test('with Postgres stopped: 503 database_unavailable everywhere, cached proxy routes keep serving', async (t) => {
  t.equal((await proxied()).statusCode, 200, 'the route is known before the outage')
  await postgres.stop()

  const routes: Array<[string, InjectOptions]> = [
    ['acquire', { method: 'POST', url: '/v1/leases', payload: { snapshot } }],
    ['read a lease', { url: `/v1/leases/${lease.id}` }],
    ['renew', { method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: {} }],
    ['release', { method: 'DELETE', url: `/v1/leases/${crypto.randomUUID()}` }],
    ['list sessions', { url: '/v1/sessions' }],
    ['read a session', { url: `/v1/sessions/${lease.session.id}` }],
    ['timeline', { url: `/v1/sessions/${lease.session.id}/events` }],
    ['costs', { url: '/v1/costs' }],
    ['a proxied request with an unknown token', { url: '/api/v2/heartbeat', headers: { 'x-chroma-token': 'clt_unknown' } }],
  ]
  for (const [name, req] of routes) {
    const res = await inject(req)
    t.equal(res.statusCode, 503, `${name}: ${res.body}`)
    t.equal(res.json().code, 'database_unavailable', name)
    t.match(res.headers['content-type'], /^application\/problem\+json/, name)
    t.match(res.headers['retry-after'], /^\d+$/, `${name}: Retry-After`)
  }
  t.equal((await inject('/readyz')).statusCode, 503, 'not ready')

  // Past the route cache's 10 s re-read: the known route keeps serving while the database is away.
  const until = Date.now() + 12_000
  let served = 0
  while (Date.now() < until) {
    const res = await proxied()
    t.equal(res.statusCode, 200, 'a proxied request on a known route')
    if (res.statusCode !== 200) break
    served++
    await new Promise((r) => setTimeout(r, 500))
  }
  t.ok(served > 0)

  await postgres.start()
  // Recovery is the app's own: the same pools and change feed, no restart.
  let status = 0
  for (const deadline = Date.now() + 60_000; status !== 201 && Date.now() < deadline; ) {
    status = (await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot } })).statusCode
    if (status !== 201) await new Promise((r) => setTimeout(r, 250))
  }
  t.equal(status, 201, 'acquire works again once Postgres is back')
  t.equal((await inject(`/v1/leases/${lease.id}`)).statusCode, 200)
  t.equal((await inject('/v1/sessions')).statusCode, 200)
  t.equal((await proxied()).statusCode, 200)
})

t.test('a Postgres that is starting up (SQLSTATE 57P03, wrapped by Prisma as P2039) is unavailable, not an internal error', async (t) => {
  // What a real Postgres answers every new connection during crash recovery, e.g. after
  // an immediate restart: a FATAL ErrorResponse with 57P03, then it closes. Found by the
  // chaos suite as 500 internal_error on release and acquire through a Postgres restart.
  const field = (type: string, value: string) => Buffer.concat([Buffer.from(type), Buffer.from(value), Buffer.from([0])])
  const fields = Buffer.concat([field('S', 'FATAL'), field('V', 'FATAL'), field('C', '57P03'), field('M', 'the database system is starting up'), Buffer.from([0])])
  const header = Buffer.alloc(5)
  header.write('E', 0)
  header.writeInt32BE(fields.length + 4, 1)
  const recovering = createServer((socket) => {
    socket.once('data', () => socket.end(Buffer.concat([header, fields])))
    socket.on('error', () => {})
  })
  recovering.listen(0, '127.0.0.1')
  await once(recovering, 'listening')
  t.teardown(() => recovering.close())
  const { port } = recovering.address() as AddressInfo
  const db = createDatabase(`postgresql://u:p@127.0.0.1:${port}/x`)
  t.teardown(() => db.$disconnect())
  const err = await db.apiKey.count().then(() => null, (e: unknown) => e)
  t.ok(err, 'the query fails')
  t.match(err, { code: 'P2039' }, "Prisma's own code names no outage; its driver adapter's cause holds the SQLSTATE")
  t.ok(isDatabaseUnavailable(err), 'recognised as the database being unavailable (503 database_unavailable)')
})
