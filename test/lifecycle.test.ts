import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp, reconcileUntilSettled, type TestApp } from './helpers/app.ts'
import { buildSnapshotFixture, chromaAnswers } from './helpers/snapshot-fixture.ts'

// The whole life of sessions on the real Chroma server, launched by the real process
// launcher, with TTLs on a manual clock: nothing here sleeps for a TTL.

const root = await mkdtemp(join(tmpdir(), 'lifecycle-'))
const fixture = await buildSnapshotFixture(root, { count: 40, dim: 8 })
const snapshot = `file://${fixture.tarPath}`

async function setup(tt: Parameters<typeof buildTestApp>[0], opts: Parameters<typeof buildTestApp>[1] = {}) {
  const clock = new ManualClock()
  const ctx = await buildTestApp(tt, { snapshotRoot: root, clock, idleTtlSeconds: 60, ...opts })
  const inject = ctx.app.inject.bind(ctx.app)
  const acquire = async (body: Record<string, unknown> = {}) => {
    const res = await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection, ...body } })
    if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
    return res.json()
  }
  return { ...ctx, clock, inject, acquire }
}

const eventTypes = async (ctx: TestApp, id: string) =>
  (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${id}/events?limit=1000` })).json().events.map((e: { type: string }) => e.type)

t.test('acquire, READY, query, release, and the idle stop', async (t) => {
  const ctx = await setup(t)
  const lease = await ctx.acquire({ holder: 'wf-1' })
  const ready = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(ready.status, 'READY')
  const view = (await ctx.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json()
  t.equal(view.session.status, 'READY')
  t.equal(view.session.endpoint.host, '127.0.0.1')
  t.equal(view.session.compute, null, 'a local process has no Fargate size, so no cost')
  t.notOk(await chromaAnswers(view.session.endpoint), 'the endpoint refuses a request without the session token')
  // The agent confirmer (it runs from STARTING on) tells the agent the control plane's time, on which lease tokens expire.
  await ctx.workers.confirmer.confirmSessions()
  t.ok(await chromaAnswers({ ...view.session.endpoint, token: view.sessionToken }), 'the endpoint is a live Chroma for the lease holder, with its lease token')

  const q = await ctx.inject({
    method: 'POST',
    url: `/v1/sessions/${lease.session.id}/query`,
    headers: { 'x-chroma-token': lease.token },
    payload: { collection: fixture.collection, queryEmbeddings: [fixture.vector(7)], nResults: 3 },
  })
  t.equal(q.statusCode, 200)
  t.equal(q.json().ids[0][0], 'r-7', 'the nearest neighbour of vector 7 is record 7')
  t.match(q.json().documents[0][0], /^receipt 7:/)
  t.equal(q.json().truncated, false)

  t.equal((await ctx.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })).json().session.leaseCount, 0)
  ctx.clock.advance(59)
  t.same((await ctx.workers.reaper.reapOnce()).stopped, [], 'not idle for its TTL yet')
  ctx.clock.advance(2)
  t.same((await ctx.workers.reaper.reapOnce()).stopped, [{ id: lease.session.id, reason: 'idle' }], 'stopped after its idle TTL')
  const stopped = await reconcileUntilSettledStop(ctx, lease.session.id)
  t.equal(stopped.status, 'STOPPED')
  t.same(await ctx.launcher.listRunning(), [], 'no process is left')
  t.notOk(await chromaAnswers({ ...view.session.endpoint, token: view.sessionToken }), 'Chroma is gone')
  t.same(await eventTypes(ctx, lease.session.id), [
    'created', 'lease_attached', 'launching', 'launched', 'running', 'ready', 'lease_released', 'stopping', 'stopped',
  ])
})

t.test('a session holding a live lease is never stopped for idleness (invariant 1)', async (t) => {
  const ctx = await setup(t)
  const lease = await ctx.acquire({ ttlSeconds: 600 })
  await reconcileUntilSettled(ctx, lease.session.id)
  for (let i = 0; i < 5; i++) {
    ctx.clock.advance(500)
    await ctx.workers.reaper.reapOnce()
    t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY', `still READY after ${(i + 1) * 500}s`)
    const renewed = await ctx.inject({ method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: {} })
    t.equal(renewed.statusCode, 200)
  }
  ctx.clock.advance(601)
  t.match(await ctx.workers.reaper.reapOnce(), { leasesExpired: 1, stopped: [] }, 'the lease expired; idle TTL counts from then')
  t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY')
  ctx.clock.advance(60)
  const { stopped } = await ctx.workers.reaper.reapOnce()
  t.same(stopped.map((s) => s.reason), ['idle'], 'stopped within idle TTL of the last lease ending (invariant 6)')
})

t.test('drain, force stop and max lifetime are recorded with their reasons', async (t) => {
  const ctx = await setup(t, { maxSessionSeconds: 3600, leaseTtlSeconds: 300 })
  const a = await ctx.acquire()
  await reconcileUntilSettled(ctx, a.session.id)

  const drained = await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${a.session.id}?reason=deploy` })
  t.equal(drained.json().status, 'DRAINING')
  const b = await ctx.acquire()
  t.not(b.session.id, a.session.id, 'a draining session takes no new leases')
  await ctx.workers.reaper.reapOnce()
  t.equal((await ctx.services.sessions.get(a.session.id)).status, 'DRAINING', 'its lease still holds it')
  await ctx.inject({ method: 'DELETE', url: `/v1/leases/${a.id}` })
  t.same((await ctx.workers.reaper.reapOnce()).stopped.map((s) => s.reason), ['drained'])

  await reconcileUntilSettled(ctx, b.session.id)
  const forced = await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${b.session.id}?force=true&reason=bad%20data` })
  t.equal(forced.json().status, 'STOPPING')
  t.equal(forced.json().leaseCount, 0, 'force stop ends the leases')
  t.match((await ctx.inject({ method: 'GET', url: `/v1/leases/${b.id}` })).json(), { status: 'ended', endReason: 'force_stopped' }, 'a force-stopped lease says so, not "released"')
  const events = (await ctx.inject({ method: 'GET', url: `/v1/sessions/${b.session.id}/events` })).json().events
  t.match(events.find((e: { type: string }) => e.type === 'force_stop'), { reason: 'bad data', detail: { liveLeases: 1 } })

  const c = await ctx.acquire({ ttlSeconds: 7200 })
  await reconcileUntilSettled(ctx, c.session.id)
  ctx.clock.advance(3601)
  t.equal((await ctx.workers.reaper.reapOnce()).drained, 1, 'past max lifetime: draining')
  t.equal((await ctx.services.sessions.get(c.session.id)).status, 'DRAINING')
  ctx.clock.advance(301)
  const { stopped } = await ctx.workers.reaper.reapOnce()
  t.same(stopped, [{ id: c.session.id, reason: 'max_lifetime' }], 'after the drain grace even a leased session stops')
  t.match((await ctx.inject({ method: 'GET', url: `/v1/leases/${c.id}` })).json(), { status: 'ended', endReason: 'max_lifetime' })
  for (const id of [a.session.id, b.session.id, c.session.id]) t.equal((await reconcileUntilSettledStop(ctx, id)).status, 'STOPPED')
})

t.test('failures keep their reason: a dead process, a missing collection, a corrupt snapshot', async (t) => {
  const ctx = await setup(t, { startTimeoutSeconds: 30 })
  const lease = await ctx.acquire()
  const ready = await reconcileUntilSettled(ctx, lease.session.id)
  process.kill(Number(ready.launchRef), 'SIGKILL')
  let s = ready
  for (let i = 0; i < 50 && s.status === 'READY'; i++) {
    await new Promise((r) => setTimeout(r, 100))
    await ctx.workers.reconciler.reconcileOnce()
    s = await ctx.services.sessions.get(lease.session.id)
  }
  t.equal(s.status, 'FAILED')
  t.match(s.error, /stopped unexpectedly/)
  const view = (await ctx.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json()
  t.equal(view.session.error, s.error, 'the lease shows why')
  t.equal(view.session.leaseCount, 0)

  // A snapshot never changes, so the agent fails at once rather than at the start deadline.
  const missing = await ctx.acquire({ collection: 'invoices', mode: 'exclusive' })
  const failed = await reconcileUntilSettled(ctx, missing.session.id)
  t.equal(failed.status, 'FAILED')
  t.match(failed.error, /collection "invoices" is not in snapshot/)

  // A session that never gets ready fails at the start deadline, by the clock.
  const slow = await ctx.acquire({ mode: 'exclusive' })
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(slow.session.id)).status, 'STARTING')
  ctx.clock.advance(31)
  await ctx.workers.reconciler.reconcileOnce()
  const late = await ctx.services.sessions.get(slow.session.id)
  t.equal(late.status, 'FAILED')
  t.match(late.error, /not ready within 30s/)

  const corruptPath = join(root, 'corrupt.tar')
  await writeFile(corruptPath, 'this is not a tar archive at all'.repeat(40))
  const corrupt = await ctx.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${corruptPath}` } })
  const bad = await reconcileUntilSettled(ctx, corrupt.json().session.id)
  t.equal(bad.status, 'FAILED')
  t.match(bad.error, /tar/i, `says what is wrong: ${bad.error}`)
  await ctx.workers.sweeper.sweepOnce()
  t.same(await ctx.launcher.listRunning(), [], 'failed sessions leave nothing running')
})

/** Reconciles until the session is STOPPED (real time: the process is really stopping). */
async function reconcileUntilSettledStop(ctx: TestApp, id: string) {
  for (let i = 0; i < 200; i++) {
    await ctx.workers.reconciler.reconcileOnce()
    const s = await ctx.services.sessions.get(id)
    if (s.status === 'STOPPED' || s.status === 'FAILED') return s
    await new Promise((r) => setTimeout(r, 100))
  }
  return ctx.services.sessions.get(id)
}
