import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import type { LaunchTarget } from '../src/services/launchers/launcher.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { buildTestApp, reconcileUntilSettled, type TestApp } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// No stop request is lost: a replica killed between creating a session's stop-requested
// file and writing it left an empty file, after which every pass threw ("Unexpected end
// of JSON input") and the session stayed STOPPING, its agent and Chroma alive, for good.

const root = await mkdtemp(join(tmpdir(), 'stop-requests-'))
const fixture = await buildSnapshotFixture(root, { count: 20, dim: 8 })

t.test('an empty stop-requested file (a replica killed mid-write) counts as a request made now; the session stops', async (t) => {
  const sessionsDir = await mkdtemp(join(tmpdir(), 'stop-requests-sessions-'))
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock: new ManualClock(), sessionsDir })
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}` } })).json()
  const ready = await reconcileUntilSettled(ctx, lease.session.id)
  t.equal(ready.status, 'READY')
  const requestFile = join(sessionsDir, `${ready.id}-g${ready.generation}`, 'stop-requested')
  await writeFile(requestFile, '')

  const forced = await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${ready.id}?force=true` })
  t.equal(forced.json().status, 'STOPPING')
  const deadline = Date.now() + 60_000
  let status = 'STOPPING'
  while (status === 'STOPPING' && Date.now() < deadline) {
    await ctx.workers.reconciler.reconcileOnce()
    status = (await ctx.services.sessions.get(ready.id)).status
    if (status === 'STOPPING') await new Promise((r) => setTimeout(r, 200))
  }
  t.equal(status, 'STOPPED', 'the agent was signalled and the session reached STOPPED')
  t.same(await ctx.launcher.listRunning(), [], 'its agent is gone')
  const rewritten = JSON.parse(await readFile(requestFile, 'utf8')) as { at: string; reason: string }
  t.ok(Number.isFinite(Date.parse(rewritten.at)), 'the unreadable file was replaced by a whole one, with the time of the request')
})

/** A process launcher whose stop requests are all lost (a replica killed before each one reached the agent). */
class LostStops extends ProcessLauncher {
  override async stop(_target: LaunchTarget, _reason: string): Promise<void> {}
}

/** Reconcile and confirm passes, the manual clock following real time (the agents' switches run in real time). */
async function passesUntil(ctx: TestApp & { clock: ManualClock }, id: string, done: (status: string) => boolean, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs
  let last = Date.now()
  for (;;) {
    await ctx.workers.reconciler.reconcileOnce()
    await ctx.workers.confirmer.confirmSessions()
    const status = (await ctx.services.sessions.get(id)).status
    if (done(status) || Date.now() > deadline) return status
    await new Promise((r) => setTimeout(r, 200))
    ctx.clock.advance((Date.now() - last) / 1000)
    last = Date.now()
  }
}

t.test("a STOPPING session whose every stop request is lost stops anyway: it is not confirmed, so its agent's dead man's switch fires", async (t) => {
  const clock = new ManualClock()
  const rootDir = await mkdtemp(join(tmpdir(), 'stop-requests-sessions-'))
  const launcher = new LostStops({ rootDir, snapshotRoot: root, stopGraceMs: 5_000 })
  const ctx = { ...(await buildTestApp(t, { snapshotRoot: root, clock, launcher, deadManSeconds: 4, confirmIntervalSeconds: 1 })), clock }
  t.teardown(() => stopAllFor(rootDir))
  const lease = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}` } })).json()
  const id = lease.session.id as string
  t.equal(await passesUntil(ctx, id, (s) => s !== 'PENDING' && s !== 'STARTING', 60_000), 'READY')
  // Confirmed while it serves: still READY after more than its switch.
  t.equal(await passesUntil(ctx, id, (s) => s !== 'READY', 6_000), 'READY', 'a READY session is kept alive by the confirmations')

  t.equal((await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}?force=true` })).json().status, 'STOPPING')
  t.equal(await passesUntil(ctx, id, (s) => s === 'STOPPED', 30_000), 'STOPPED', "no stop reached the agent, yet its switch stopped it and the session is STOPPED")
  const stopped = await ctx.db.sessionEvent.findFirst({ where: { sessionId: id, type: 'stopped' } })
  t.ok(stopped, 'recorded as stopped')
  t.same((await launcher.listRunning()).filter((r) => r.sessionId === id), [], 'its agent is gone')
})

/** Stops what LostStops would not, at teardown. */
async function stopAllFor(rootDir: string): Promise<void> {
  const real = new ProcessLauncher({ rootDir, stopGraceMs: 0 })
  for (const r of await real.listRunning()) await real.stop(r, 'test teardown')
}
