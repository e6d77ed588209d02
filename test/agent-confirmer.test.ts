import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import type { LaunchTarget, ObservedCompute } from '../src/services/launchers/launcher.ts'
import { AGENT_CONFIRM_CONCURRENCY, RETRY_AFTER_FAILURE_SECONDS } from '../src/workers/agent-confirmer.ts'
import { buildTestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// The dead man's switch is fed by its own worker, from the database alone: a launcher
// that cannot describe its compute (an ECS outage) or a reconcile pass that takes long
// must not let healthy sessions stop themselves. Manual clock: the interval is exact.

const snapshotRoot = await mkdtemp(`${tmpdir()}/agent-confirmer-`)
const INTERVAL = 60

/** A launcher whose describe() fails while `describeFails` is set, as ECS's DescribeTasks does in an outage. */
class DescribeOutage extends ScriptedLauncher {
  describeFails = false
  override async describe(targets: LaunchTarget[]): Promise<Map<string, ObservedCompute>> {
    if (this.describeFails) throw new Error('ECS DescribeTasks: ServiceUnavailableException')
    return super.describe(targets)
  }
}

async function setup(tt: Parameters<typeof buildTestApp>[0]) {
  const clock = new ManualClock()
  const launcher = new DescribeOutage()
  const chroma = await new FakeChroma().start()
  tt.teardown(() => chroma.close())
  const ctx = await buildTestApp(tt, { snapshotRoot, clock, launcher, confirmIntervalSeconds: INTERVAL })
  /** Acquires `n` exclusive sessions, all served by the fake agent, and reconciles them to `healthy ? READY : STARTING`. */
  const sessions = async (n: number, healthy = true) => {
    chroma.healthy = healthy
    const ids: string[] = []
    for (let i = 0; i < n; i++) {
      const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${snapshotRoot}`, mode: 'exclusive' } })
      const id = res.json().session.id as string
      launcher.states.set(id, chroma.running())
      ids.push(id)
    }
    for (let i = 0; i < 2; i++) await ctx.workers.reconciler.reconcileOnce()
    return Promise.all(ids.map((id) => ctx.services.sessions.get(id)))
  }
  const confirmsOf = (s: { id: string; generation: number }) => chroma.confirms.filter((c) => c === ctx.services.tokens.controlToken(s.id, s.generation)).length
  return { ...ctx, clock, launcher, chroma, sessions, confirmsOf }
}

t.test("sessions keep being confirmed while the launcher's describe() fails", async (t) => {
  const ctx = await setup(t)
  const [a, b] = await ctx.sessions(2)
  t.same([a!.status, b!.status], ['READY', 'READY'])
  ctx.launcher.describeFails = true
  await ctx.workers.reconciler.reconcileOnce() // logs the failed describe(); its sessions wait for a later pass

  ctx.chroma.usage = { memoryBytes: 123_000_000, cpuSeconds: 2, cpuCores: 0.5 }
  t.equal(await ctx.workers.confirmer.confirmSessions(), 2, 'both agents confirmed')
  t.same([ctx.confirmsOf(a!), ctx.confirmsOf(b!)], [1, 1])
  t.match((await ctx.services.sessions.get(a!.id)).usage, { memoryBytes: 123_000_000, cpuCores: 0.5 }, "and the answer's usage recorded")

  ctx.clock.advance(INTERVAL - 1)
  t.equal(await ctx.workers.confirmer.confirmSessions(), 0, 'none again within the interval')
  for (let minute = 1; minute <= 20; minute++) {
    ctx.clock.advance(INTERVAL)
    await ctx.workers.reconciler.reconcileOnce()
    await ctx.workers.confirmer.confirmSessions()
  }
  t.same([ctx.confirmsOf(a!), ctx.confirmsOf(b!)], [21, 21], 'once per interval for 20 minutes of describe() failing, past the 15-minute switch')

  // A session whose row is no longer live is not confirmed: its agent's switch runs out.
  await ctx.services.sessions.transition(b!, ['READY'], 'STOPPED', { type: 'stopped', reason: 'test' })
  ctx.clock.advance(INTERVAL)
  t.equal(await ctx.workers.confirmer.confirmSessions(), 1)
  t.same([ctx.confirmsOf(a!), ctx.confirmsOf(b!)], [22, 21], 'the ended session is left to its switch')
})

t.test('a starting session is confirmed from its first address on, every pass, its restore progress recorded', async (t) => {
  const ctx = await setup(t)
  // Fargate's view: RUNNING with an address, Chroma not ready, no progress from the launcher.
  ctx.chroma.confirmStatus = { phase: 'restoring', bytes: 450, totalBytes: 1000, percent: 45 }
  const [s] = await ctx.sessions(1, false)
  t.equal(s!.status, 'STARTING')
  t.match(s, { host: '127.0.0.1', port: ctx.chroma.port }, 'the address is recorded before READY')
  ctx.launcher.describeFails = true
  for (let i = 0; i < 3; i++) await ctx.workers.confirmer.confirmSessions()
  t.equal(ctx.confirmsOf(s!), 3, 'every pass while restoring, not once per interval')
  const view = (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${s!.id}` })).json()
  t.match(view.progress, { phase: 'restoring', percent: 45, text: 'restoring 45%' }, "the agent's progress shows on the session")
})

t.test('a bounded number of confirmations at a time', async (t) => {
  const ctx = await setup(t)
  const n = AGENT_CONFIRM_CONCURRENCY * 2 + 5
  const all = await ctx.sessions(n)
  t.ok(all.every((s) => s.status === 'READY'))
  ctx.chroma.confirmDelayMs = 30
  t.equal(await ctx.workers.confirmer.confirmSessions(), n, 'every session confirmed in one pass')
  t.ok(ctx.chroma.maxConfirmsInFlight <= AGENT_CONFIRM_CONCURRENCY, `at most ${AGENT_CONFIRM_CONCURRENCY} in flight: ${ctx.chroma.maxConfirmsInFlight}`)
  t.ok(ctx.chroma.maxConfirmsInFlight > 1, 'and more than one at a time')
})

t.test("restore progress is cleared once the agent is past restoring, and a late answer cannot put it back on a READY session", async (t) => {
  const ctx = await setup(t)
  ctx.chroma.confirmStatus = { phase: 'restoring', bytes: 900, totalBytes: 1000, percent: 90 }
  const [s] = await ctx.sessions(1, false)
  await ctx.workers.confirmer.confirmSessions()
  t.match((await ctx.services.sessions.get(s!.id)).progress, { phase: 'restoring', percent: 90 })
  ctx.chroma.confirmStatus = { phase: 'starting' }
  t.equal(await ctx.workers.confirmer.confirmSessions(), 1, 'still asked every pass: its last answer was restoring')
  t.equal((await ctx.services.sessions.get(s!.id)).progress, null, 'cleared: the agent is past restoring')
  t.equal(await ctx.workers.confirmer.confirmSessions(), 0, 'then only once per interval')

  ctx.chroma.healthy = true
  await ctx.workers.reconciler.reconcileOnce()
  const ready = await ctx.services.sessions.get(s!.id)
  t.equal(ready.status, 'READY')
  // An answer read while it was STARTING, written after it became READY.
  await ctx.services.sessions.setProgress(ready, { phase: 'restoring', bytes: 10, totalBytes: 1000, percent: 1 }, 'STARTING')
  t.equal((await ctx.services.sessions.get(s!.id)).progress, null, 'the write is fenced on STARTING')
})

t.test('an agent that does not answer is tried again after a pause, not on every pass', async (t) => {
  const ctx = await setup(t)
  const [s] = await ctx.sessions(1)
  ctx.chroma.confirmFailures = 1
  t.equal(await ctx.workers.confirmer.confirmSessions(), 0, 'the first try fails')
  const tries = ctx.chroma.confirms.length
  ctx.clock.advance(Math.min(INTERVAL, RETRY_AFTER_FAILURE_SECONDS) - 1)
  t.equal(await ctx.workers.confirmer.confirmSessions(), 0)
  t.equal(ctx.chroma.confirms.length, tries, 'not asked again within the pause')
  ctx.clock.advance(1)
  t.equal(await ctx.workers.confirmer.confirmSessions(), 1, 'asked again after it, and it answers')
  t.equal(ctx.confirmsOf(s!), 2)
})

t.test('a STARTING session whose compute cannot be observed is not failed at its start deadline', async (t) => {
  const ctx = await setup(t)
  const [s] = await ctx.sessions(1, false)
  t.equal(s!.status, 'STARTING')
  ctx.launcher.describeFails = true
  ctx.clock.advance(3600)
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(s!.id)).status, 'STARTING', 'no decision without an observation')
  ctx.launcher.describeFails = false
  ctx.chroma.healthy = true
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(s!.id)).status, 'READY', 'READY once the launcher answers again')
})

t.test('only sessions the control plane wants serving are confirmed: a STOPPING one is left to its switch', async (t) => {
  const ctx = await setup(t)
  const [starting] = await ctx.sessions(1, false)
  const [ready, draining, stopping] = await ctx.sessions(3)
  t.equal(starting!.status, 'STARTING')
  await ctx.services.sessions.drain(draining!.id, 'test')
  // Force stopped, and every stop request lost (the launcher never stops it): only its dead man's switch can end it.
  await ctx.services.sessions.forceStop(stopping!.id, 'test')
  t.equal((await ctx.services.sessions.get(stopping!.id)).status, 'STOPPING')
  const before = ctx.confirmsOf(stopping!)
  for (let i = 0; i < 3; i++) {
    ctx.clock.advance(INTERVAL)
    await ctx.workers.confirmer.confirmSessions()
  }
  t.equal(ctx.confirmsOf(stopping!), before, 'the STOPPING session is never confirmed')
  t.ok(ctx.confirmsOf(starting!) >= 3 && ctx.confirmsOf(ready!) >= 3 && ctx.confirmsOf(draining!) >= 3, 'STARTING, READY and DRAINING ones are, every interval')
})
