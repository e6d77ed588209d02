import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Prisma } from '../src/generated/prisma/client.ts'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { ScriptedLauncher } from './helpers/fake-session.ts'

// Every live session is looked at on every pass, however many there are: the
// reconciler pages through them (keyset), stops and launches first. The rows are
// written in bulk with SQL; the launcher is scripted (nothing real runs).

t.test('one pass over 2,000+ live sessions reaches the ones created last', async (t) => {
  const clock = new ManualClock()
  const launcher = new ScriptedLauncher()
  const ctx = await buildTestApp(t, { clock, launcher })
  const insert = async (n: number, status: string, refPrefix: string | null, at: Date) => {
    await ctx.sql.rows(Prisma.sql`
      INSERT INTO sessions (id, mode, snapshot, status, generation, launcher, launch_ref, idle_ttl_seconds, created_by, created_at, updated_at)
      SELECT gen_random_uuid(), 'exclusive', 'file:///tmp/x.tar', ${status}::"SessionStatus", 1, 'process',
             CASE WHEN ${refPrefix}::text IS NULL THEN NULL ELSE ${refPrefix}::text || i END, 300, 'test', ${at}, ${at}
      FROM generate_series(1, ${n}) AS i`)
  }
  const base = clock.now().getTime() - 3_600_000
  // The oldest: more STOPPING sessions than one page holds, then steady READY ones.
  await insert(600, 'STOPPING', 'old-stopping-', new Date(base))
  await insert(1400, 'READY', 'old-ready-', new Date(base + 1000))
  // Created last, after the 2,000.
  const one = async (status: string, ref: string | null) => {
    const id = randomUUID()
    const at = new Date(base + 2000)
    await ctx.sql.rows(Prisma.sql`
      INSERT INTO sessions (id, mode, snapshot, status, generation, launcher, launch_ref, idle_ttl_seconds, created_by, created_at, updated_at)
      VALUES (${id}::uuid, 'exclusive', 'file:///tmp/x.tar', ${status}::"SessionStatus", 1, 'process', ${ref}, 300, 'test', ${at}, ${at})`)
    return id
  }
  const pending = await one('PENDING', null)
  const stopping = await one('STOPPING', 'last-stopping')
  const lost = await one('READY', 'last-ready')
  launcher.states.set(lost, { state: 'stopped', reason: 'the task exited (exit code 137)' })

  await ctx.workers.reconciler.reconcileOnce()

  const launched = await ctx.services.sessions.get(pending)
  t.equal(launched.status, 'STARTING', 'the PENDING session created last is launched in this pass')
  t.equal(launched.launchRef, `fake-${pending}-g${launched.generation}`, 'and its launch recorded')
  t.ok(launcher.stopped.includes('last-stopping'), 'the STOPPING session created last is asked to stop')
  t.equal(launcher.stopped.filter((r) => r.startsWith('old-stopping-')).length, 600, 'and so is every older STOPPING one')
  t.equal((await ctx.services.sessions.get(lost)).status, 'FAILED', 'a READY session past the first 2,000 whose compute died is FAILED')

  launcher.states.set(stopping, { state: 'stopped', reason: 'stopped on request', clean: true })
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(stopping)).status, 'STOPPED', 'and once its compute is gone, STOPPED on the next pass')
})
