import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp, reconcileUntilSettled } from './helpers/app.ts'
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
