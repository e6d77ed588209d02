import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// Cost per workflow (GET /v1/costs): each session's cost split among its leases by the
// time each held it, summed per holder. A manual clock and a scripted launcher make
// every figure known exactly.

const OPERATOR = 'operator-key-0123456789'
const CLIENT_A = 'client-a-key-0123456789'
const CLIENT_B = 'client-b-key-0123456789'
const root = await mkdtemp(join(tmpdir(), 'costs-'))
for (const dir of ['receipts', 'local']) await mkdir(join(root, dir))
const snap = (name: string) => `file://${join(root, name)}`
// 1 vCPU + 2 GB on x86 at the default prices: $0.04048 + 2 x $0.004445 an hour.
const HOURLY = 0.04048 + 2 * 0.004445
const close = (actual: number, expected: number) => Math.abs(actual - expected) < 1e-6

t.test('a shared session\'s cost is split between its workflows by the time each held it', async (t) => {
  const clock = new ManualClock()
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.healthy = true
  const ctx = await buildTestApp(t, {
    snapshotRoot: root,
    clock,
    launcher,
    apiKeys: [{ role: 'operator', key: OPERATOR }, { role: 'client', key: CLIENT_A }, { role: 'client', key: CLIENT_B }],
  })
  const passes = async (n: number) => {
    for (let i = 0; i < n; i++) await ctx.workers.reconciler.reconcileOnce()
  }
  const acquire = async (key: string, body: Record<string, unknown>) => {
    const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', headers: { 'x-api-key': key }, payload: { ttlSeconds: 3600, ...body } })
    t.equal(res.statusCode, 201)
    return res.json()
  }
  const costs = async (key: string, query = '') => {
    const res = await ctx.app.inject({ url: `/v1/costs${query}`, headers: { 'x-api-key': key } })
    t.equal(res.statusCode, 200, res.body)
    return res.json().workflows as Array<{ holder: string | null; leases: number; sessions: number; costUsd: number; unpricedLeases: number }>
  }

  // t=0: workflow A starts the shared session, which runs at once.
  const a = await acquire(CLIENT_A, { snapshot: snap('receipts'), holder: 'wf-a' })
  launcher.states.set(a.session.id, chroma.running({ cpuUnits: 1024, memoryMiB: 2048, architecture: 'x86_64', capacityProvider: 'FARGATE' }))
  await passes(2)
  t.equal((await ctx.services.sessions.get(a.session.id)).status, 'READY')
  // t=600: workflow B joins it; t=1200: A releases (held 1200 s).
  clock.advance(600)
  const b = await acquire(CLIENT_B, { snapshot: snap('receipts'), holder: 'wf-b' })
  t.equal(b.session.id, a.session.id, 'one shared session')
  clock.advance(600)
  await ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${a.id}`, headers: { 'x-api-key': CLIENT_A } })
  // A's second lease, on a local process session that reports no size.
  const local = await acquire(CLIENT_A, { snapshot: snap('local'), holder: 'wf-a', mode: 'exclusive' })
  launcher.states.set(local.session.id, chroma.running())
  await passes(2)

  // t=1800, while the session runs: 1800 s so far, A held 1200 s and B 1200 s.
  clock.advance(600)
  let byHolder = new Map((await costs(OPERATOR)).map((w) => [w.holder, w]))
  t.ok(close(byHolder.get('wf-a')!.costUsd, (HOURLY * 1800) / 3600 / 2), 'so far: half each')
  t.ok(close(byHolder.get('wf-b')!.costUsd, (HOURLY * 1800) / 3600 / 2))

  // t=2400: the operator stops the session, which ends B's lease (held 1800 s).
  clock.advance(600)
  await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${a.session.id}?force=true`, headers: { 'x-api-key': OPERATOR } })
  launcher.states.set(a.session.id, { state: 'stopped', reason: 'stopped' })
  await passes(2)
  t.equal((await ctx.services.sessions.get(a.session.id)).status, 'STOPPED')
  clock.advance(3600) // an ended session costs no more

  const session = (HOURLY * 2400) / 3600
  byHolder = new Map((await costs(OPERATOR)).map((w) => [w.holder, w]))
  t.match(byHolder.get('wf-a'), { leases: 2, sessions: 2, unpricedLeases: 1 }, 'A: two leases, one on an unpriced local session')
  t.ok(close(byHolder.get('wf-a')!.costUsd, session * (1200 / 3000)), `A held 1200 of 3000 lease-seconds: ${byHolder.get('wf-a')!.costUsd}`)
  t.match(byHolder.get('wf-b'), { leases: 1, sessions: 1, unpricedLeases: 0 })
  t.ok(close(byHolder.get('wf-b')!.costUsd, session * (1800 / 3000)), `B held 1800: ${byHolder.get('wf-b')!.costUsd}`)
  t.ok(close(byHolder.get('wf-a')!.costUsd + byHolder.get('wf-b')!.costUsd, session), "the shares add up to the session's cost")

  const onlyB = await costs(OPERATOR, '?holder=wf-b')
  t.equal(onlyB.length, 1)
  t.ok(close(onlyB[0]!.costUsd, session * 0.6), 'a filter does not change a share')
  const mine = await costs(CLIENT_B)
  t.same(mine.map((w) => w.holder), ['wf-b'], 'a client sees its own leases only')
  t.same(await costs(OPERATOR, `?since=${encodeURIComponent(new Date(clock.now().getTime() + 1000).toISOString())}`), [], 'since excludes older leases')

  // The report agrees with the session resource, whose cost is computed apart (cost.ts).
  const view = (await ctx.app.inject({ url: `/v1/sessions/${a.session.id}`, headers: { 'x-api-key': OPERATOR } })).json()
  t.ok(close(byHolder.get('wf-a')!.costUsd + byHolder.get('wf-b')!.costUsd, view.compute.costUsd), `the session resource says $${view.compute.costUsd}`)
  // since is inclusive: B's lease was acquired at t=600.
  const bAt: string = b.createdAt
  t.same((await costs(OPERATOR, `?since=${encodeURIComponent(bAt)}`)).map((w) => w.holder).sort(), ['wf-a', 'wf-b'], "since B's acquire: B, and A's later lease")
  t.same((await costs(OPERATOR, `?since=${encodeURIComponent(new Date(Date.parse(bAt) + 1).toISOString())}`)).map((w) => w.holder), ['wf-a'], 'a millisecond later: only A\'s local lease')

  for (const [url, name] of [['/v1/costs?since=yesterday', 'since'], ['/v1/costs?limit=0', 'limit'], ['/v1/costs?limit=abc', 'limit'], ['/v1/costs?since=2016-12-31T23:59:60Z', 'since'], ['/v1/sessions?before=2016-12-31T23:59:60Z', 'before']]) {
    const res = await ctx.app.inject({ url: url!, headers: { 'x-api-key': OPERATOR } })
    t.equal(res.statusCode, 400, `bad input ${url}`)
    t.match(res.json(), { code: 'validation_failed', detail: new RegExp(name!) })
  }
  t.equal((await ctx.app.inject({ url: '/v1/costs' })).statusCode, 401, 'no key, no report')
})
