import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { parseCapacityProviders } from '../src/services/launchers/capacity-providers.ts'
import { FargateLauncher } from '../src/services/launchers/fargate-launcher.ts'
import { buildTestApp, type TestApp } from './helpers/app.ts'
import { EcsFake } from './helpers/ecs-fake.ts'

// The Fargate launcher at scale (hundreds of sessions on stub agents), in a file of its
// own so that test/fargate-launcher.test.ts stays well inside the per-file timeout.
const root = await mkdtemp(join(tmpdir(), 'chroma-lease-fargate-scale-'))
t.teardown(() => rm(root, { recursive: true, force: true }))

async function setup(t: Test, opts: { settings: { assignPublicIp: boolean } }) {
  const fake = await EcsFake.start({ snapshotRoot: root, stubAgents: true })
  t.teardown(() => fake.close())
  const clock = new ManualClock()
  const launcher = new FargateLauncher({
    ...fake.clients(),
    settings: fake.launcherSettings({
      subnets: ['subnet-a', 'subnet-b'],
      capacityProviders: parseCapacityProviders('FARGATE_SPOT:3,FARGATE:1'),
      ...opts.settings,
    }),
    wait: async () => {},
    clock,
  })
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock, launcher, startTimeoutSeconds: 120, listen: true })
  return { fake, clock, launcher, ctx }
}

async function acquire(ctx: TestApp, snapshot: string) {
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, holder: 'fargate-test' } })
  if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
  return res.json()
}

t.test('AWS calls per pass with 300 READY sessions on public IPs: batched, never one per session', async (t) => {
  const { fake, launcher, ctx } = await setup(t, { settings: { assignPublicIp: true } })
  const ids: string[] = []
  for (let i = 0; i < 300; i++) {
    const dir = join(root, 'many', String(i))
    await mkdir(dir, { recursive: true })
    ids.push((await acquire(ctx, `file://${dir}`)).session.id)
  }
  const statuses = async () => [...new Set((await Promise.all(ids.map((id) => ctx.services.sessions.get(id)))).map((s) => s.status))]
  for (let pass = 0; pass < 10 && (await statuses()).join() !== 'READY'; pass++) await ctx.workers.reconciler.reconcileOnce()
  t.same(await statuses(), ['READY'], 'all 300 READY: launched, RUNNING, their public IPs found, Chroma answering')
  t.equal(fake.tasks.size, 300)

  fake.resetCounts()
  await ctx.workers.reconciler.reconcileOnce()
  t.same(Object.fromEntries(fake.calls), { DescribeTasks: 3, DescribeNetworkInterfaces: 2 }, 'a steady-state pass: DescribeTasks per 100 tasks, DescribeNetworkInterfaces per 200 ENIs, nothing per session')
  fake.resetCounts()
  t.same(await ctx.workers.sweeper.sweepOnce(), [], 'no orphans')
  t.same(Object.fromEntries(fake.calls), { ListTasks: 3, DescribeTasks: 3 }, 'an orphan sweep: 3 pages of ListTasks, 3 DescribeTasks')

  const sessions = await Promise.all(ids.map((id) => ctx.services.sessions.get(id)))
  // The SDK's three attempts at the batch holding the first task (batches go several at once).
  fake.throttleDescribesOf(sessions[0]!.launchRef!, 3)
  const seen = await launcher.describe(sessions.map((s) => ({ sessionId: s.id, generation: s.generation, ref: s.launchRef! })))
  t.equal(seen.size, 200, 'a batch that fails leaves out its 100 tasks, not the other 200')
  t.ok([...seen.values()].every((o) => o.state === 'running'))
})

