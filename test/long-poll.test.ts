import { request as httpRequest } from 'node:http'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildTestApp, type TestApp } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// A long-poll (waitSeconds on GET /v1/leases/{id} or on the acquire) whose client hangs
// up stops waiting: it no longer holds a change-feed listener and a timer for the rest of
// its wait. No worker runs here, so the session stays PENDING and every wait would last.

const root = await mkdtemp(join(tmpdir(), 'long-poll-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(root, { count: 10, dim: 4 })
const snapshot = `file://${fixture.dir}`

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !check(); await new Promise((r) => setTimeout(r, 50))) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`)
  }
}

/**
 * The feed has no listener beyond `idle` for 2.5 s: a wait re-reads the session every
 * second (a listener removed and added again), so a wait still running shows within that.
 */
async function staysIdle(ctx: TestApp, idle: number): Promise<boolean> {
  for (const end = Date.now() + 2_500; Date.now() < end; await new Promise((r) => setTimeout(r, 20))) {
    if (ctx.changes.listenerCount() !== idle) return false
  }
  return true
}

/** A request on a connection of its own, given up (the socket destroyed) once `waiting` holds. */
async function hangUpWhen(ctx: TestApp, method: string, path: string, body: unknown, waiting: () => boolean): Promise<void> {
  const req = httpRequest(`${ctx.url}${path}`, { method, agent: false, headers: body === undefined ? {} : { 'content-type': 'application/json' } })
  const failed = new Promise<Error>((resolve) => req.once('error', resolve))
  req.end(body === undefined ? undefined : JSON.stringify(body))
  await until(`${method} ${path} is waiting`, waiting)
  req.destroy(new Error('gave up'))
  await failed
}

t.test('a long-poll whose client hangs up stops waiting', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true })
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, mode: 'exclusive' } })).json()
  t.equal(lease.session.status, 'PENDING')
  const idle = ctx.changes.listenerCount()

  await hangUpWhen(ctx, 'GET', `/v1/leases/${lease.id}?waitSeconds=50`, undefined, () => ctx.changes.listenerCount() === idle + 1)
  await until('the GET long-poll lets go of the change feed', () => ctx.changes.listenerCount() === idle)
  t.ok(await staysIdle(ctx, idle), 'GET /v1/leases/{id}?waitSeconds=50: the wait ended with its client')

  await hangUpWhen(ctx, 'POST', '/v1/leases', { snapshot, mode: 'exclusive', waitSeconds: 50 }, () => ctx.changes.listenerCount() === idle + 1)
  await until('the acquire lets go of the change feed', () => ctx.changes.listenerCount() === idle)
  t.ok(await staysIdle(ctx, idle), 'POST /v1/leases with waitSeconds=50: the wait ended with its client')
  const leases = (await ctx.app.inject({ method: 'GET', url: '/v1/leases' })).json().leases
  t.equal(leases.filter((l: { status: string }) => l.status === 'active').length, 2, 'the hung-up acquire still made its lease (it expires with its TTL, as any lease)')

  // A client that stays gets its answer at the end of the wait, as before.
  const short = await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}?waitSeconds=1` })
  t.equal(short.statusCode, 200)
  t.equal(short.json().session.status, 'PENDING')
})
