import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { FargateLauncher } from '../src/services/launchers/fargate-launcher.ts'
import { buildTestApp, type TestApp } from './helpers/app.ts'
import { EcsFake } from './helpers/ecs-fake.ts'
import { sample } from './helpers/fake-session.ts'

// Three replicas on one Postgres, each with its own Fargate launcher (the real SDK) against
// one ECS fake whose tasks are stub agents. Each replica's loops tick on their own timers;
// what ECS sees must not grow with the number of replicas: the reconciler's and the orphan
// sweep's passes describe every task, so one replica runs each pass for the fleet.

const SESSIONS = 250 // three DescribeTasks batches of at most 100
const INTERVAL = 2 // seconds: far longer than the gap between two ticks in this test

const root = await mkdtemp(join(tmpdir(), 'chroma-lease-passes-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const snapshot = join(root, 'stub.tar') // only checked to exist: stub agents restore nothing
await writeFile(snapshot, '')

async function fleet(t: Test) {
  const fake = await EcsFake.start({ stubAgents: true })
  t.teardown(() => fake.close())
  const replica = async (databaseUrl?: string): Promise<TestApp> => {
    const launcher = new FargateLauncher({
      ...fake.clients(),
      settings: fake.launcherSettings(),
    })
    return buildTestApp(t, { databaseUrl, snapshotRoot: root, launcher, reconcileIntervalSeconds: INTERVAL, sweepIntervalSeconds: INTERVAL })
  }
  const a = await replica()
  const b = await replica(a.databaseUrl)
  const c = await replica(a.databaseUrl)
  for (let i = 0; i < SESSIONS; i++) {
    const res = await a.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${snapshot}`, mode: 'exclusive', holder: `s${i}` } })
    if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
  }
  // Launch and bring them all to READY (unclaimed passes: reconcileOnce is the pass itself).
  const deadline = Date.now() + 60_000
  for (;;) {
    await a.workers.reconciler.reconcileOnce()
    const ready = await a.db.session.count({ where: { status: 'READY' } })
    if (ready === SESSIONS) break
    if (Date.now() > deadline) throw new Error(`${ready} of ${SESSIONS} sessions READY after 60 s`)
  }
  fake.resetCounts()
  return { fake, replicas: [a, b, c] }
}

t.test('a scheduled reconcile pass describes the fleet once, not once per replica', async (t) => {
  const { fake, replicas } = await fleet(t)
  const ran: boolean[] = []
  for (const r of replicas) ran.push(await r.workers.tick('reconciler'))
  t.same(ran, [true, false, false], 'the first replica to tick runs the pass; the others find it claimed and skip')
  t.equal(fake.count('DescribeTasks'), Math.ceil(SESSIONS / 100), 'DescribeTasks: one call per 100 sessions, for the three replicas together')
  t.equal(fake.count('RunTask') + fake.count('StopTask'), 0, 'nothing launched or stopped')
  const metrics = await replicas[1]!.app.inject({ method: 'GET', url: '/metrics' })
  t.equal(sample(metrics.body, 'chroma_lease_worker_passes_skipped_total', { worker: 'reconciler' }), 1, 'the skip is counted on the replica that skipped')

  // The replica that ran it goes quiet (crashed, partitioned): the next pass is another's once due.
  const deadline = Date.now() + 30_000
  let next = false
  while (!next && Date.now() < deadline) {
    next = await replicas[2]!.workers.tick('reconciler')
    if (!next) await new Promise((r) => setTimeout(r, 100))
  }
  t.ok(next, 'another replica runs the next pass one interval later')
  t.equal(fake.count('DescribeTasks'), 2 * Math.ceil(SESSIONS / 100), 'and describes the fleet once more')
})

t.test('an orphan sweep lists and describes the tasks once for the fleet', async (t) => {
  const { fake, replicas } = await fleet(t)
  const ran: boolean[] = []
  for (const r of replicas) ran.push(await r.workers.tick('orphan-sweeper'))
  t.same(ran, [true, false, false])
  t.equal(fake.count('ListTasks'), Math.ceil(SESSIONS / 100), 'ListTasks: one page of 100 per call')
  t.equal(fake.count('DescribeTasks'), Math.ceil(SESSIONS / 100), 'DescribeTasks with tags: one call per 100 tasks')
  t.equal(fake.count('StopTask'), 0, 'no orphan among them')
})

t.test('passes that are not fleet-wide run on every replica', async (t) => {
  const { replicas } = await fleet(t)
  const ran: boolean[] = []
  for (const r of replicas) ran.push(await r.workers.tick('reaper'))
  t.same(ran, [true, true, true], 'the reaper (database only) is not claimed')
})
