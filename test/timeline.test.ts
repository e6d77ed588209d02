import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// Every transition and decision is an event with its reason, served as the session's
// timeline and written as one structured log line each: the two must tell the same story.

const root = await mkdtemp(join(tmpdir(), 'timeline-'))
for (const dir of ['receipts', 'invoices', 'dies', 'lost']) await mkdir(join(root, dir))
const snap = (name: string) => `file://${join(root, name)}`

interface Line {
  msg: string
  sessionId: string
  eventId: string
  type: string
  status: string | null
  reason: string | null
  leaseId: string | null
  detail: unknown
  at: string
}

t.test('every event is in the timeline and in the log, once, with its reason', async (t) => {
  const lines: Line[] = []
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l))
      done()
    },
  })
  const clock = new ManualClock()
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  chroma.healthy = true
  t.teardown(() => chroma.close())
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock, launcher, idleTtlSeconds: 30, logger: pino({ level: 'info' }, sink) })
  const inject = ctx.app.inject.bind(ctx.app)
  const acquire = async (name: string, body: Record<string, unknown> = {}) =>
    (await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: snap(name), ...body } })).json()
  const passes = async (n: number) => {
    for (let i = 0; i < n; i++) await ctx.workers.reconciler.reconcileOnce()
  }

  // One session lives a whole life: two leases, one released, one expiring, an idle stop.
  const a = await acquire('receipts', { holder: 'wf-a', ttlSeconds: 60 })
  const b = await acquire('receipts', { holder: 'wf-b', ttlSeconds: 10 })
  launcher.states.set(a.session.id, chroma.running())
  await passes(2)
  await inject({ method: 'DELETE', url: `/v1/leases/${a.id}` })
  clock.advance(11)
  await ctx.workers.reaper.reapOnce() // b expired
  clock.advance(30)
  await ctx.workers.reaper.reapOnce() // idle
  await passes(2)
  // Another is drained by an operator, then force stopped with its lease on it.
  const c = await acquire('invoices')
  launcher.states.set(c.session.id, chroma.running())
  await passes(2)
  await inject({ method: 'DELETE', url: `/v1/sessions/${c.session.id}?reason=deploy%2042` })
  await inject({ method: 'DELETE', url: `/v1/sessions/${c.session.id}?force=true&reason=bad%20data` })
  // One fails to start, one loses its compute while serving.
  const d = await acquire('dies', { mode: 'exclusive' })
  await passes(1)
  launcher.states.set(d.session.id, { state: 'stopped', reason: 'collection "x" is not in the snapshot' })
  await passes(1)
  const e = await acquire('lost', { mode: 'exclusive' })
  launcher.states.set(e.session.id, chroma.running())
  await passes(2)
  launcher.states.set(e.session.id, { state: 'stopped', reason: 'task stopped: spot interruption' })
  await passes(1)

  const timeline = async (id: string) => (await inject(`/v1/sessions/${id}/events?limit=1000`)).json().events as Array<Record<string, unknown>>
  const types = async (id: string) => (await timeline(id)).map((ev) => (ev.reason ? `${ev.type}(${ev.reason})` : ev.type))
  t.same(await types(a.session.id), [
    'created', 'lease_attached', 'lease_attached', 'launching', 'launched', 'running', 'ready',
    'lease_released', 'lease_expired', 'stopping(idle)', 'stopped(idle)',
  ])
  t.same(await types(c.session.id), [
    'created', 'lease_attached', 'launching', 'launched', 'running', 'ready',
    'draining(deploy 42)', 'force_stop(bad data)', 'lease_ended(force_stop)', 'stopped(force_stop)',
  ])
  t.same(await types(d.session.id), ['created', 'lease_attached', 'launching', 'launched', 'failed(collection "x" is not in the snapshot)', 'lease_ended(failed)'])
  t.same(await types(e.session.id), [
    'created', 'lease_attached', 'launching', 'launched', 'running', 'ready',
    'failed(task stopped: spot interruption)', 'lease_ended(failed)',
  ])
  const failed = (await timeline(d.session.id)).find((ev) => ev.type === 'failed')!
  t.match(failed, { status: 'FAILED', detail: { cause: 'compute_stopped' } }, 'a failure carries its cause')
  t.match((await timeline(e.session.id)).find((ev) => ev.type === 'failed'), { detail: { cause: 'compute_lost' } })
  t.match((await timeline(a.session.id)).find((ev) => ev.type === 'running'), { status: 'STARTING', detail: { host: '127.0.0.1', phase: 'starting' } })

  // The log has each of those events exactly once, with the same fields.
  const logged = lines.filter((l) => l.msg === 'session event')
  for (const session of [a, c, d, e]) {
    const events = await timeline(session.session.id)
    const mine = logged.filter((l) => l.sessionId === session.session.id)
    t.equal(mine.length, events.length, `${session.session.id}: one log line per event`)
    for (const ev of events) {
      const line = mine.filter((l) => l.eventId === ev.id)
      t.equal(line.length, 1, `event ${ev.id} (${ev.type}) logged once`)
      t.same(
        { type: line[0]?.type, status: line[0]?.status, reason: line[0]?.reason, leaseId: line[0]?.leaseId, detail: line[0]?.detail, at: line[0]?.at },
        { type: ev.type, status: ev.status, reason: ev.reason, leaseId: ev.leaseId, detail: ev.detail, at: ev.at },
        `event ${ev.id} (${ev.type}) logged as recorded`,
      )
    }
  }
  t.notOk(lines.some((l) => JSON.stringify(l).includes(a.token)), 'lease tokens never reach the log')
})

t.test('the timeline pages with after and limit, and 404s for an unknown session', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot: root, launcher: new ScriptedLauncher() })
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: snap('receipts') } })).json()
  for (let i = 0; i < 3; i++) await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: snap('receipts') } })
  const page = async (q: string) => (await ctx.app.inject(`/v1/sessions/${lease.session.id}/events?${q}`)).json().events as Array<{ id: string; type: string }>
  const all = await page('limit=1000')
  t.equal(all.length, 5)
  const first = await page('limit=2')
  t.same(first.map((e) => e.type), ['created', 'lease_attached'])
  const rest = await page(`after=${first[1]!.id}&limit=1000`)
  t.same(rest.map((e) => e.id), all.slice(2).map((e) => e.id), 'after pages on')
  const missing = await ctx.app.inject('/v1/sessions/00000000-0000-4000-8000-000000000000/events')
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'session_not_found')
})
