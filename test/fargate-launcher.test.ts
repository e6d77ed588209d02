import { randomUUID } from 'node:crypto'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ChromaClient } from 'chromadb'
import t, { type Test } from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { parseCapacityProviders } from '../src/services/launchers/capacity-providers.ts'
import { FargateLauncher, runTaskRetryDelayMs, type FargateSettings } from '../src/services/launchers/fargate-launcher.ts'
import { LaunchDeferred } from '../src/services/launchers/launcher.ts'
import { buildTestApp, reconcileUntilSettled, type TestApp } from './helpers/app.ts'
import { EcsFake, type EcsFakeOptions } from './helpers/ecs-fake.ts'
import { SharedTokenBucket } from '../src/database/shared-token-bucket.ts'
import type { SessionRecord } from '../src/services/sessions.ts'
import type { RateLimiter } from '../src/services/launchers/token-bucket.ts'
import type { SqlPool } from '../src/database/client.ts'
import { startS3Fake, startStallingS3, type S3Fake } from './helpers/s3-fake.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// The Fargate launcher with the real AWS SDK against a protocol-level ECS fake. The
// first test runs the real session agent per task, so READY means a real Chroma answers.
// Many tests run real agents and wait out real-time switches: more than the suite's 180 s
// per file on a loaded 2-core machine.
t.setTimeout(360_000)
const root = await mkdtemp(join(tmpdir(), 'chroma-lease-fargate-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(root, { collection: 'receipts', count: 50, dim: 8 })

function settingsOf(fake: EcsFake): FargateSettings {
  return {
    cluster: fake.cluster,
    taskDefinition: 'chroma-session:3',
    containerName: 'chroma-session',
    subnets: ['subnet-a', 'subnet-b'],
    securityGroups: ['sg-sessions'],
    assignPublicIp: false,
    capacityProviders: parseCapacityProviders('FARGATE_SPOT:3,FARGATE:1:1'),
    chromaPort: fake.chromaPort,
    startedBy: 'chroma-lease-test',
    launchRate: 1000,
    launchBurst: 1000,
  }
}

async function setup(t: Test, opts: EcsFakeOptions & { settings?: Partial<FargateSettings>; startTimeoutSeconds?: number; s3?: S3Fake; limiter?: RateLimiter; deadManSeconds?: number; confirmIntervalSeconds?: number; ec2?: 'in-process' | 'one-shot' } = {}) {
  const fake = await EcsFake.start({ snapshotRoot: root, ...opts })
  t.teardown(() => fake.close())
  const clock = new ManualClock()
  // The waits between RunTask retries, recorded instead of slept (jitter fixed at its middle).
  const waits: number[] = []
  // Read by the launcher on every call: a test changes it to stand for a deploy.
  const settings = { ...settingsOf(fake), ...opts.settings }
  const launcher = new FargateLauncher({
    ...fake.clients(opts.ec2),
    settings,
    wait: async (ms) => {
      waits.push(ms)
    },
    random: () => 0.5,
    clock,
    ...(opts.limiter ? { limiter: opts.limiter } : {}),
  })
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock, launcher, startTimeoutSeconds: opts.startTimeoutSeconds ?? 120, listen: true, s3: opts.s3, deadManSeconds: opts.deadManSeconds, confirmIntervalSeconds: opts.confirmIntervalSeconds })
  return { fake, clock, launcher, ctx, waits, settings }
}

async function acquire(ctx: TestApp, snapshot = `file://${fixture.tarPath}`) {
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, holder: 'fargate-test' } })
  if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
  return res.json()
}

/** Runs reconciler passes in real time (an agent takes a moment to exit) until the session reaches `status`. */
async function untilStatus(ctx: TestApp, sessionId: string, status: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await ctx.workers.reconciler.reconcileOnce()
    const s = await ctx.services.sessions.get(sessionId)
    if (s.status === status || Date.now() > deadline) return s
    await new Promise((r) => setTimeout(r, 200))
  }
}

/** Runs reconciler passes (moving the clock a second each) until the session leaves PENDING/STARTING or `passes` run out. */
async function passes(ctx: TestApp, clock: ManualClock, sessionId: string, n: number) {
  for (let i = 0; i < n; i++) {
    await ctx.workers.reconciler.reconcileOnce()
    const s = await ctx.services.sessions.get(sessionId)
    if (s.status !== 'PENDING' && s.status !== 'STARTING') return s
    clock.advance(1)
  }
  return ctx.services.sessions.get(sessionId)
}

t.test('a session as a Fargate task: RunTask as configured, READY with a real Chroma, StopTask on stop', async (t) => {
  const { fake, ctx } = await setup(t, { runAgents: true })
  const lease = await acquire(ctx)
  const session = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(session.status, 'READY')
  t.equal(fake.tasks.size, 1, 'one task')
  const [task] = [...fake.tasks.values()]
  t.equal(session.launchRef, task!.arn, 'the session records the task ARN')
  t.equal(session.host, task!.ip, "the task's private IP from its ENI attachment")
  t.equal(session.port, fake.chromaPort)
  t.same(task!.tags.map((x) => [x.key, x.value]).sort(), [['chroma-lease:generation', '1'], ['chroma-lease:session', session.id]].sort(), 'tagged as ours')
  t.equal(task!.startedBy, 'chroma-lease-test')
  const secretName = `chroma-lease/sessions/${session.id}/g1`
  t.same(
    task!.env,
    { SESSION_ID: session.id, SESSION_GENERATION: '1', SNAPSHOT_URI: `file://${fixture.tarPath}`, SESSION_SECRET_ID: secretName, DEAD_MAN_SECONDS: '900' },
    "container overrides: the agent settings and its secret's name, no token",
  )
  // No secret in RunTask's input (what CloudTrail records) or in DescribeTasks (what anyone with ecs:DescribeTasks reads).
  const tokens = ctx.services.tokens
  const secrets = [tokens.sessionToken(session.id, 1), tokens.controlToken(session.id, 1), tokens.leaseKey(session.id, 1)]
  const { DescribeTasksCommand } = await import('@aws-sdk/client-ecs')
  const described = JSON.stringify(await fake.clients().ecs.send(new DescribeTasksCommand({ cluster: fake.cluster, tasks: [task!.arn], include: ['TAGS'] })))
  t.match(described, /SESSION_SECRET_ID/, 'DescribeTasks shows the overrides')
  for (const secret of secrets) {
    t.notOk(JSON.stringify(task!.runTaskInput).includes(secret), 'no secret in RunTask\'s input')
    t.notOk(described.includes(secret), 'no secret in DescribeTasks')
  }
  const stored = JSON.parse(fake.secrets.valueOf(secretName)!)
  t.same(stored, { sessionToken: secrets[0], controlToken: secrets[1], leaseKey: secrets[2] }, 'the tokens are in the session secret')
  const reads = fake.secrets.calls.filter((c) => c.action === 'GetSecretValue' && c.input.SecretId === secretName)
  t.ok(reads.length >= 1 && reads.at(-1)!.caller === `task ${task!.arn.split('/').pop()}`, 'read by the task, with its role')
  t.equal(fake.secrets.count('GetSecretValue') - reads.length, 0, 'and by nobody else')
  const input = task!.runTaskInput
  t.equal(input.cluster, fake.cluster)
  t.equal(input.taskDefinition, 'chroma-session:3')
  t.equal(input.count, 1)
  t.notOk('launchType' in input, 'no launchType: ECS refuses it together with a capacity provider strategy')
  t.same(input.capacityProviderStrategy, [
    { capacityProvider: 'FARGATE_SPOT', weight: 3 },
    { capacityProvider: 'FARGATE', weight: 1, base: 1 },
  ], 'the whole strategy, weights and base')
  t.same(input.networkConfiguration, { awsvpcConfiguration: { subnets: ['subnet-a', 'subnet-b'], securityGroups: ['sg-sessions'], assignPublicIp: 'DISABLED' } })
  t.same(input.overrides.containerOverrides.map((c: { name: string }) => c.name), ['chroma-session'], 'the overrides go to the configured container')
  t.equal(input.clientToken, `cl-${session.id}-g1-a0`, 'the token names the session, its generation and the attempt')
  t.match(input.clientToken, /^[\x21-\x7e]{1,64}$/, 'at most 64 printable ASCII characters')
  t.same(input.tags, [{ key: 'chroma-lease:session', value: session.id }, { key: 'chroma-lease:generation', value: '1' }])
  const direct = await fetch(`http://${task!.ip}:${fake.chromaPort}/api/v2/heartbeat`)
  t.equal(direct.status, 401, "the task's address alone does not open the session")

  // Through the control plane's proxy, with the official client, to the task's Chroma.
  const url = new URL(ctx.url)
  const chroma = new ChromaClient({ host: url.hostname, port: Number(url.port), ssl: false, headers: { 'x-chroma-token': lease.token } })
  const collection = await chroma.getCollection({ name: 'receipts', embeddingFunction: null as never })
  t.equal(await collection.count(), 50, 'the restored snapshot answers through the proxy')

  const stopped = await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${session.id}?force=true&reason=test` })
  t.equal(stopped.json().status, 'STOPPING')
  await ctx.workers.reconciler.reconcileOnce()
  t.equal(fake.count('StopTask'), 1, 'StopTask')
  t.equal(task!.stopCode, 'UserInitiated')
  t.match(task!.stoppedReason, /chroma-lease: force_stop|chroma-lease: test/)
  t.equal((await untilStatus(ctx, session.id, 'STOPPED')).status, 'STOPPED', 'STOPPED once ECS says the task stopped')
  t.equal(task!.lastStatus, 'STOPPED', 'and not before')
  t.equal(fake.secrets.valueOf(secretName), undefined, 'the session secret is deleted at stop')
})

t.test('an s3:// snapshot: checked with HeadObject before any task starts, restored by the task from S3', async (t) => {
  const s3 = await startS3Fake(join(root, 's3'))
  t.teardown(() => s3.close())
  await s3.putFile('receipts/2026-11.tar.gz', fixture.tarGzPath)
  const { fake, ctx } = await setup(t, { runAgents: true, s3, agentEnv: s3.env })

  const missing = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: 's3://snapshots/receipts/2025-01.tar.gz' } })
  t.equal(missing.statusCode, 422, 'a snapshot that is not there: 422 at once')
  t.equal(missing.json().code, 'snapshot_not_found')
  await ctx.workers.reconciler.reconcileOnce()
  t.equal(fake.count('RunTask'), 0, 'and no task was started for it')

  const lease = await acquire(ctx, 's3://snapshots/receipts/2026-11.tar.gz')
  const session = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(session.status, 'READY')
  t.equal([...fake.tasks.values()][0]!.env.SNAPSHOT_URI, 's3://snapshots/receipts/2026-11.tar.gz')
  const url = new URL(ctx.url)
  const chroma = new ChromaClient({ host: url.hostname, port: Number(url.port), ssl: false, headers: { 'x-chroma-token': lease.token } })
  const collection = await chroma.getCollection({ name: 'receipts', embeddingFunction: null as never })
  t.equal(await collection.count(), 50, 'the task restored the snapshot from S3 and serves it')
})

t.test("a STARTING session whose task is RUNNING shows its agent's restore progress on the lease and the session", async (t) => {
  const s3 = await startS3Fake(join(root, 's3-progress'))
  t.teardown(() => s3.close())
  await s3.putFile('receipts/slow.tar.gz', fixture.tarGzPath)
  // The task's S3 sends half of the archive and then nothing: the restore stays at about 50%.
  const stall = await startStallingS3(s3.endpoint, (method, path) => method === 'GET' && path.split('?')[0]!.endsWith('/receipts/slow.tar.gz'), 'half-response')
  t.teardown(() => stall.close())
  const { fake, ctx } = await setup(t, { runAgents: true, s3, agentEnv: { ...s3.env, S3_ENDPOINT: stall.endpoint } })
  const lease = await acquire(ctx, 's3://snapshots/receipts/slow.tar.gz')
  const view = async () => (await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json()
  const deadline = Date.now() + 30_000
  let seen = await view()
  while (!(seen.session.progress?.percent >= 40) && Date.now() < deadline) {
    await ctx.workers.reconciler.reconcileOnce()
    await ctx.workers.confirmer.confirmSessions() // on Fargate the agent's answer is the only source of progress
    await new Promise((r) => setTimeout(r, 100)) // the restore moves in real time
    seen = await view()
  }
  t.equal(fake.tasks.get((await ctx.services.sessions.get(lease.session.id)).launchRef!)!.lastStatus, 'RUNNING', 'ECS says RUNNING while the agent restores')
  t.equal(seen.session.status, 'STARTING')
  t.match(seen.session.progress, { phase: 'restoring', text: /^restoring \d+%$/, totalBytes: Number })
  t.ok(seen.session.progress.percent >= 40 && seen.session.progress.percent < 100, seen.session.progress.text)
  const session = (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${lease.session.id}` })).json()
  t.equal(session.progress.text, seen.session.progress.text, 'the session shows it too')
})

t.test('a Spot interruption drains the session at once, then it stops cleanly', async (t) => {
  const { fake, ctx } = await setup(t, { runAgents: true })
  const lease = await acquire(ctx)
  const session = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(session.status, 'READY')
  fake.interrupt(session.launchRef!)
  await ctx.workers.reconciler.reconcileOnce()
  const draining = await ctx.services.sessions.get(session.id)
  t.equal(draining.status, 'DRAINING', 'DRAINING on the notice, while the task still runs')
  t.equal(draining.stopReason, 'interrupted')
  const next = await acquire(ctx)
  t.not(next.session.id, session.id, 'a new lease does not attach to the interrupted session')
  const stopped = await untilStatus(ctx, session.id, 'STOPPED')
  t.equal(stopped.status, 'STOPPED', 'the agent exits on SIGTERM: stopped, not failed')
  t.equal(fake.count('StopTask'), 0, 'the control plane did not need to stop it')
})

t.test('with public IPs (ECS_ASSIGN_PUBLIC_IP) a Spot interruption drains the session too', async (t) => {
  const { fake, ctx } = await setup(t, { runAgents: true, settings: { assignPublicIp: true } })
  const lease = await acquire(ctx)
  const session = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(session.status, 'READY')
  const task = fake.tasks.get(session.launchRef!)!
  t.equal(task.runTaskInput.networkConfiguration.awsvpcConfiguration.assignPublicIp, 'ENABLED')
  t.equal(session.host, task.ip, 'the address from DescribeNetworkInterfaces')
  fake.interrupt(session.launchRef!)
  fake.resetCounts()
  await ctx.workers.reconciler.reconcileOnce()
  const draining = await ctx.services.sessions.get(session.id)
  t.equal(draining.status, 'DRAINING', "the stopping task's public address is looked up too, so the session drains at once")
  t.equal(fake.count('DescribeNetworkInterfaces'), 1)
  const stopped = await untilStatus(ctx, session.id, 'STOPPED')
  t.equal(stopped.status, 'STOPPED')
  t.equal(stopped.error, null)
})

t.test('a READY session whose task ECS stops for InfrastructureHealth drains, then FAILED with the stop code and reason', async (t) => {
  const { fake, ctx } = await setup(t, { runAgents: true })
  const lease = await acquire(ctx)
  const session = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(session.status, 'READY')
  fake.stopAs(session.launchRef!, 'InfrastructureHealth', 'Task stopped due to an infrastructure health issue')
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(session.id)).status, 'DRAINING', 'no new lease while it goes')
  const failed = await untilStatus(ctx, session.id, 'FAILED')
  t.equal(failed.status, 'FAILED', 'the agent exited 0 on SIGTERM, but the stop was not a clean one')
  t.match(failed.error, /session compute stopped unexpectedly: task stopped: InfrastructureHealth: Task stopped due to an infrastructure health issue/)
  t.match((await ctx.db.sessionEvent.findMany({ where: { sessionId: session.id, type: 'failed' } }))[0], { detail: { cause: 'compute_lost' } })
  const metrics = (await ctx.app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /^chroma_lease_sessions_reaped_total\{cause="compute_lost"\} 1$/m, 'counted as compute lost')
  t.match(metrics, /^chroma_lease_sessions_reaped_total\{cause="compute_exited"\} 0$/m, 'not as a clean exit')
  t.equal((await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json().session.error, failed.error, 'the lease shows why')
})

t.test("a stopped task is clean only for stop codes known to be: ours, Spot, or the agent's own exit 0", async (t) => {
  const { fake, launcher, ctx } = await setup(t)
  const cases: Array<[stopCode: string, exitCode: number | undefined, clean: boolean]> = [
    ['SpotInterruption', 137, true], // killed after its stopTimeout: interrupted, not failed
    ['TerminationNotice', 143, true],
    ['EssentialContainerExited', 0, true], // the dead man's switch, a save on release
    ['EssentialContainerExited', 1, false],
    ['UserInitiated', 0, true], // someone else's StopTask, and the agent exited cleanly
    ['UserInitiated', 137, false],
    ['ServiceSchedulerInitiated', 0, true],
    ['TaskFailedToStart', undefined, false],
    ['InfrastructureHealth', 0, false],
    ['CapacityRebalance2031', 0, false], // a stop code ECS has not invented yet
  ]
  const observe = async (ref: string) => (await launcher.describe([{ sessionId: 'x', generation: 1, ref }])).get(ref)!
  /** ECS shows a task it stops RUNNING (desiredStatus STOPPED) for a moment: looked at until it is gone. */
  const observeStopped = async (ref: string) => {
    let seen = await observe(ref)
    for (let looks = 1; seen.state !== 'stopped' && looks < 5; looks++) seen = await observe(ref)
    return seen
  }
  for (const [stopCode, exitCode, clean] of cases) {
    const { ref } = await launcher.launch({ ...ctx.workers.reconciler.launchSpec({ id: randomUUID(), generation: 1, snapshot: `file://${fixture.dir}`, collection: null, saveOnRelease: false } as SessionRecord) })
    await observe(ref)
    t.match(await observe(ref), { state: 'running' })
    fake.stopAs(ref, stopCode, `stopped for ${stopCode}`, exitCode)
    const seen = await observeStopped(ref)
    t.match(seen, { state: 'stopped', reason: new RegExp(`^task stopped: ${stopCode}: stopped for ${stopCode}`) })
    t.equal(seen.state === 'stopped' && seen.clean === true, clean, `${stopCode}, exit code ${exitCode}: ${clean ? 'clean' : 'a failure'}`)
  }
  const { ref } = await launcher.launch({ ...ctx.workers.reconciler.launchSpec({ id: randomUUID(), generation: 1, snapshot: `file://${fixture.dir}`, collection: null, saveOnRelease: false } as SessionRecord) })
  await launcher.stop({ sessionId: 'x', generation: 1, ref }, 'idle')
  t.match(await observeStopped(ref), { state: 'stopped', clean: true, reason: /UserInitiated: chroma-lease: idle/ }, 'our own StopTask is clean whatever the exit')
})

t.test('a Spot interruption of a saveOnRelease session: the task saves first, the version is on the session', async (t) => {
  const s3 = await startS3Fake(join(root, 's3-save'))
  t.teardown(() => s3.close())
  await s3.putFile('notes/v1.tar.gz', fixture.tarGzPath)
  const { fake, ctx } = await setup(t, { runAgents: true, s3, agentEnv: s3.env })
  const exclusive = async (snapshot: string) => {
    const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: 'receipts', mode: 'exclusive', saveOnRelease: true } })
    t.equal(res.statusCode, 201, res.body)
    return res.json()
  }
  const url = new URL(ctx.url)
  const receipts = (token: string) =>
    new ChromaClient({ host: url.hostname, port: Number(url.port), ssl: false, headers: { 'x-chroma-token': token } }).getCollection({ name: 'receipts', embeddingFunction: null as never })

  const lease = await exclusive('s3://snapshots/notes/v1.tar.gz')
  const session = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(session.status, 'READY')
  await (await receipts(lease.token)).add({ ids: ['w-1'], embeddings: [Array(8).fill(0.5)], documents: ['written before the interruption'] })

  fake.interrupt(session.launchRef!)
  const stopped = await untilStatus(ctx, session.id, 'STOPPED')
  t.equal(stopped.status, 'STOPPED', 'the agent saved, then exited 0')
  t.match(stopped.savedSnapshot, /^s3:\/\/snapshots\/notes\/v1\/versions\/.+\.tar\.gz$/, "found through the series' latest, which this session wrote")
  t.match((await ctx.db.sessionEvent.findMany({ where: { sessionId: session.id, type: 'saved' } }))[0], { reason: 'stop' })

  const next = await exclusive('s3://snapshots/notes/v1')
  t.equal(next.session.snapshot, stopped.savedSnapshot, 'the series now launches that version')
  t.equal((await reconcileUntilSettled(ctx, next.session.id)).status, 'READY')
  t.same((await (await receipts(next.token)).get({ ids: ['w-1'] })).documents, ['written before the interruption'], 'with the write in it')
})

t.test('RunTask capacity failures are retried with fresh tokens after backing off, then FAILED with the reason', async (t) => {
  const { fake, clock, ctx, waits } = await setup(t)
  fake.capacityFailures(2)
  const a = await acquire(ctx)
  await ctx.workers.reconciler.reconcileOnce()
  const launched = await ctx.services.sessions.get(a.session.id)
  t.equal(fake.count('RunTask'), 3, 'two failures, then a task')
  t.same(waits, [1500, 3000], 'a wait before each retry: 2 s then 4 s, at three quarters with the jitter in the middle')
  t.same([...fake.tasks.values()].map((x) => x.runTaskInput.clientToken), [`cl-${a.session.id}-g1-a2`], 'the third attempt\'s token started it')
  t.equal(fake.tasks.size, 1)
  t.equal(launched.launchRef, [...fake.tasks.keys()][0])

  await mkdir(join(root, 'other'), { recursive: true })
  fake.capacityFailures(100)
  const b = await acquire(ctx, `file://${fixture.dir}`)
  const failed = await passes(ctx, clock, b.session.id, 3)
  t.equal(failed.status, 'FAILED')
  t.match(failed.error, /launch failed: ECS could not start the task after 4 attempts: Capacity is unavailable at this time/)
  t.equal(fake.tasks.size, 1, 'no task was started for it')
  t.same(waits.slice(2), [1500, 3000, 6000], 'three retries, each waiting twice as long')
})

t.test('the RunTask retry schedule: exponential, jittered between half and all of it, capped at 30 s', async (t) => {
  t.same([1, 2, 3, 4].map((n) => runTaskRetryDelayMs(n, 0)), [1000, 2000, 4000, 8000], 'the least jitter: half')
  t.same([1, 2, 3, 4].map((n) => runTaskRetryDelayMs(n, 0.999999)), [2000, 4000, 8000, 16000], 'the most: all of it')
  t.equal(runTaskRetryDelayMs(5, 0.999999), 30000, 'capped')
  t.equal(runTaskRetryDelayMs(9, 0), 15000)
})

t.test('throttling is absorbed: the SDK retries, then the launch waits for a later pass', async (t) => {
  const { fake, clock, ctx } = await setup(t)
  const lease = await acquire(ctx)
  fake.throttle(5) // more than the SDK's 3 attempts
  await ctx.workers.reconciler.reconcileOnce()
  let s = await ctx.services.sessions.get(lease.session.id)
  t.equal(s.status, 'STARTING', 'not failed')
  t.equal(s.launchRef, null, 'not launched yet')
  clock.advance(20) // past the orphaned-claim wait: the next pass launches again
  s = await passes(ctx, clock, lease.session.id, 3)
  t.equal(fake.tasks.size, 1, 'one task in the end')
  t.equal((await ctx.services.sessions.get(lease.session.id)).launchRef, [...fake.tasks.keys()][0])
  t.not(s.status, 'FAILED')
})

t.test("DescribeTasks throttled beyond the SDK's retries: no session fails, launches and the dead man's switch confirmations go on", async (t) => {
  // A switch of 8 s confirmed every second: passes slowed by throttled, retried calls on a
  // loaded machine still confirm well within it.
  const { fake, ctx, clock } = await setup(t, { runAgents: true, deadManSeconds: 8, confirmIntervalSeconds: 1 })
  const serving = await acquire(ctx)
  t.equal((await reconcileUntilSettled(ctx, serving.session.id)).status, 'READY')
  const servingTask = fake.tasks.get((await ctx.services.sessions.get(serving.session.id)).launchRef!)!

  fake.throttle(Infinity, 'DescribeTasks')
  // Longer than the dead man's switch: without confirmations the serving session's agent would stop it.
  const until = Date.now() + 10_000
  let passes = 0
  for (let last = Date.now(); Date.now() < until; passes++) {
    await ctx.workers.reconciler.reconcileOnce() // resolves: a failed describe does not abort the pass
    await ctx.workers.confirmer.confirmSessions() // from the session rows: needs no DescribeTasks
    await new Promise((r) => setTimeout(r, 200))
    // The confirmer's interval runs on the test's clock, the agent's switch in real time: keep them together.
    clock.advance((Date.now() - last) / 1000)
    last = Date.now()
  }
  t.ok(fake.count('DescribeTasks') >= 3 * passes, `every DescribeTasks was throttled, ${passes} passes`)
  t.equal(servingTask.lastStatus, 'RUNNING', "the serving session's agent was confirmed all along, at its recorded endpoint")
  t.equal(servingTask.agent?.exitCode, null)
  t.equal((await ctx.services.sessions.get(serving.session.id)).status, 'READY', 'not failed, not stopped')

  const cold = await acquire(ctx, `file://${fixture.dir}`)
  await ctx.workers.reconciler.reconcileOnce()
  const launched = await ctx.services.sessions.get(cold.session.id)
  t.equal(launched.status, 'STARTING')
  t.equal(launched.launchRef, [...fake.tasks.keys()][1], 'a launch goes ahead while DescribeTasks is throttled')

  fake.throttle(0, 'DescribeTasks')
  // The confirmer goes on meanwhile (as its worker loop does): the serving agent's 5 s switch runs in real time.
  const deadline = Date.now() + 60_000
  let settled = await ctx.services.sessions.get(cold.session.id)
  for (let last = Date.now(); (settled.status === 'PENDING' || settled.status === 'STARTING') && Date.now() < deadline; ) {
    await ctx.workers.reconciler.reconcileOnce()
    await ctx.workers.confirmer.confirmSessions()
    await new Promise((r) => setTimeout(r, 150))
    clock.advance((Date.now() - last) / 1000)
    last = Date.now()
    settled = await ctx.services.sessions.get(cold.session.id)
  }
  t.equal(settled.status, 'READY', `once ECS answers again, it is READY (${settled.error})`)
  t.equal((await ctx.services.sessions.get(serving.session.id)).status, 'READY')
})

t.test('a herd of cold acquires for many snapshots queues its launches under the rate limit', async (t) => {
  // 7/s with a burst of 2 against ECS's 10/s and 5: three tokens of margin for calls that a
  // loaded machine delays and then delivers together.
  const { fake, ctx } = await setup(t, { runTaskRate: 10, runTaskBurst: 5, settings: { launchRate: 7, launchBurst: 2 } })
  const snapshots = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => {
      await mkdir(join(root, 'herd', String(i)), { recursive: true })
      return `file://${join(root, 'herd', String(i))}`
    }),
  )
  const leases = await Promise.all(snapshots.map((s) => acquire(ctx, s)))
  await ctx.workers.reconciler.reconcileOnce()
  const sessions = await Promise.all(leases.map((l) => ctx.services.sessions.get(l.session.id)))
  t.equal(fake.tasks.size, 20, 'every session got its task')
  t.equal(fake.count('RunTask'), 20, 'no RunTask call was throttled or repeated')
  t.ok(sessions.every((s) => s.launchRef !== null && s.status === 'STARTING'))
})

t.test('two replicas share one launch rate: their herd together stays under ECS\'s limit', async (t) => {
  // The fake throttles beyond 10 RunTask/s (burst 5). Each replica alone would space its own
  // calls at 7/s; two of them at once, each with a bucket of its own, would send 14/s, and
  // 40 launches would take under 3 s, 6 more than ECS allows in that time. Shared, 7/s with a
  // burst of 2 leaves three tokens of margin for calls delayed and then delivered together.
  const { fake, ctx } = await setup(t, { runTaskRate: 10, runTaskBurst: 5 })
  const bucket = `ecs-run-task-${randomUUID()}` // one name: the row both replicas draw from
  const replica = () =>
    new FargateLauncher({
      ...fake.clients(),
      settings: { ...settingsOf(fake), launchRate: 7, launchBurst: 2 },
      limiter: new SharedTokenBucket(ctx.sql, bucket, 7, 2),
    })
  const [a, b] = [replica(), replica()]
  const launches = Array.from({ length: 40 }, (_, i) => ({
    ...ctx.workers.reconciler.launchSpec({ id: randomUUID(), generation: 1, snapshot: `file://${fixture.dir}`, collection: null, saveOnRelease: false } as SessionRecord),
    sessionId: randomUUID(),
    generation: i,
  }))
  const started = Date.now()
  const refs = await Promise.all(launches.map((spec, i) => (i % 2 ? a : b).launch(spec)))
  t.equal(new Set(refs.map((r) => r.ref)).size, 40, 'every launch started its task')
  t.equal(fake.count('RunTask'), 40, 'no RunTask call was throttled or repeated')
  t.ok(Date.now() - started >= ((40 - 2) / 7) * 1000 * 0.9, 'spaced at the shared rate, not twice it')
})

t.test('the shared launch-rate bucket unreachable (its database down): launches wait, then go once it is back', async (t) => {
  // The bucket's statements go through a pool that refuses while `down`, as an unreachable Postgres does.
  const database: { down: boolean; sql?: SqlPool } = { down: true }
  const reach = <T>(run: (sql: SqlPool) => Promise<T>) => (database.down ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432')) : run(database.sql!))
  const flaky = { execute: (q: never) => reach((sql) => sql.execute(q)), rows: (q: never) => reach((sql) => sql.rows(q)) } as unknown as SqlPool
  const { fake, clock, ctx } = await setup(t, { limiter: new SharedTokenBucket(flaky, `ecs-run-task-${randomUUID()}`, 100, 100) })
  database.sql = ctx.sql
  const lease = await acquire(ctx)
  await ctx.workers.reconciler.reconcileOnce()
  let s = await ctx.services.sessions.get(lease.session.id)
  t.equal(s.status, 'STARTING', 'not failed')
  t.equal(s.launchRef, null)
  t.equal(fake.count('RunTask'), 0, 'no RunTask without a token')

  database.down = false
  clock.advance(16) // past the orphaned-claim wait: the next pass launches again
  await ctx.workers.reconciler.reconcileOnce()
  s = await ctx.services.sessions.get(lease.session.id)
  t.equal(fake.count('RunTask'), 1, 'the bucket creates its row now that it can')
  t.equal(s.launchRef, [...fake.tasks.keys()][0], 'and the launch goes')
})

t.test('a slow stop costs one StopTask, not one per pass; a StopTask that did not get through is sent again', async (t) => {
  const { fake, clock, ctx } = await setup(t, { stopDescribes: 8 })
  const running = async () => {
    const dir = join(root, 'slow-stop', randomUUID())
    await mkdir(dir, { recursive: true })
    const lease = await acquire(ctx, `file://${dir}`)
    for (let i = 0; i < 3; i++) await ctx.workers.reconciler.reconcileOnce() // launched, PROVISIONING, RUNNING
    const s = await ctx.services.sessions.get(lease.session.id)
    t.equal(fake.tasks.get(s.launchRef!)!.lastStatus, 'RUNNING')
    return s
  }
  const stopCalls = async (id: string) => {
    fake.resetCounts()
    await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}?force=true` })
    let passes = 0
    for (; (await ctx.services.sessions.get(id)).status !== 'STOPPED' && passes < 20; passes++) {
      await ctx.workers.reconciler.reconcileOnce()
      clock.advance(1)
    }
    return { passes, stopTasks: fake.count('StopTask') }
  }

  const a = await running()
  const slow = await stopCalls(a.id)
  t.ok(slow.passes >= 8, `ECS took ${slow.passes} passes to stop it`)
  t.equal(slow.stopTasks, 1, 'StopTask once: every later pass saw desiredStatus STOPPED')

  const b = await running()
  fake.throttle(3, 'StopTask') // the SDK's three attempts: the first pass's StopTask never lands
  const lost = await stopCalls(b.id)
  t.equal((await ctx.services.sessions.get(b.id)).status, 'STOPPED')
  t.equal(lost.stopTasks, 3 + 1, 'ECS still showed it RUNNING on the next pass, so it was asked again, once')
})

t.test('a task that stops during start fails the session with stopCode and reason', async (t) => {
  const { fake, clock, ctx } = await setup(t)
  fake.nextTasks('stopDuringStart')
  const lease = await acquire(ctx)
  const s = await passes(ctx, clock, lease.session.id, 5)
  t.equal(s.status, 'FAILED')
  t.match(s.error, /TaskFailedToStart: CannotPullContainerError/)
})

t.test('a task that never gets an address fails at the start deadline; an UNHEALTHY one is stopped', async (t) => {
  const { fake, clock, ctx } = await setup(t, { startTimeoutSeconds: 30 })
  fake.nextTasks('noAddress', 'unhealthy')
  const a = await acquire(ctx)
  const s = await passes(ctx, clock, a.session.id, 40)
  t.equal(s.status, 'FAILED')
  t.match(s.error, /not ready within 30s: RUNNING, waiting for the task to get an address/)

  await mkdir(join(root, 'sick'), { recursive: true })
  const b = await acquire(ctx, `file://${join(root, 'sick')}`)
  const sick = await passes(ctx, clock, b.session.id, 5)
  t.equal(sick.status, 'FAILED')
  t.match(sick.error, /UNHEALTHY/)
  const task = fake.tasks.get(sick.launchRef!)!
  t.equal(task.desiredStatus, 'STOPPED', 'the control plane stopped the unhealthy task itself')
})

t.test('a crash between RunTask and recording it starts no second task and leaks nothing', async (t) => {
  const { fake, clock, launcher, ctx } = await setup(t)
  const lease = await acquire(ctx)
  const s = await ctx.services.sessions.get(lease.session.id)
  // The claim is recorded, RunTask runs, and the process dies before writing the ARN.
  t.ok(await ctx.services.sessions.transition(s, ['PENDING'], 'STARTING', { type: 'launching' }, { launchedAt: clock.now() }))
  await launcher.launch(ctx.workers.reconciler.launchSpec(s))
  t.equal(fake.tasks.size, 1)
  t.same(await ctx.workers.sweeper.sweepOnce(), [], 'an orphan sweep before the launch is recorded leaves its task alone')

  clock.advance(20) // the next process finds the unrecorded claim and launches again
  await ctx.workers.reconciler.reconcileOnce()
  t.equal(fake.tasks.size, 1, 'the task of the unrecorded launch is found by its tags: no second task')
  t.equal((await ctx.services.sessions.get(s.id)).launchRef, [...fake.tasks.keys()][0], 'and the session adopts it')

  // A task whose session row never existed (a crash before the row, or someone else's): stopped.
  const stray = await launcher.launch({ ...ctx.workers.reconciler.launchSpec(s), sessionId: '11111111-1111-4111-8111-111111111111', generation: 1 })
  t.same(await ctx.workers.sweeper.sweepOnce(), [stray.ref], 'the orphan sweep stops only the stray task')
  t.equal(fake.tasks.get(stray.ref)!.desiredStatus, 'STOPPED')
})

t.test('a RunTask whose reply is lost: the next pass finds the task it started by its tags and adopts it, no second one', async (t) => {
  const { fake, clock, ctx } = await setup(t)
  const lease = await acquire(ctx)
  fake.loseRunTaskReplies(3) // the SDK's three attempts all go unanswered; the first started a task
  await ctx.workers.reconciler.reconcileOnce()
  const deferred = await ctx.services.sessions.get(lease.session.id)
  t.equal(deferred.status, 'STARTING', 'not failed: the task may have started')
  t.equal(deferred.launchRef, null)
  t.equal(fake.tasks.size, 1, 'ECS did start one')
  clock.advance(16)
  await ctx.workers.reconciler.reconcileOnce()
  t.equal(fake.tasks.size, 1, 'the task of the unrecorded launch is found by its tags: no second task')
  t.equal((await ctx.services.sessions.get(lease.session.id)).launchRef, [...fake.tasks.keys()][0], 'and the session adopts the first')
})

t.test('a replayed launch after a deploy changed its configuration (ConflictException): adopts the task ECS names, else starts one under a new token', async (t) => {
  const { fake, launcher, ctx } = await setup(t)
  const deployed = new FargateLauncher({ ...fake.clients(), settings: { ...settingsOf(fake), taskDefinition: 'chroma-session:4' }, wait: async () => {} })
  const spec = (id: string) => ctx.workers.reconciler.launchSpec({ id, generation: 1, snapshot: `file://${fixture.dir}`, collection: null, saveOnRelease: false } as SessionRecord)

  // The launch's answer is lost (the task started), then a deploy, then the replay.
  const first = spec(randomUUID())
  fake.loseRunTaskReplies(3)
  await t.rejects(launcher.launch(first), LaunchDeferred)
  t.equal(fake.tasks.size, 1)
  const [started] = [...fake.tasks.keys()]
  fake.resetCounts()
  t.same(await deployed.launch(first), { ref: started }, 'the replay adopts the task the lost call started')
  t.equal(fake.tasks.size, 1, 'no second task')
  t.same(Object.fromEntries(fake.calls), { RunTask: 1 }, "one RunTask: its ConflictException names the task (resourceIds), adopted without looking tasks up")

  // The token's first use started no task (capacity): the replay starts one with the new configuration.
  const second = spec(randomUUID())
  fake.capacityFailures(4)
  await t.rejects(launcher.launch(second), /could not start the task after 4 attempts/)
  t.equal(fake.tasks.size, 1, 'no task for it yet')
  const { ref } = await deployed.launch(second)
  t.not(ref, started)
  const task = fake.tasks.get(ref)!
  t.equal(task.runTaskInput.taskDefinition, 'chroma-session:4', 'started with the configuration deployed now')
  t.match(task.runTaskInput.clientToken, new RegExp(`^cl-${second.sessionId}-g1-a0-[0-9a-f]{8}$`), "under the token of that configuration")
  t.ok(task.runTaskInput.clientToken.length <= 64)
  t.same(await deployed.launch(second), { ref }, 'a further replay (a crash before recording it) finds the same task')
  t.equal(fake.tasks.size, 2, 'two sessions, one task each')
})

t.test('a RunTask whose reply was lost: while ListTasks is throttled the launch waits, then the started task is adopted, never a second one', async (t) => {
  const { fake, clock, ctx } = await setup(t, { stubAgents: true })
  const lease = await acquire(ctx)
  fake.loseRunTaskReplies(3) // the task starts, the answer is lost: deferred
  await ctx.workers.reconciler.reconcileOnce()
  t.equal(fake.tasks.size, 1)
  const [started] = [...fake.tasks.keys()]
  // Its generation's launch is 15 s old and unrecorded: the next pass looks for its task
  // by tags before it relaunches, and a throttled lookup defers instead of guessing.
  fake.throttle(3, 'ListTasks')
  clock.advance(16)
  await ctx.workers.reconciler.reconcileOnce()
  const waiting = await ctx.services.sessions.get(lease.session.id)
  t.equal(waiting.status, 'STARTING')
  t.equal(waiting.launchRef, null, 'not recorded while the lookup cannot answer')
  t.equal(fake.tasks.size, 1, 'and no second task')
  clock.advance(16)
  await ctx.workers.reconciler.reconcileOnce()
  const adopted = await ctx.services.sessions.get(lease.session.id)
  t.equal(adopted.launchRef, started, 'once ECS answers, the task the lost call started is adopted')
  t.equal(adopted.generation, 1, 'in its own generation')
  t.equal(fake.tasks.size, 1, 'still one task')
  t.equal((await passes(ctx, clock, lease.session.id, 8)).status, 'READY')
})

t.test('when ListTasks does not show the first task yet, the relaunch starts the next generation: the orphan sweep stops the superseded task', async (t) => {
  const { fake, clock, ctx } = await setup(t, { stubAgents: true })
  const lease = await acquire(ctx)
  fake.loseRunTaskReplies(3) // the task starts, the answer is lost: deferred
  await ctx.workers.reconciler.reconcileOnce()
  const [first] = [...fake.tasks.keys()]
  t.same(await ctx.workers.sweeper.sweepOnce(), [], 'the launch is not recorded yet: its task is left to be adopted')

  fake.notListedFor(first!, 1) // ListTasks does not show the first task yet: nothing to adopt
  clock.advance(16)
  await ctx.workers.reconciler.reconcileOnce()
  const s = await ctx.services.sessions.get(lease.session.id)
  t.equal(fake.tasks.size, 2, 'a second task, of the next generation')
  const second = [...fake.tasks.keys()].find((arn) => arn !== first)!
  t.equal(s.launchRef, second, 'the session records the second')
  t.equal(s.generation, 2)
  t.equal(fake.tasks.get(second)!.runTaskInput.clientToken, `cl-${s.id}-g2-a0`, 'its own clientToken: session id and generation')
  t.same(fake.tasks.get(first!)!.tags.find((x) => x.key === 'chroma-lease:generation')?.value, '1')
  t.same(fake.tasks.get(second)!.tags.find((x) => x.key === 'chroma-lease:generation')?.value, '2', 'each task tagged with its generation')

  t.same(await ctx.workers.sweeper.sweepOnce(), [first], 'one sweep stops the superseded task')
  t.equal(fake.tasks.get(first!)!.desiredStatus, 'STOPPED')
  t.notOk(fake.secrets.valueOf(`chroma-lease/sessions/${s.id}/g1`), "the superseded generation's secret goes with its task")
  t.ok(fake.secrets.valueOf(`chroma-lease/sessions/${s.id}/g2`), "the recorded generation's secret stays")
  t.equal(fake.tasks.get(second)!.desiredStatus, 'RUNNING', 'and leaves the recorded task alone')
  const metrics = (await ctx.app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /^chroma_lease_orphans_stopped_total\{cause="superseded"\} 1$/m, 'counted as superseded')
  const events = await ctx.db.sessionEvent.findMany({ where: { sessionId: s.id, type: 'orphan_stopped' } })
  t.match(events, [{ reason: 'superseded by generation 2' }])

  const ready = await passes(ctx, clock, s.id, 5)
  t.equal(ready.status, 'READY', 'the session serves from the recorded task')
  t.equal(ready.launchRef, second)
  t.same(await ctx.workers.sweeper.sweepOnce(), [], 'nothing else to stop')
})

t.test('a task ECS does not list yet right after RunTask is starting for 30 s, then gone', async (t) => {
  const { fake, clock, ctx } = await setup(t)
  fake.nextTasks('neverListed')
  const lease = await acquire(ctx)
  await ctx.workers.reconciler.reconcileOnce() // launches
  clock.advance(5)
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'STARTING', 'MISSING 5 s after the launch: eventual consistency')
  clock.advance(30)
  await ctx.workers.reconciler.reconcileOnce()
  const failed = await ctx.services.sessions.get(lease.session.id)
  t.equal(failed.status, 'FAILED', 'still MISSING 35 s after: the task is gone')
  t.match(failed.error, /ECS does not know the task/)
})

t.test("the session shows its task's size and what it costs at Fargate prices", async (t) => {
  const { fake, clock, ctx } = await setup(t, { cpuArchitecture: 'X86_64' })
  const lease = await acquire(ctx)
  const id = lease.session.id
  t.equal(lease.session.compute, null, 'no size before the task runs')
  await ctx.workers.reconciler.reconcileOnce() // claims and launches: launched_at is now
  clock.advance(30)
  await ctx.workers.reconciler.reconcileOnce() // PROVISIONING
  await ctx.workers.reconciler.reconcileOnce() // RUNNING: the size is recorded
  const view = async () => (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${id}` })).json()
  t.same((await view()).compute, {
    vcpu: 1, // the task's cpu '1024'
    memoryGb: 2, // its memory '2048'
    architecture: 'x86_64', // its ecs.cpu-architecture attribute
    capacityProvider: 'FARGATE', // where ECS placed it: FARGATE_SPOT:3,FARGATE:1:1 fills FARGATE's base first
    runSeconds: 30,
    hourlyUsd: 0.04937, // $0.04048 per vCPU-hour + 2 × $0.004445 per GB-hour
    costUsd: 0.000823, // the one-minute minimum: $0.04937 / 60
  }, 'while it starts: at least a minute is billed')

  clock.advance(1800 - 30)
  t.match((await view()).compute, { runSeconds: 1800, costUsd: 0.024685 }, 'half an hour later: half the hourly price')
  await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}?force=true` })
  await ctx.workers.reconciler.reconcileOnce() // StopTask
  await ctx.workers.reconciler.reconcileOnce() // still RUNNING, desiredStatus STOPPED
  await ctx.workers.reconciler.reconcileOnce() // ECS says STOPPED: ended_at
  t.equal(fake.count('StopTask'), 1)
  clock.advance(3600)
  const ended = await view()
  t.equal(ended.status, 'STOPPED')
  t.match(ended.compute, { runSeconds: 1800, costUsd: 0.024685 }, 'an ended session costs no more')
  const leaseView = (await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json()
  t.same(leaseView.session.compute, ended.compute, "the lease shows its session's cost too")
})

t.test("a task that does not report its architecture takes its task definition's, asked once", async (t) => {
  const { fake, clock, ctx } = await setup(t, { architectureAttribute: false, cpuArchitecture: 'ARM64' })
  const leases = [await acquire(ctx)]
  await mkdir(join(root, 'arm-2'), { recursive: true })
  leases.push(await acquire(ctx, `file://${join(root, 'arm-2')}`))
  for (let i = 0; i < 4; i++) {
    await ctx.workers.reconciler.reconcileOnce()
    clock.advance(10)
  }
  for (const lease of leases) {
    const s = (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${lease.session.id}` })).json()
    t.match(s.compute, { vcpu: 1, memoryGb: 2, architecture: 'arm64', hourlyUsd: 0.0395, runSeconds: 40, costUsd: 0.000658 }, 'ARM prices')
  }
  t.equal(fake.count('DescribeTaskDefinition'), 1, 'one DescribeTaskDefinition for both tasks and every pass')
})

t.test('preflight names every problem with the launch setup; GET /v1/preflight shows it to operators', async (t) => {
  // Without public IPs the server makes the preflight's EC2 calls from a short-lived process (ec2-calls.ts).
  const good = await setup(t, { ec2: 'one-shot' })
  const ok = await good.ctx.app.inject({ method: 'GET', url: '/v1/preflight' })
  t.equal(ok.statusCode, 200)
  t.match(ok.json(), { ok: true, launcher: 'fargate' })
  t.same(ok.json().checks.map((c: { name: string }) => c.name), ['cluster', 'task definition', 'subnets', 'security groups'])
  t.match(ok.json().checks[1].detail, /chroma-session on port \d+, 1024 CPU units, 2048 MiB, X86_64/)

  const bad = await setup(t, {
    taskDefinitions: { 'chroma-session:3': { containerName: 'chroma-session', containerPort: 9999 } },
    subnets: ['subnet-a'],
    securityGroups: [],
    settings: { cluster: 'nope' },
    ec2: 'one-shot',
  })
  const report = (await bad.ctx.app.inject({ method: 'GET', url: '/v1/preflight' })).json()
  t.equal(report.ok, false)
  const detail = Object.fromEntries(report.checks.map((c: { name: string; ok: boolean; detail: string }) => [c.name, c.ok ? 'ok' : c.detail]))
  t.match(detail.cluster, /ECS cluster nope does not exist/)
  t.match(detail['task definition'], /does not expose port \d+ \(ECS_CHROMA_PORT\)/)
  t.match(detail.subnets, /The subnet ID 'subnet-b' does not exist/)
  t.match(detail['security groups'], /The security group 'sg-sessions' does not exist/)
})
