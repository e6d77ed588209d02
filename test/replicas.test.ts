import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { ManualClock } from '../src/services/clock.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { buildTestApp, reconcileUntilSettled, stopAll } from './helpers/app.ts'
import { freshDatabaseUrl } from './helpers/database.ts'
import { ScriptedLauncher } from './helpers/fake-session.ts'
import { buildSnapshotFixture, chromaAnswers } from './helpers/snapshot-fixture.ts'

// Several control planes on one database, and control planes that restart: the
// invariants hold because Postgres enforces them, not because a process remembers.

const root = await mkdtemp(join(tmpdir(), 'replicas-'))
const fixture = await buildSnapshotFixture(root, { count: 20, dim: 8 })
const snapshot = `file://${fixture.tarPath}`

t.test('two instances, 200 concurrent cold acquires: one session, one launch', async (t) => {
  const databaseUrl = await freshDatabaseUrl()
  const sessionsDir = await mkdtemp(join(tmpdir(), 'herd-sessions-'))
  const clock = new ManualClock()
  const one = await buildTestApp(t, { databaseUrl, sessionsDir, snapshotRoot: root, clock })
  const two = await buildTestApp(t, { databaseUrl, sessionsDir, snapshotRoot: root, clock })
  t.teardown(() => stopAll(one.launcher))

  const replies = await Promise.all(
    Array.from({ length: 200 }, (_, i) =>
      (i % 2 ? one : two).app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection, holder: `wf-${i}` } }),
    ),
  )
  t.same([...new Set(replies.map((r) => r.statusCode))], [201], 'every acquire succeeded')
  const sessionIds = new Set(replies.map((r) => r.json().session.id))
  t.equal(sessionIds.size, 1, 'all 200 leases share one session')
  t.equal(await one.db.session.count(), 1, 'one session row')
  const [id] = [...sessionIds] as [string]
  t.equal((await one.services.sessions.get(id)).leaseCount, 200, 'counted 200 times')

  // Both replicas reconcile at the same moments until the session is READY.
  for (let i = 0; i < 300; i++) {
    await Promise.all([one.workers.reconciler.reconcileOnce(), two.workers.reconciler.reconcileOnce()])
    if ((await one.services.sessions.get(id)).status === 'READY') break
    await new Promise((r) => setTimeout(r, 100))
  }
  t.equal((await two.services.sessions.get(id)).status, 'READY')
  t.equal((await one.launcher.listRunning()).length, 1, 'one session process')
  const launches = await one.db.sessionEvent.count({ where: { sessionId: id, type: 'launching' } })
  t.equal(launches, 1, 'one launch')

  // Invariant 2 is the database's: even a direct insert cannot make a second live session for the pool.
  const poolKey = (await one.db.session.findUniqueOrThrow({ where: { id } })).poolKey
  await t.rejects(
    one.db.$executeRaw`INSERT INTO sessions (id, mode, pool_key, snapshot, status, launcher, idle_ttl_seconds, created_by, created_at, updated_at)
      VALUES (gen_random_uuid(), 'shared', ${poolKey}, ${snapshot}, 'PENDING', 'process', 60, 'test', now(), now())`,
    'the partial unique index refuses a second live session per pool key',
  )
})

t.test('a restarted control plane adopts running sessions and stops orphans', async (t) => {
  const databaseUrl = await freshDatabaseUrl()
  const sessionsDir = await mkdtemp(join(tmpdir(), 'restart-sessions-'))
  const clock = new ManualClock()
  const launcher = new ProcessLauncher({ rootDir: sessionsDir, snapshotRoot: root })
  t.teardown(() => stopAll(launcher))

  // The first process: a READY session, an exclusive one that will be orphaned, and
  // a crash right after a PENDING row was written (nothing launched yet).
  let lease!: { id: string; token: string; session: { id: string } }
  let orphan!: { session: { id: string } }
  let pending!: { session: { id: string } }
  await t.test('first process', async (t) => {
    const first = await buildTestApp(t, { databaseUrl, sessionsDir, snapshotRoot: root, clock, keepSessions: true })
    const acquire = async (body: object) =>
      (await first.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection, ...body } })).json()
    lease = await acquire({})
    orphan = await acquire({ mode: 'exclusive' })
    t.equal((await reconcileUntilSettled(first, lease.session.id)).status, 'READY')
    t.equal((await reconcileUntilSettled(first, orphan.session.id)).status, 'READY')
    pending = await acquire({ mode: 'exclusive' })
  })
  t.equal((await launcher.listRunning()).length, 2, 'sessions outlive the control plane')

  // While no control plane ran, the orphan's row ended (e.g. an operator's SQL).
  const second = await buildTestApp(t, { databaseUrl, sessionsDir, snapshotRoot: root, clock, listen: true })
  await second.db.session.update({ where: { id: orphan.session.id }, data: { status: 'STOPPED' } })

  await second.workers.reconciler.reconcileOnce()
  const adopted = await second.services.sessions.get(lease.session.id)
  t.equal(adopted.status, 'READY', 'the READY session is adopted as it is')
  const res = await request(`${second.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': lease.token } })
  t.equal(res.statusCode, 200, "the old lease's token works through the new process")
  await res.body.dump()

  const swept = await second.workers.sweeper.sweepOnce()
  t.equal(swept.length, 1, 'the orphan is stopped within one sweep')
  const events = await second.db.sessionEvent.findMany({ where: { sessionId: orphan.session.id, type: 'orphan_stopped' } })
  t.equal(events.length, 1, 'and the stop is recorded')

  t.equal((await reconcileUntilSettled(second, pending.session.id)).status, 'READY', 'the session left PENDING by the crash is launched')
  for (let i = 0; i < 100 && (await launcher.listRunning()).length !== 2; i++) await new Promise((r) => setTimeout(r, 100))
  const running = (await launcher.listRunning()).map((r) => r.sessionId).sort()
  t.same(running, [lease.session.id, pending.session.id].sort(), 'exactly the live sessions run')
  t.ok(await chromaAnswers({ host: adopted.host!, port: adopted.port!, token: second.services.tokens.sessionToken(adopted.id, adopted.generation) }))
})

t.test('a crash between claiming a launch and recording it neither leaks nor launches twice', async (t) => {
  const clock = new ManualClock()
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock })
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, mode: 'exclusive' } })).json()
  const s = await ctx.services.sessions.get(lease.session.id)
  // What a replica that died after its claim and launch, before recording the ref, leaves behind:
  await ctx.services.sessions.transition(s, ['PENDING'], 'STARTING', { type: 'launching' }, { launchedAt: clock.now() })
  await ctx.launcher.launch({ sessionId: s.id, generation: s.generation, snapshot: s.snapshot, collection: null, authToken: ctx.services.tokens.sessionToken(s.id, s.generation), controlToken: ctx.services.tokens.controlToken(s.id, s.generation), leaseKey: ctx.services.tokens.leaseKey(s.id, s.generation) })
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(s.id)).launchRef, null, 'another replica waits before taking over the claim')
  clock.advance(16)
  const ready = await reconcileUntilSettled(ctx, s.id)
  t.equal(ready.status, 'READY')
  t.equal((await ctx.launcher.listRunning()).length, 1, 'the relaunch found the first launch: one process')
})

t.test("two replicas recording different launches of one claim: the first record stands, the other is a duplicate to sweep", async (t) => {
  const databaseUrl = await freshDatabaseUrl()
  const clock = new ManualClock()
  const one = await buildTestApp(t, { databaseUrl, snapshotRoot: root, clock, launcher: new ScriptedLauncher() })
  const two = await buildTestApp(t, { databaseUrl, snapshotRoot: root, clock, launcher: new ScriptedLauncher() })
  const res = await one.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection } })
  const id = res.json().session.id as string
  const claimed = await one.services.sessions.transition(await one.services.sessions.get(id), ['PENDING'], 'STARTING', { type: 'launching' })
  t.ok(claimed)
  const session = await one.services.sessions.get(id)
  t.ok(await one.services.sessions.recordLaunch(session, 'task-a'), 'the first replica records its task')
  t.notOk(await two.services.sessions.recordLaunch(session, 'task-b'), 'the second finds it recorded')
  t.equal((await two.services.sessions.get(id)).launchRef, 'task-a', 'and does not overwrite it')
})
