import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DescribeTaskDefinitionCommand, DescribeTasksCommand, RunTaskCommand, StopTaskCommand, type RunTaskCommandInput } from '@aws-sdk/client-ecs'
import t from 'tap'
import { parseCapacityProviders } from '../src/services/launchers/capacity-providers.ts'
import { FargateLauncher, type FargateSettings } from '../src/services/launchers/fargate-launcher.ts'
import { buildTestApp, reconcileUntilSettled } from './helpers/app.ts'
import { EcsFake, REALISTIC_STATUS_MS, type EcsFakeOptions } from './helpers/ecs-fake.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// The ECS fake where the Fargate launcher relies on ECS's behaviour (issue 13): client
// tokens, capacity provider placement, the lastStatus progression and its timing profiles,
// DescribeTasks and EC2 limits, capacity failures both ways. Each is checked through the
// real SDK, and where the launcher depends on it, through the launcher.

const root = await mkdtemp(join(tmpdir(), 'ecs-fake-test-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(root, { collection: 'receipts', count: 10, dim: 8 })

async function start(opts: EcsFakeOptions = {}) {
  const fake = await EcsFake.start({ snapshotRoot: root, ...opts })
  t.teardown(() => fake.close())
  return fake
}

const settingsOf = (fake: EcsFake, over: Partial<FargateSettings> = {}): FargateSettings => fake.launcherSettings(over)

const runTask = (fake: EcsFake, input: Partial<RunTaskCommandInput> = {}) =>
  fake.clients().ecs.send(new RunTaskCommand({ cluster: fake.cluster, taskDefinition: 'chroma-session:3', count: 1, ...input }))
const describe = async (fake: EcsFake, arn: string) => (await fake.clients().ecs.send(new DescribeTasksCommand({ cluster: fake.cluster, tasks: [arn] }))).tasks![0]!

t.test('client tokens: per cluster, forgotten after 24 h; a reuse with other parameters names the task it started', async (t) => {
  const fake = await start()
  const first = (await runTask(fake, { clientToken: 'tok-1' })).tasks![0]!.taskArn!
  t.equal((await runTask(fake, { clientToken: 'tok-1' })).tasks![0]!.taskArn, first, 'the same request: the same task')
  const conflict = await runTask(fake, { clientToken: 'tok-1', taskDefinition: 'chroma-session:4' }).catch((err) => err)
  t.equal(conflict.name, 'ConflictException')
  t.same(conflict.resourceIds, [first], 'ConflictException carries the task the token started')
  const other = await EcsFake.start({ cluster: 'other' })
  t.teardown(() => other.close())
  t.not((await runTask(other, { clientToken: 'tok-1' })).tasks![0]!.taskArn, first, 'another cluster: another task (tokens are per cluster)')
  fake.advanceTime(24 * 3600_000 + 1)
  const later = (await runTask(fake, { clientToken: 'tok-1' })).tasks![0]!.taskArn
  t.not(later, first, 'after 24 hours the token is forgotten: a new task')
})

t.test('capacity provider strategy: base first, then weights', async (t) => {
  const fake = await start()
  const placed = async (strategy: string, n: number) => {
    const providers: string[] = []
    for (let i = 0; i < n; i++) providers.push((await runTask(fake, { capacityProviderStrategy: parseCapacityProviders(strategy) })).tasks![0]!.capacityProviderName!)
    return providers
  }
  t.same(await placed('FARGATE_SPOT:3,FARGATE:1:1', 4), ['FARGATE', 'FARGATE', 'FARGATE', 'FARGATE'], 'a base takes every single-task RunTask')
  const mix = await placed('FARGATE_SPOT:3,FARGATE:1', 8)
  t.same([mix.filter((p) => p === 'FARGATE_SPOT').length, mix.filter((p) => p === 'FARGATE').length], [6, 2], 'the recommended mix (README): weights alone, 3 in 4 on Spot')
})

t.test('DescribeTasks shows overrides, the container health as the task health, X86_64 by default; more than 100 tasks is a client error', async (t) => {
  const fake = await start({ stubAgents: true })
  const arn = (await runTask(fake, { overrides: { containerOverrides: [{ name: 'chroma-session', environment: [{ name: 'A', value: 'b' }] }] } })).tasks![0]!.taskArn!
  await describe(fake, arn)
  const task = await describe(fake, arn)
  t.same(task.overrides?.containerOverrides?.[0]?.environment, [{ name: 'A', value: 'b' }], 'overrides, as ECS returns them')
  t.equal(task.lastStatus, 'RUNNING')
  t.equal(task.healthStatus, task.containers![0]!.healthStatus, "the task's health is its container's")
  t.equal(task.healthStatus, 'HEALTHY')
  const td = await fake.clients().ecs.send(new DescribeTaskDefinitionCommand({ taskDefinition: 'chroma-session:3' }))
  t.equal(td.taskDefinition?.runtimePlatform?.cpuArchitecture, 'X86_64', 'X86_64, as deployed')
  const tooMany = await fake.clients().ecs.send(new DescribeTasksCommand({ cluster: fake.cluster, tasks: Array.from({ length: 101 }, () => arn) })).catch((err) => err)
  t.equal(tooMany.name, 'InvalidParameterException', 'not a 500')
  t.equal(tooMany.$metadata.httpStatusCode, 400)
})

t.test('lastStatus, realistic profile: PROVISIONING, PENDING, ACTIVATING, RUNNING; after StopTask RUNNING a while, then DEACTIVATING, STOPPING, DEPROVISIONING, STOPPED', async (t) => {
  const fake = await start({ timing: 'realistic', timeScale: 1 })
  const arn = (await runTask(fake)).tasks![0]!.taskArn!
  const seen: string[] = []
  const step = async (ms: number) => {
    fake.advanceTime(ms)
    const task = await describe(fake, arn)
    seen.push(`${task.lastStatus}/${task.desiredStatus}`)
  }
  await step(0)
  await step(REALISTIC_STATUS_MS.PROVISIONING)
  await step(REALISTIC_STATUS_MS.PENDING)
  await step(REALISTIC_STATUS_MS.ACTIVATING)
  await fake.clients().ecs.send(new StopTaskCommand({ cluster: fake.cluster, task: arn, reason: 'test' }))
  await step(0)
  await step(REALISTIC_STATUS_MS.STOP_REQUESTED)
  await step(REALISTIC_STATUS_MS.DEACTIVATING)
  await step(REALISTIC_STATUS_MS.STOPPING)
  await step(REALISTIC_STATUS_MS.DEPROVISIONING)
  t.same(seen, [
    'PROVISIONING/RUNNING', 'PENDING/RUNNING', 'ACTIVATING/RUNNING', 'RUNNING/RUNNING',
    'RUNNING/STOPPED', 'DEACTIVATING/STOPPED', 'STOPPING/STOPPED', 'DEPROVISIONING/STOPPED', 'STOPPED/STOPPED',
  ])

  const instant = await start({ timing: 'instant' })
  const quick = (await runTask(instant)).tasks![0]!.taskArn!
  t.equal((await describe(instant, quick)).lastStatus, 'RUNNING', 'instant: RUNNING at the first look')
})

t.test('stepwise (the default): a stopped task shows RUNNING with desiredStatus STOPPED at the next look', async (t) => {
  const fake = await start()
  const arn = (await runTask(fake)).tasks![0]!.taskArn!
  await describe(fake, arn)
  t.equal((await describe(fake, arn)).lastStatus, 'RUNNING')
  await fake.clients().ecs.send(new StopTaskCommand({ cluster: fake.cluster, task: arn, reason: 'test' }))
  const stopping = await describe(fake, arn)
  t.same([stopping.lastStatus, stopping.desiredStatus], ['RUNNING', 'STOPPED'])
  t.equal((await describe(fake, arn)).lastStatus, 'STOPPED')
})

t.test('capacity failures thrown by RunTask are retried like those in failures[]', async (t) => {
  const fake = await start()
  const waits: number[] = []
  const launcher = new FargateLauncher({ ...fake.clients(), settings: settingsOf(fake), wait: async (ms) => void waits.push(ms), random: () => 0.5 })
  const spec = { sessionId: randomUUID(), generation: 1, snapshot: `file://${fixture.tarPath}`, collection: null, authToken: 'cls_0123456789abcdef', controlToken: 'clc_0123456789abcdef', leaseKey: 'bGVhc2Uta2V5LTAxMjM0NTY3ODk' }
  fake.capacityFailures(3, 'thrown') // the SDK's three attempts
  const { ref } = await launcher.launch(spec)
  t.equal(waits.length, 1, 'one backoff, as after a failures[] reply')
  t.ok(fake.tasks.has(ref), 'then the task starts')
  fake.capacityFailures(1, 'failures')
  await launcher.launch({ ...spec, sessionId: randomUUID() })
  t.equal(waits.length, 2)
})

t.test('EC2 throttling (RequestLimitExceeded) beyond the SDK retries leaves the tasks unobserved this pass, not stopped', async (t) => {
  const fake = await start({ stubAgents: true })
  const launcher = new FargateLauncher({ ...fake.clients(), settings: settingsOf(fake, { assignPublicIp: true }), wait: async () => {} })
  const sessionId = randomUUID()
  const { ref } = await launcher.launch({ sessionId, generation: 1, snapshot: `file://${fixture.tarPath}`, collection: null, authToken: 'cls_0123456789abcdef', controlToken: 'clc_0123456789abcdef', leaseKey: 'bGVhc2Uta2V5LTAxMjM0NTY3ODk' })
  const target = { sessionId, generation: 1, ref }
  await launcher.describe([target]) // PROVISIONING: no address to look up yet
  fake.throttleEc2(3)
  const before = fake.count('DescribeNetworkInterfaces')
  t.equal((await launcher.describe([target])).size, 0, 'left out this pass')
  t.equal(fake.count('DescribeNetworkInterfaces') - before, 3, 'after the SDK retried RequestLimitExceeded')
  t.match((await launcher.describe([target])).get(ref), { state: 'running', host: fake.tasks.get(ref)!.ip }, 'and found the next')
})

t.test('a session on the realistic profile (scaled): READY, then stopped; its secret deleted; leftovers swept', async (t) => {
  const fake = await start({ stubAgents: true, timing: 'realistic', timeScale: 0.02 })
  const launcher = new FargateLauncher({ ...fake.clients(), settings: settingsOf(fake), wait: async () => {} })
  const ctx = await buildTestApp(t, { snapshotRoot: root, launcher })
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}` } })).json()
  const ready = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(ready.status, 'READY')
  const secretName = `chroma-lease/sessions/${ready.id}/g1`
  t.ok(fake.secrets.valueOf(secretName), 'its secret exists while it runs')

  // A leftover: a secret of a session that has no live launch (its launch failed before any task).
  const leftover = `chroma-lease/sessions/${randomUUID()}/g1`
  await fake.clients().secrets.write({ sessionId: leftover.split('/')[2]!, generation: 1, snapshot: 'file:///x', collection: null, authToken: 'cls_0123456789abcdef', controlToken: 'clc_0123456789abcdef', leaseKey: 'bGVhc2Uta2V5LTAxMjM0NTY3ODk' })
  await ctx.workers.sweeper.sweepOnce()
  t.equal(fake.secrets.valueOf(leftover), undefined, 'the orphan sweep deletes a leftover secret')
  t.ok(fake.secrets.valueOf(secretName), 'and leaves a live session\'s alone')

  await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${ready.id}?force=true` })
  const deadline = Date.now() + 30_000
  let s = await ctx.services.sessions.get(ready.id)
  while (s.status !== 'STOPPED' && Date.now() < deadline) {
    await ctx.workers.reconciler.reconcileOnce()
    s = await ctx.services.sessions.get(ready.id)
    await new Promise((r) => setTimeout(r, 100))
  }
  t.equal(s.status, 'STOPPED', 'STOPPED once ECS deprovisioned the task')
  t.equal(fake.tasks.get(s.launchRef!)!.lastStatus, 'STOPPED')
  t.equal(fake.secrets.valueOf(secretName), undefined, 'its secret deleted at stop')
})

t.test('stub agents speak the warm protocol: WARM=1 waits in phase warm, restores once assigned, then serves; a second snapshot is refused', async (t) => {
  const fake = await start({ stubAgents: true, stubRestoreMs: 300 })
  const launcher = new FargateLauncher({ ...fake.clients(), settings: settingsOf(fake), wait: async () => {} })
  const ctx = await buildTestApp(t, { snapshotRoot: root, launcher, warmPool: { min: 1, max: 1 } })
  t.equal((await ctx.services.warmPool.refill()).launched, 1)
  const [pending] = await ctx.services.warmPool.list(10)
  const warm = await reconcileUntilSettled(ctx, pending!.id)
  t.equal(warm.status, 'READY', 'READY as a warm agent: its stub answered phase warm')
  const task = fake.tasks.get(warm.launchRef!)!
  t.equal(task.env.WARM, '1', 'launched with WARM=1')
  const agentStatus = () => ctx.services.warmPool.isWaiting(warm, warm.host!, warm.port!)
  t.equal(await agentStatus(), true, 'phase warm until assigned')
  const heartbeat = await fetch(`http://${warm.host}:${warm.port}/api/v2/heartbeat`, { headers: { 'x-chroma-token': ctx.services.tokens.sessionToken(warm.id, warm.generation) } })
  t.equal(heartbeat.status, 503, 'no Chroma answers before an assignment')

  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}` } })).json()
  t.equal(lease.session.id, warm.id, 'the acquire claimed the warm agent')
  const ready = await reconcileUntilSettled(ctx, warm.id)
  t.equal(ready.status, 'READY', 'READY as a session once the stub finished its restore')
  t.equal(await agentStatus(), false, 'no longer waiting')
  const refused = await ctx.services.warmPool.assign({ ...ready, snapshot: 'file:///elsewhere.tar' }).catch((err: unknown) => err)
  t.match(refused, { status: 409, code: 'already_assigned' }, 'another snapshot is refused')
  await t.resolves(ctx.services.warmPool.assign(ready), 'the same assignment is answered again')
})
