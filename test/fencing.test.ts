import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import type { LaunchSpec } from '../src/services/launchers/launcher.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { buildTestApp, reconcileUntilSettled } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// Generation fencing (DESIGN.md): a replica paused in the middle of a launch, between
// its claim and the spawn, while another replica relaunches the session. Once it
// resumes, its writes are refused and the compute it starts is stopped by the orphan
// sweep. Two replicas (two apps, one database, one sessions directory), real agents.

const root = await mkdtemp(join(tmpdir(), 'fencing-'))
const fixture = await buildSnapshotFixture(root, { count: 20, dim: 8 })

/** A process launcher whose launch() waits at a gate: the replica is paused there, between claim and spawn. */
class GatedLauncher extends ProcessLauncher {
  paused: LaunchSpec | null = null
  private open!: () => void
  private readonly gate = new Promise<void>((resolve) => (this.open = resolve))
  resume(): void {
    this.open()
  }
  override async launch(spec: LaunchSpec): Promise<{ ref: string }> {
    this.paused = spec
    await this.gate
    return super.launch(spec)
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined | null | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

t.test('a replica paused between claim and spawn is fenced off by the relaunch: its writes are refused, its compute stopped', async (t) => {
  const clock = new ManualClock()
  const rootDir = await mkdtemp(join(tmpdir(), 'fencing-sessions-'))
  const options = { rootDir, snapshotRoot: root, stopGraceMs: 5_000 }
  const gated = new GatedLauncher(options)
  const a = await buildTestApp(t, { snapshotRoot: root, clock, launcher: gated })
  const b = await buildTestApp(t, { snapshotRoot: root, clock, launcher: new ProcessLauncher(options), databaseUrl: a.databaseUrl })

  const lease = (await a.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}`, collection: fixture.collection } })).json()
  const id = lease.session.id as string
  // Replica A claims the launch and stops inside it, before the spawn.
  const passA = a.workers.reconciler.reconcileOnce()
  const stale = await until('A to pause in its launch', async () => gated.paused)
  const claimed = await a.services.sessions.get(id)
  t.match(claimed, { status: 'STARTING', generation: stale.generation, launchRef: null }, 'A claimed the launch and recorded nothing yet')

  // Past the orphaned-claim wait, replica B launches the session anew: the next generation.
  clock.advance(20)
  const ready = await reconcileUntilSettled(b, id)
  t.equal(ready.status, 'READY', `B's launch serves (${ready.error})`)
  t.equal(ready.generation, stale.generation + 1, 'the relaunch bumped the generation')
  const events = (await b.app.inject({ method: 'GET', url: `/v1/sessions/${id}/events?limit=100` })).json().events as Array<{ type: string; detail: unknown }>
  t.match(events.find((e) => e.type === 'relaunching'), { detail: { generation: ready.generation, previousGeneration: stale.generation } })

  // A resumes: its launch starts an agent of the stale generation, and its record of it is refused.
  gated.resume()
  await passA
  const after = await a.services.sessions.get(id)
  t.match(after, { status: 'READY', generation: ready.generation, launchRef: ready.launchRef }, "A's record of its launch was refused")
  t.equal(
    (await a.db.sessionEvent.count({ where: { sessionId: id, type: 'launched' } })),
    1,
    'one launched event: the current generation\'s',
  )
  const staleCompute = (await gated.listRunning()).filter((r) => r.sessionId === id && r.generation === stale.generation)
  t.equal(staleCompute.length, 1, 'A did start compute of the stale generation')
  // Any other write from A's stale view is refused too.
  t.notOk(await a.services.sessions.transition({ id, generation: stale.generation }, ['STARTING', 'READY'], 'FAILED', { type: 'failed', reason: 'stale' }), 'a transition of the stale generation is refused')
  t.equal(await a.services.sessions.markRunning({ id, generation: stale.generation }, {}), null, 'an observation of the stale generation is refused')

  // The orphan sweep (either replica's) stops the stale compute, and only it.
  t.same(await a.workers.sweeper.sweepOnce(), [staleCompute[0]!.ref], 'the sweep stops the superseded compute')
  await until('the stale agent to exit', async () => {
    const left = (await gated.listRunning()).filter((r) => r.sessionId === id)
    if (left.some((r) => r.generation === stale.generation)) {
      await a.workers.sweeper.sweepOnce() // a later sweep escalates to SIGKILL after the grace
      return false
    }
    return left
  })
  const left = (await gated.listRunning()).filter((r) => r.sessionId === id)
  t.same(left.map((r) => [r.generation, r.ref]), [[ready.generation, ready.launchRef]], "the session's own compute runs on")
  t.match(await a.db.sessionEvent.findFirst({ where: { sessionId: id, type: 'orphan_stopped' } }), { reason: `superseded by generation ${ready.generation}` })
  t.equal((await b.services.sessions.get(id)).status, 'READY')
})

/** A process launcher that pauses after the spawn, before launch() returns: its replica has not recorded the launch. */
class PausedAfterSpawn extends ProcessLauncher {
  spawned: { ref: string } | null = null
  private open!: () => void
  private readonly gate = new Promise<void>((resolve) => (this.open = resolve))
  resume(): void {
    this.open()
  }
  override async launch(spec: LaunchSpec): Promise<{ ref: string }> {
    const launched = await super.launch(spec)
    this.spawned = launched
    await this.gate
    return launched
  }
}

t.test('a replica paused after the spawn, before recording it: its compute is adopted, not launched twice', async (t) => {
  const clock = new ManualClock()
  const rootDir = await mkdtemp(join(tmpdir(), 'fencing-sessions-'))
  const options = { rootDir, snapshotRoot: root, stopGraceMs: 5_000 }
  const paused = new PausedAfterSpawn(options)
  const a = await buildTestApp(t, { snapshotRoot: root, clock, launcher: paused })
  const b = await buildTestApp(t, { snapshotRoot: root, clock, launcher: new ProcessLauncher(options), databaseUrl: a.databaseUrl })

  const lease = (await a.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}`, collection: fixture.collection } })).json()
  const id = lease.session.id as string
  const passA = a.workers.reconciler.reconcileOnce()
  const spawned = await until('A to spawn its agent', async () => paused.spawned)
  clock.advance(20)
  const ready = await reconcileUntilSettled(b, id)
  t.match(ready, { status: 'READY', generation: 1, launchRef: spawned.ref }, "B adopted A's agent: same generation, A's pid")
  paused.resume()
  await passA
  t.equal(await a.db.sessionEvent.count({ where: { sessionId: id, type: 'launched' } }), 1, "A's own record came second and was refused")
  t.same((await paused.listRunning()).filter((r) => r.sessionId === id).map((r) => r.ref), [spawned.ref], 'one agent')
  t.same(await a.workers.sweeper.sweepOnce(), [], 'nothing to sweep')
})
