import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { ScriptedLauncher } from './helpers/fake-session.ts'

// Drain is for serving sessions: draining a PENDING or STARTING one would strand it
// (never launched, or its launch never recorded), so it is refused with the status
// and changes nothing; ?force=true stops it. (Draining READY: test/lifecycle.test.ts.)

t.test('DELETE /v1/sessions/{id} without force refuses a PENDING or STARTING session; force stops it', async (t) => {
  const launcher = new ScriptedLauncher()
  const snapshotRoot = await mkdtemp(`${tmpdir()}/drain-`)
  const ctx = await buildTestApp(t, { clock: new ManualClock(), launcher, snapshotRoot })
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${snapshotRoot}` } })).json()
  const id = lease.session.id as string
  const snapshotOf = async () => {
    const s = await ctx.services.sessions.get(id)
    const events = (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${id}/events?limit=1000` })).json().events.length
    return { status: s.status, generation: s.generation, stopReason: s.stopReason, drainingAt: s.drainingAt, leaseCount: s.leaseCount, events }
  }

  for (const status of ['PENDING', 'STARTING']) {
    if (status === 'STARTING') await ctx.workers.reconciler.reconcileOnce()
    const before = await snapshotOf()
    t.equal(before.status, status)
    const res = await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}?reason=deploy` })
    t.equal(res.statusCode, 409, `drain of a ${status} session: 409`)
    t.match(res.headers['content-type'], /^application\/problem\+json/)
    t.match(res.json(), { code: 'session_not_serving', status: 409, sessionStatus: status, detail: new RegExp(`${status}.*force=true`) })
    t.same(await snapshotOf(), before, 'and nothing changed')
  }

  const forced = await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}?force=true&reason=deploy` })
  t.equal(forced.statusCode, 200)
  t.equal(forced.json().status, 'STOPPING', 'force stops it, as the problem says')
  await ctx.workers.reconciler.reconcileOnce()
  t.ok(launcher.stopped.includes(`fake-${id}-g1`), 'and its recorded compute is asked to stop')
})
