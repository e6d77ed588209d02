import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { FakeChroma, sample, ScriptedLauncher } from './helpers/fake-session.ts'

// /metrics checked for values, not names: each session's phases move on a manual clock,
// and the launcher and Chroma are scripted, so every number below is known exactly.

const root = await mkdtemp(join(tmpdir(), 'metrics-'))
for (const dir of ['receipts', 'invoices', 'bad-capacity', 'dies', 'slow', 'lost', 'x86', 'arm', 'local', 'small', 'big']) await mkdir(join(root, dir))
const snap = (name: string) => `file://${join(root, name)}`

async function setup(tt: Parameters<typeof buildTestApp>[0]) {
  const clock = new ManualClock()
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  tt.teardown(() => chroma.close())
  // Holding off: a starting session's queries are refused at once (409), the outcome this
  // counts as not_ready; held ones are counted in test/request-hold.test.ts.
  const ctx = await buildTestApp(tt, { snapshotRoot: root, clock, launcher, startTimeoutSeconds: 60, idleTtlSeconds: 30, hold: { holdSeconds: 0, maxPerSession: 64 } })
  const inject = ctx.app.inject.bind(ctx.app)
  const acquire = async (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    inject({ method: 'POST', url: '/v1/leases', payload: body, headers })
  const metrics = async () => {
    const res = await inject('/metrics')
    tt.equal(res.statusCode, 200)
    return res.body
  }
  /** Reconciler passes: one claims and launches, the next sees the compute. */
  const passes = async (n: number) => {
    for (let i = 0; i < n; i++) await ctx.workers.reconciler.reconcileOnce()
  }
  return { ...ctx, clock, launcher, chroma, inject, acquire, metrics, passes }
}

t.test('acquire latency by outcome, time to READY by phase, sessions and leases', async (t) => {
  const ctx = await setup(t)
  const first = await ctx.acquire({ snapshot: snap('receipts'), collection: 'receipts', holder: 'wf-1' })
  t.equal(first.statusCode, 201)
  const session = first.json().session.id
  t.equal((await ctx.acquire({ snapshot: snap('receipts'), collection: 'receipts' }, { 'idempotency-key': 'run-1' })).statusCode, 201)
  t.equal((await ctx.acquire({ snapshot: snap('receipts'), collection: 'receipts' }, { 'idempotency-key': 'run-1' })).statusCode, 200)
  t.equal((await ctx.acquire({ snapshot: snap('receipts'), mode: 'exclusive', ttlSeconds: 10_000_000 })).statusCode, 400)

  // launching: 2 s until a reconciler claims the launch.
  ctx.clock.advance(2)
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(session)).status, 'STARTING')
  // provisioning: 5 s until the launcher reports the compute running.
  ctx.clock.advance(5)
  ctx.launcher.states.set(session, ctx.chroma.running())
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(session)).status, 'STARTING', 'running, but Chroma is not healthy yet')
  // chroma_boot: 3 s until Chroma's healthcheck passes.
  ctx.clock.advance(3)
  ctx.chroma.healthy = true
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(session)).status, 'READY')

  const m = await ctx.metrics()
  const acquires = (outcome: string, mode = 'shared') => sample(m, 'chroma_lease_acquire_duration_seconds_count', { mode, outcome, waited: 'false' })
  t.equal(acquires('created'), 1, 'one acquire started the session')
  t.equal(acquires('reused'), 1, 'one attached to it')
  t.equal(acquires('replayed'), 1, 'one replayed its Idempotency-Key')
  t.equal(acquires('error', 'exclusive'), 1, 'one was refused')
  t.ok(sample(m, 'chroma_lease_acquire_duration_seconds_sum', { mode: 'shared', outcome: 'created', waited: 'false' })! > 0, 'latency is measured')

  for (const [phase, seconds] of [['launching', 2], ['provisioning', 5], ['chroma_boot', 3]] as const) {
    t.equal(sample(m, 'chroma_lease_session_start_phase_seconds_sum', { phase }), seconds, `${phase} took ${seconds} s`)
    t.equal(sample(m, 'chroma_lease_session_start_phase_seconds_count', { phase }), 1)
  }
  t.equal(sample(m, 'chroma_lease_session_start_seconds_sum'), 10, 'created to READY: 10 s')
  t.equal(sample(m, 'chroma_lease_session_start_seconds_bucket', { le: '5' }), 0)
  t.equal(sample(m, 'chroma_lease_session_start_seconds_bucket', { le: '10' }), 1)
  t.equal(sample(m, 'chroma_lease_sessions', { status: 'READY' }), 1)
  t.equal(sample(m, 'chroma_lease_live_leases'), 2)
  t.equal(sample(m, 'chroma_lease_session_events_total', { type: 'running' }), 1)
  t.equal(sample(m, 'chroma_lease_session_events_total', { type: 'lease_attached' }), 2)
  t.ok(sample(m, 'chroma_lease_process_resident_memory_bytes')! > 0, "the process's own metrics")
  t.ok(sample(m, 'chroma_lease_nodejs_eventloop_lag_seconds') !== undefined)

  const events = (await ctx.inject(`/v1/sessions/${session}/events`)).json().events
  t.match(events.find((e: { type: string }) => e.type === 'ready').detail, { phases: { launching: 2, provisioning: 5, chroma_boot: 3 } }, 'the timeline shows the phases too')
  t.notMatch(m, /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-/, 'no ids as labels')
})

t.test('query latency by kind, session status and outcome; queries in flight', async (t) => {
  const ctx = await setup(t)
  const ready = async (name: string, mode = 'shared') => {
    const lease = (await ctx.acquire({ snapshot: snap(name), collection: 'receipts', mode })).json()
    ctx.launcher.states.set(lease.session.id, ctx.chroma.running())
    return lease
  }
  ctx.chroma.healthy = true
  const lease = await ready('receipts')
  await ctx.passes(2)
  t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY')
  const pending = (await ctx.acquire({ snapshot: snap('invoices'), collection: 'receipts' })).json()
  const token = (tok: string) => ({ 'x-chroma-token': tok })
  const query = (id: string, tok: string) =>
    ctx.inject({ method: 'POST', url: `/v1/sessions/${id}/query`, headers: token(tok), payload: { collection: 'receipts', queryEmbeddings: [[0.1, 0.2]], nResults: 2 } })

  t.equal((await query(lease.session.id, lease.token)).statusCode, 200)
  t.equal((await query(lease.session.id, lease.token)).statusCode, 200)
  t.equal((await ctx.inject({ url: '/api/v2/heartbeat', headers: token(lease.token) })).statusCode, 200)
  t.equal((await ctx.inject({ url: `/v1/sessions/${lease.session.id}/chroma/api/v2/heartbeat`, headers: token(lease.token) })).statusCode, 200)
  t.equal((await ctx.inject({ url: '/api/v2/boom', headers: token(lease.token) })).statusCode, 500)
  t.equal((await ctx.inject({ url: '/api/v2/heartbeat', headers: token('clt_nope') })).statusCode, 401)
  t.equal((await ctx.inject({ url: '/api/v2/heartbeat', headers: token(pending.token) })).statusCode, 409)
  t.equal((await query(pending.session.id, pending.token)).statusCode, 409)
  t.equal((await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${lease.session.id}` })).json().status, 'DRAINING')
  // The change feed tells the proxy's route cache: wait for it to see the session DRAINING.
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
    if ((await ctx.services.router.resolve(lease.token, lease.session.id)).sessionStatus === 'DRAINING') break
  }
  t.equal((await query(lease.session.id, lease.token)).statusCode, 200, 'a draining session still serves its leases')

  const m = await ctx.metrics()
  const count = (kind: string, session_status: string, outcome: string) =>
    sample(m, 'chroma_lease_query_duration_seconds_count', { kind, session_status, outcome })
  t.equal(count('query', 'READY', 'ok'), 2)
  t.equal(count('query', 'DRAINING', 'ok'), 1)
  t.equal(count('query', 'PENDING', 'not_ready'), 1)
  t.equal(count('proxy', 'READY', 'ok'), 2)
  t.equal(count('proxy', 'READY', 'upstream_error'), 1, "Chroma's own 500")
  t.equal(count('proxy', 'unknown', 'denied'), 1, 'a bad token resolves to no session')
  t.equal(count('proxy', 'PENDING', 'not_ready'), 1)
  t.ok(sample(m, 'chroma_lease_query_duration_seconds_sum', { kind: 'query', session_status: 'READY', outcome: 'ok' })! > 0)
  t.equal(sample(m, 'chroma_lease_queries_in_flight', { kind: 'proxy' }), 0, 'nothing left in flight')
  t.equal(sample(m, 'chroma_lease_queries_in_flight', { kind: 'query' }), 0)
})

t.test('launch failures by cause, reaped sessions by cause, orphans', async (t) => {
  const ctx = await setup(t)
  ctx.chroma.healthy = true
  ctx.launcher.failLaunchesOf.add('bad-capacity')
  const acquire = async (name: string) => (await ctx.acquire({ snapshot: snap(name), mode: 'exclusive' })).json()
  const status = async (id: string) => (await ctx.services.sessions.get(id)).status

  const noCapacity = await acquire('bad-capacity')
  const dies = await acquire('dies')
  const slow = await acquire('slow')
  await ctx.passes(1)
  t.equal(await status(noCapacity.session.id), 'FAILED')
  ctx.launcher.states.set(dies.session.id, { state: 'stopped', reason: 'collection "x" is not in the snapshot' })
  await ctx.passes(1)
  t.equal(await status(dies.session.id), 'FAILED')
  t.equal(await status(slow.session.id), 'STARTING')
  ctx.clock.advance(61)
  await ctx.passes(1)
  t.equal(await status(slow.session.id), 'FAILED')

  // Four sessions get READY, then end four ways; a fifth loses its compute.
  const serving = []
  for (const name of ['receipts', 'invoices', 'lost']) {
    const lease = await acquire(name)
    ctx.launcher.states.set(lease.session.id, ctx.chroma.running())
    serving.push(lease)
  }
  const drained = await acquire('receipts')
  ctx.launcher.states.set(drained.session.id, ctx.chroma.running())
  await ctx.passes(2)
  const [idle, forced, lost] = serving as [typeof drained, typeof drained, typeof drained]
  for (const l of [...serving, drained]) t.equal(await status(l.session.id), 'READY')

  await ctx.inject({ method: 'DELETE', url: `/v1/leases/${idle.id}` })
  await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${forced.session.id}?force=true&reason=bad%20data` })
  await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${drained.session.id}?reason=deploy` })
  await ctx.inject({ method: 'DELETE', url: `/v1/leases/${drained.id}` })
  ctx.launcher.states.set(lost.session.id, { state: 'stopped', reason: 'task stopped: spot interruption' })
  ctx.clock.advance(31)
  const reaped = await ctx.workers.reaper.reapOnce()
  t.same(reaped.stopped.map((s) => s.reason).sort(), ['drained', 'idle'])
  await ctx.workers.reconciler.reconcileOnce()
  t.equal(await status(lost.session.id), 'FAILED')

  ctx.launcher.strays.push({ ref: 'fake-stray', sessionId: '00000000-0000-4000-8000-000000000000', generation: 1 })
  await ctx.workers.sweeper.sweepOnce()
  await ctx.workers.sweeper.sweepOnce()

  const m = await ctx.metrics()
  const failures = (cause: string) => sample(m, 'chroma_lease_session_launch_failures_total', { cause })
  t.equal(failures('launch_error'), 1)
  t.equal(failures('compute_stopped'), 1)
  t.equal(failures('start_timeout'), 1)
  t.equal(failures('launch_unrecorded'), 0, 'causes that did not happen are there, at zero')
  const reapedBy = (cause: string) => sample(m, 'chroma_lease_sessions_reaped_total', { cause })
  t.equal(reapedBy('idle'), 1)
  t.equal(reapedBy('drained'), 1)
  t.equal(reapedBy('force_stop'), 1)
  t.equal(reapedBy('compute_lost'), 1)
  t.equal(reapedBy('max_lifetime'), 0)
  t.equal(sample(m, 'chroma_lease_orphans_stopped_total', { cause: 'no_session' }), 1, 'an orphan still stopping counts once')
  t.equal(sample(m, 'chroma_lease_orphans_stopped_total', { cause: 'session_ended' }), 0, 'failed and stopped sessions left nothing running')
  t.equal(sample(m, 'chroma_lease_sessions', { status: 'FAILED' }), 4)
  t.equal(sample(m, 'chroma_lease_sessions', { status: 'STOPPING' }), 3)
  t.equal(sample(m, 'chroma_lease_session_start_phase_seconds_count', { phase: 'chroma_boot' }), 4, 'four sessions got READY')

  ctx.launcher.strays.push({ ref: 'fake-stray-2', sessionId: '00000000-0000-4000-8000-000000000001', generation: 1 })
  await ctx.workers.sweeper.sweepOnce()
  t.equal(sample(await ctx.metrics(), 'chroma_lease_orphans_stopped_total', { cause: 'no_session' }), 2, 'another orphan counts')

  // A second compute of a live session's generation, beside the one it recorded (any launcher).
  t.equal(await status(idle.session.id), 'STOPPING', 'still live')
  ctx.launcher.strays.push({ ref: 'fake-duplicate', sessionId: idle.session.id, generation: 1 })
  t.ok((await ctx.workers.sweeper.sweepOnce()).includes('fake-duplicate'), 'the sweep stops it')
  t.equal(sample(await ctx.metrics(), 'chroma_lease_orphans_stopped_total', { cause: 'duplicate' }), 1, 'counted as a duplicate')
})

t.test('session cost at Fargate prices: live sessions so far, ended ones in total', async (t) => {
  const ctx = await setup(t)
  ctx.chroma.healthy = true
  const usd = async (state: string) => sample(await ctx.metrics(), 'chroma_lease_session_cost_usd', { state })
  const close = (actual: number | undefined, expected: number) => actual !== undefined && Math.abs(actual - expected) < 1e-9
  t.equal(await usd('live'), 0, 'nothing has run yet')
  t.equal(await usd('ended'), 0)

  const acquire = async (name: string) => (await ctx.acquire({ snapshot: snap(name), mode: 'exclusive' })).json()
  const x86 = await acquire('x86')
  ctx.launcher.states.set(x86.session.id, ctx.chroma.running({ cpuUnits: 1024, memoryMiB: 2048, architecture: 'x86_64', capacityProvider: 'FARGATE' }))
  const local = await acquire('local')
  ctx.launcher.states.set(local.session.id, ctx.chroma.running())
  await ctx.passes(2) // launched now, then READY
  ctx.clock.advance(1800)
  const arm = await acquire('arm')
  ctx.launcher.states.set(arm.session.id, ctx.chroma.running({ cpuUnits: 512, memoryMiB: 1024, architecture: 'arm64', capacityProvider: 'FARGATE_SPOT' }))
  await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${x86.session.id}?force=true` })
  await ctx.passes(3) // the x86 session stops and ends, after 1800 s; the ARM one launches now and runs
  t.equal((await ctx.services.sessions.get(x86.session.id)).status, 'STOPPED')
  t.equal((await ctx.services.sessions.get(arm.session.id)).status, 'READY')

  ctx.clock.advance(10)
  // 1 vCPU + 2 GB x86 for 30 min: $0.04937 / 2. 0.5 vCPU + 1 GB ARM ($0.01975/h) for 10 s: a minute's worth.
  t.ok(close(await usd('ended'), 0.024685), 'ended: the x86 half hour')
  t.ok(close(await usd('live'), 0.01975 / 60), 'live: the one-minute minimum')
  ctx.clock.advance(120)
  t.ok(close(await usd('live'), (0.01975 * 130) / 3600), 'live: 130 s, per second')
  t.ok(close(await usd('ended'), 0.024685), 'ended sessions cost no more')
  const view = (await ctx.inject(`/v1/sessions/${arm.session.id}`)).json()
  t.match(view.compute, { vcpu: 0.5, memoryGb: 1, architecture: 'arm64', capacityProvider: 'FARGATE_SPOT', runSeconds: 130, costUsd: 0.000713 }, 'the session resource agrees')
  t.equal((await ctx.inject(`/v1/sessions/${local.session.id}`)).json().compute, null, 'the local session reported no size and costs nothing')
})

t.test("sessions' own memory and CPU, as their agents report them: the largest and the total over live sessions", async (t) => {
  const ctx = await setup(t)
  const other = await new FakeChroma().start()
  t.teardown(() => other.close())
  for (const c of [ctx.chroma, other]) c.healthy = true
  ctx.chroma.usage = { memoryBytes: 300_000_000, cpuSeconds: 40, cpuCores: 0.25 }
  other.usage = { memoryBytes: 500_000_000, cpuSeconds: 90, cpuCores: 1.5 }
  const gauge = async (name: string) => sample(await ctx.metrics(), name)
  t.equal(await gauge('chroma_lease_live_sessions_memory_bytes'), 0, 'no session has reported yet')

  const small = (await ctx.acquire({ snapshot: snap('small'), mode: 'exclusive' })).json()
  const big = (await ctx.acquire({ snapshot: snap('big'), mode: 'exclusive' })).json()
  ctx.launcher.states.set(small.session.id, ctx.chroma.running())
  ctx.launcher.states.set(big.session.id, other.running())
  await ctx.passes(2)
  t.equal(await ctx.workers.confirmer.confirmSessions(), 2, 'both agents answer their confirmations')
  t.equal(await gauge('chroma_lease_session_memory_max_bytes'), 500_000_000)
  t.equal(await gauge('chroma_lease_live_sessions_memory_bytes'), 800_000_000)
  t.equal(await gauge('chroma_lease_session_cpu_max_cores'), 1.5)
  t.equal(await gauge('chroma_lease_live_sessions_cpu_cores'), 1.75)
  t.match((await ctx.inject(`/v1/sessions/${big.session.id}`)).json().usage, { memoryBytes: 500_000_000, cpuCores: 1.5, at: String }, 'the session resource shows it')

  await ctx.inject({ method: 'DELETE', url: `/v1/sessions/${big.session.id}?force=true` })
  ctx.launcher.states.set(big.session.id, { state: 'stopped', reason: 'stopped' })
  await ctx.passes(2)
  t.equal((await ctx.services.sessions.get(big.session.id)).status, 'STOPPED')
  t.equal(await gauge('chroma_lease_live_sessions_memory_bytes'), 300_000_000, 'a session that ended counts no more')
  t.equal(await gauge('chroma_lease_session_cpu_max_cores'), 0.25)
})
