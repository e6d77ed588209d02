import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp, reconcileUntilSettled, type TestApp } from './helpers/app.ts'
import { sample } from './helpers/fake-session.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// Pinned snapshots on the real process launcher and real Chroma, TTLs on a manual clock.

const root = await mkdtemp(join(tmpdir(), 'pins-'))
const fixture = await buildSnapshotFixture(root, { count: 40, dim: 8 })
const snapshot = `file://${fixture.tarPath}`

async function setup(tt: Parameters<typeof buildTestApp>[0]) {
  const clock = new ManualClock()
  const ctx = await buildTestApp(tt, { snapshotRoot: root, clock, idleTtlSeconds: 60 })
  const inject = ctx.app.inject.bind(ctx.app)
  const pin = (body: Record<string, unknown>) => inject({ method: 'POST', url: '/v1/pins', payload: { snapshot, ...body } })
  const acquire = async (body: Record<string, unknown> = {}) => {
    const res = await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection, ...body } })
    if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
    return res.json()
  }
  return { ...ctx, clock, inject, pin, acquire }
}

/** Pins passes and reconciler passes (real time: sessions really start) until the pin keeps `ready` sessions READY. */
async function untilPinReady(ctx: TestApp, pinId: string, ready: number, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await ctx.services.pins.keepOnce()
    await ctx.workers.reconciler.reconcileOnce()
    const pin = await ctx.services.pins.get(pinId)
    if (pin.ready >= ready) return pin
    if (Date.now() > deadline) throw new Error(`pin ${pinId}: ${pin.ready} READY, ${pin.starting} starting after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

t.test('a shared pin keeps the snapshot\'s shared session READY with no lease; acquires attach at once', async (t) => {
  const ctx = await setup(t)
  const created = await ctx.pin({ collection: fixture.collection })
  t.equal(created.statusCode, 201, created.body)
  const pin = created.json()
  t.match(pin, { mode: 'shared', sessions: 1, ready: 0, starting: 0, collection: fixture.collection })
  t.equal((await ctx.services.pins.keepOnce()).started, 1)
  t.equal((await ctx.services.pins.keepOnce()).started, 0, 'a second pass sees the session starting')
  await untilPinReady(ctx, pin.id, 1)

  const lease = await ctx.acquire()
  t.equal(lease.session.status, 'READY', 'the acquire answers READY: it attached to the pinned session')
  t.equal(lease.session.pinId, pin.id)
  const sessionId = lease.session.id
  await ctx.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })
  ctx.clock.advance(600)
  t.same((await ctx.workers.reaper.reapOnce()).stopped, [], 'idle for ten TTLs, and kept: it is pinned')
  t.equal((await ctx.services.sessions.get(sessionId)).status, 'READY')

  const listed = (await ctx.inject({ method: 'GET', url: '/v1/pins' })).json().pins
  t.match(listed, [{ id: pin.id, ready: 1, starting: 0 }])
  const removed = await ctx.inject({ method: 'DELETE', url: `/v1/pins/${pin.id}` })
  t.equal(removed.statusCode, 200)
  t.same((await ctx.inject({ method: 'GET', url: '/v1/pins' })).json().pins, [])
  t.same((await ctx.workers.reaper.reapOnce()).stopped, [{ id: sessionId, reason: 'idle' }], 'unpinned, it idles out like any session')
})

t.test('an exclusive pin keeps standbys; an exclusive acquire takes one READY, and the pin replaces it', async (t) => {
  const ctx = await setup(t)
  const pin = (await ctx.pin({ collection: fixture.collection, mode: 'exclusive', sessions: 2 })).json()
  await untilPinReady(ctx, pin.id, 2)
  ctx.clock.advance(600)
  t.same((await ctx.workers.reaper.reapOnce()).stopped, [], 'standbys are not idle sessions')

  const lease = await ctx.acquire({ mode: 'exclusive' })
  t.equal(lease.session.status, 'READY', 'the acquire answers READY at once')
  t.equal(lease.session.pinId, pin.id)
  t.ok(lease.session.claimedAt)
  const q = await ctx.inject({
    method: 'POST',
    url: `/v1/sessions/${lease.session.id}/query`,
    headers: { 'x-chroma-token': lease.token },
    payload: { collection: fixture.collection, queryEmbeddings: [fixture.vector(3)], nResults: 1 },
  })
  t.equal(q.json().ids[0][0], 'r-3', 'the standby serves its holder')
  const metrics = (await ctx.inject({ method: 'GET', url: '/metrics' })).body
  t.ok((sample(metrics, 'chroma_lease_acquire_duration_seconds_count', { mode: 'exclusive', outcome: 'pinned', waited: 'false' }) ?? 0) >= 1, 'counted as pinned')

  t.equal((await ctx.services.pins.get(pin.id)).ready, 1, 'one standby left')
  t.equal((await ctx.services.pins.keepOnce()).started, 1, 'the pass starts a replacement')
  const shared = await ctx.acquire()
  t.not(shared.session.pinId, pin.id, 'a shared acquire never takes an exclusive standby')

  // Removing the pin stops its unclaimed standbys; the one a lease holds serves on.
  await ctx.inject({ method: 'DELETE', url: `/v1/pins/${pin.id}` })
  const pass = await ctx.services.pins.keepOnce()
  t.equal(pass.stopped, 2, 'the READY standby and the replacement are stopped')
  t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY', 'the claimed one is not')
})

t.test('one READY standby, concurrent exclusive acquires: exactly one takes it', async (t) => {
  const ctx = await setup(t)
  const pin = (await ctx.pin({ mode: 'exclusive', sessions: 1 })).json()
  await untilPinReady(ctx, pin.id, 1)
  const leases = await Promise.all(Array.from({ length: 5 }, () => ctx.acquire({ mode: 'exclusive' })))
  t.equal(leases.filter((l) => l.session.pinId === pin.id).length, 1, 'one acquire took the standby')
  t.equal(new Set(leases.map((l) => l.session.id)).size, 5, 'five sessions, none shared by two exclusive leases')
})

t.test('bad pins are refused with a 4xx and change nothing', async (t) => {
  const ctx = await setup(t)
  const shared2 = await ctx.pin({ sessions: 2 })
  t.equal(shared2.statusCode, 400)
  t.equal(shared2.json().code, 'invalid_pin')
  t.equal((await ctx.pin({ mode: 'exclusive', sessions: 51 })).statusCode, 400)
  t.equal((await ctx.pin({ snapshot: 'file:///nowhere/at/all.tar' })).statusCode, 422)
  t.equal((await ctx.pin({ snapshot: 'ftp://x' })).statusCode, 422)
  const first = (await ctx.pin({ collection: fixture.collection })).json()
  const again = await ctx.pin({ collection: fixture.collection })
  t.equal(again.statusCode, 409)
  t.match(again.json(), { code: 'pin_exists', pinId: first.id })
  t.equal((await ctx.pin({ collection: fixture.collection, mode: 'exclusive' })).statusCode, 201, 'another mode is another pin')
  const missing = await ctx.inject({ method: 'DELETE', url: '/v1/pins/00000000-0000-4000-8000-000000000000' })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'pin_not_found')
  t.equal((await ctx.inject({ method: 'GET', url: '/v1/pins' })).json().pins.length, 2)
})
