import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { request } from 'undici'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp, reconcileUntilSettled, type TestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'
import { startS3Fake, startStallingS3 } from './helpers/s3-fake.ts'
import { buildSnapshotFixture, chromaClient } from './helpers/snapshot-fixture.ts'

// The session image as the control plane sees it: the session token end to end, the
// dead man's switch fed by the reconciler, restore progress on the lease and session,
// save-back (on release and on an operator's request), and compute stopping under it.

const root = await mkdtemp(join(tmpdir(), 'session-image-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(join(root, 'snapshots'), { count: 40, dim: 8 })
const s3 = await startS3Fake(join(root, 's3'))
t.teardown(() => s3.close())
await s3.putFile('receipts/v1.tar.gz', fixture.tarGzPath)
const archive = `s3://${s3.bucket}/receipts/v1.tar.gz`
const series = `s3://${s3.bucket}/receipts/v1`
const snapshotRoot = join(root, 'snapshots')

type Lease = {
  id: string
  token: string
  status: string
  sessionToken: string | null
  session: { id: string; status: string; snapshot: string; endpoint: { host: string; port: number; url: string } | null; savedSnapshot: string | null; progress: { text: string; percent?: number } | null; stopReason: string | null; leaseCount: number }
}

async function acquire(ctx: TestApp, body: Record<string, unknown>): Promise<Lease> {
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: body })
  if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
  return res.json()
}

const getLease = async (ctx: TestApp, id: string): Promise<Lease> => (await ctx.app.inject({ method: 'GET', url: `/v1/leases/${id}` })).json()

/** Reconciler passes (real time: real agents are working) until the session is in `status`. */
async function reconcileUntil(ctx: TestApp, sessionId: string, status: string, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await ctx.workers.reconciler.reconcileOnce()
    const s = await ctx.services.sessions.get(sessionId)
    if (s.status === status) return s
    if (Date.now() > deadline) throw new Error(`session ${sessionId} is ${s.status}${s.error ? ` (${s.error})` : ''}, not ${status}, after ${timeoutMs} ms`)
    await sleep(150)
  }
}

const eventsOf = async (ctx: TestApp, sessionId: string) => ctx.db.sessionEvent.findMany({ where: { sessionId }, orderBy: { id: 'asc' } })

t.test('direct access: a token per lease, checked by the agent, ending with the lease; the proxy keeps its own credential', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot, s3, listen: true })
  const lease = await acquire(ctx, { snapshot: archive, collection: fixture.collection })
  t.equal(lease.sessionToken, null, 'no session token before the session serves')
  await reconcileUntilSettled(ctx, lease.session.id)
  // The confirmer runs from the moment the agent answers (STARTING); its calls carry the
  // control plane's time, on which the agent judges lease expiries.
  t.equal(await ctx.workers.confirmer.confirmSessions(), 1, 'the agent answers its confirmation')
  const other = await acquire(ctx, { snapshot: archive, collection: fixture.collection })
  t.equal(other.session.id, lease.session.id, 'a second lease shares the session')
  const view = await getLease(ctx, lease.id)
  const otherToken = (await getLease(ctx, other.id)).sessionToken!
  t.match(view.sessionToken, /^cld_/, 'the lease holder gets a direct-access token with the endpoint')
  t.not(view.sessionToken, otherToken, 'each lease its own')
  const endpoint = view.session.endpoint!
  const direct = (token: string) => request(`${endpoint.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': token } }).then(async (res) => ({ status: res.statusCode, code: ((await res.body.json()) as { code?: string }).code }))
  for (const [name, headers] of [['no token', {}], ['the lease token', { 'x-chroma-token': lease.token }]] as const) {
    const res = await request(`${endpoint.url}/api/v2/heartbeat`, { headers })
    t.equal(res.statusCode, 401, `the session itself refuses ${name}`)
    t.equal(((await res.body.json()) as { code: string }).code, 'session_token_required')
  }
  const collection = await chromaClient(endpoint.url, view.sessionToken!).getCollection({ name: fixture.collection })
  t.equal(await collection.count(), fixture.count, 'a direct holder with its lease token reads the session')
  const forged = view.sessionToken!.replace(/\.[^.]+$/, '.' + 'A'.repeat(43))
  t.same(await direct(forged), { status: 401, code: 'invalid_token' }, 'a token not signed with the session key is refused')
  const proxied = await request(`${ctx.url}/v1/sessions/${lease.session.id}/chroma/api/v2/heartbeat`, { headers: { 'x-chroma-token': lease.token } })
  t.equal(proxied.statusCode, 200, 'the proxy uses its own credential upstream')
  await proxied.body.dump()

  // A renewal moves the expiry: the lease view shows the new token.
  ;(ctx.clock as ManualClock).advance(5)
  const renewed = await ctx.app.inject({ method: 'POST', url: `/v1/leases/${lease.id}/renew`, payload: {} })
  t.equal(renewed.statusCode, 200, renewed.body)
  const renewedToken = (await getLease(ctx, lease.id)).sessionToken!
  t.not(renewedToken, view.sessionToken, 'a renewed lease has a token for its new expiry')
  t.equal((await direct(renewedToken)).status, 200, 'which the agent accepts')

  // Expired: a token whose expiry has passed on the control plane's clock is refused by the
  // agent alone (a minute ago: the agent's clock follows the control plane's to within seconds).
  const s = await ctx.services.sessions.get(lease.session.id)
  const expired = ctx.services.tokens.directToken(s.id, s.generation, other.id, new Date(ctx.clock.now().getTime() - 60_000))
  t.same(await direct(expired), { status: 401, code: 'lease_expired' }, 'an expired token is refused')

  // Released: the agent is told within a pass of the lease revoker; the other lease goes on.
  await ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })
  t.equal((await getLease(ctx, lease.id)).sessionToken, null, 'a released lease shows no session token')
  const releasedAt = Date.now()
  let answer = await direct(renewedToken)
  while (answer.status === 200 && Date.now() - releasedAt < 10_000) {
    await ctx.workers.revoker.revokeOnce()
    answer = await direct(renewedToken)
  }
  t.same(answer, { status: 401, code: 'lease_ended' }, `the released lease's token is refused (after ${Date.now() - releasedAt} ms)`)
  t.same(await direct(view.sessionToken!), { status: 401, code: 'lease_ended' }, 'and so is its token from before the renewal')
  t.equal((await direct(otherToken)).status, 200, "the other lease's token still opens the session")
  t.equal(await ctx.workers.revoker.revokeOnce(), 0, 'revoked once: nothing sent again')
})

t.test("the dead man's switch, fed by the agent confirmer", async (t) => {
  const clock = new ManualClock()
  // A switch of 6 s confirmed every 0.5 s (plus a pass): seconds of margin for a loaded machine.
  const ctx = await buildTestApp(t, { snapshotRoot, clock, deadManSeconds: 6, confirmIntervalSeconds: 0.5 })
  const lease = await acquire(ctx, { snapshot: `file://${fixture.tarPath}` })
  await reconcileUntilSettled(ctx, lease.session.id)

  // Alive: the workers run for longer than the switch's delay (real time: the agent's
  // switch runs on it), the manual clock kept in step; the confirmer confirms when due.
  const until = Date.now() + 9_000
  let confirmed = 0
  for (let last = Date.now(); Date.now() < until; ) {
    await ctx.workers.reconciler.reconcileOnce()
    confirmed += await ctx.workers.confirmer.confirmSessions()
    await sleep(200)
    clock.advance((Date.now() - last) / 1000) // however long the passes took on a loaded machine
    last = Date.now()
  }
  t.ok(confirmed >= 4, `confirmed about every 0.5 s: ${confirmed} times in 9 s`)
  t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY', 'not fired while the control plane confirms')
  t.equal((await ctx.launcher.listRunning()).length, 1, 'the agent still runs')

  // Gone: nothing confirms any more; the agent stops its own session.
  while ((await ctx.launcher.listRunning()).length > 0) await sleep(200)
  const s = await reconcileUntil(ctx, lease.session.id, 'STOPPED')
  t.equal(s.status, 'STOPPED', 'a clean stop, not a failure')
  const stopped = (await eventsOf(ctx, lease.session.id)).find((e) => e.type === 'stopped')
  t.match(stopped?.reason, /has not confirmed the session for 6s \(dead man's switch\)/)
})

t.test('restore progress shows on the lease and the session', async (t) => {
  // An S3 that sends half of the archive and then nothing: the restore stays at about 50%.
  const stall = await startStallingS3(s3.endpoint, (method, path) => method === 'GET' && path.split('?')[0]!.endsWith('/receipts/v1.tar.gz'), 'half-response')
  t.teardown(() => stall.close())
  const ctx = await buildTestApp(t, { snapshotRoot, s3: { ...s3, endpoint: stall.endpoint, env: { ...s3.env, S3_ENDPOINT: stall.endpoint } } })
  const lease = await acquire(ctx, { snapshot: archive })
  const deadline = Date.now() + 30_000
  let view = await getLease(ctx, lease.id)
  while (!(view.session.progress?.percent && view.session.progress.percent >= 40) && Date.now() < deadline) {
    await ctx.workers.reconciler.reconcileOnce()
    await sleep(150)
    view = await getLease(ctx, lease.id)
  }
  t.equal(view.session.status, 'STARTING')
  t.match(view.session.progress, { phase: 'restoring', text: /^restoring \d+%$/, totalBytes: Number })
  t.ok(view.session.progress!.percent! >= 40 && view.session.progress!.percent! < 100, `${view.session.progress?.text}`)
  const session = (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${lease.session.id}` })).json()
  t.equal(session.progress.text, view.session.progress!.text, 'the session shows it too')

  // An operator stops it mid-restore: the agent stops cleanly.
  await ctx.app.inject({ method: 'DELETE', url: `/v1/sessions/${lease.session.id}?force=true` })
  t.equal((await reconcileUntil(ctx, lease.session.id, 'STOPPED')).status, 'STOPPED')
})

t.test('save-back on release: write, release, acquire the new version, read the write', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot, s3, listen: true })
  const { port } = new URL(ctx.url)
  const lease = await acquire(ctx, { snapshot: archive, collection: fixture.collection, mode: 'exclusive', saveOnRelease: true })
  await reconcileUntilSettled(ctx, lease.session.id)
  const viaProxy = (token: string) => chromaClient(`http://127.0.0.1:${port}`, token).getCollection({ name: fixture.collection })
  await (await viaProxy(lease.token)).add({ ids: ['w-1'], embeddings: [fixture.vector(1).map((x) => -x)], documents: ['receipt written: soup 4.20'] })

  await ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })
  const stopped = await reconcileUntil(ctx, lease.session.id, 'STOPPED')
  t.equal(stopped.stopReason, 'saved', 'stopped once saved')
  const released = await getLease(ctx, lease.id)
  t.match(released.session.savedSnapshot, new RegExp(`^s3://${s3.bucket}/receipts/v1/versions/\\d{8}T\\d{6}Z-[0-9a-f]{8}\\.tar\\.gz$`), 'the lease shows the new version')
  const types = (await eventsOf(ctx, lease.session.id)).map((e) => e.type)
  t.match(types, ['created', 'lease_attached', 'launching', 'launched', 'running', 'ready', 'lease_released', 'saving', 'saved', 'stopping', 'stopped'])

  const next = await acquire(ctx, { snapshot: series, collection: fixture.collection, mode: 'exclusive' })
  t.equal(next.session.snapshot, released.session.savedSnapshot, 'the series launches pinned to the version latest names')
  t.equal((await reconcileUntilSettled(ctx, next.session.id)).status, 'READY')
  const got = await (await viaProxy(next.token)).get({ ids: ['w-1'] })
  t.same(got.documents, ['receipt written: soup 4.20'], 'the write is in the new version')
})

t.test("save-back on an operator's request, and what cannot be saved", async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot, s3 })
  const lease = await acquire(ctx, { snapshot: archive, collection: fixture.collection })
  await reconcileUntilSettled(ctx, lease.session.id)
  const saved = await ctx.app.inject({ method: 'POST', url: `/v1/sessions/${lease.session.id}/save` })
  t.equal(saved.statusCode, 200, saved.body)
  t.match(saved.json(), { status: 'READY', savedSnapshot: /\/receipts\/v1\/versions\/.+\.tar\.gz$/, savedAt: String })
  t.equal((await getLease(ctx, lease.id)).session.savedSnapshot, saved.json().savedSnapshot, 'shown on the lease')
  t.equal((await reconcileUntilSettled(ctx, lease.session.id)).status, 'READY', 'still serving after the save')

  const local = await acquire(ctx, { snapshot: `file://${fixture.tarPath}` })
  await reconcileUntilSettled(ctx, local.session.id)
  const cases: Array<[{ method: 'POST'; url: string; payload?: Record<string, unknown> }, number, string]> = [
    [{ method: 'POST', url: `/v1/sessions/${local.session.id}/save` }, 409, 'save_unsupported'],
    [{ method: 'POST', url: '/v1/sessions/00000000-0000-4000-8000-000000000000/save' }, 404, 'session_not_found'],
    [{ method: 'POST', url: '/v1/leases', payload: { snapshot: archive, saveOnRelease: true } }, 400, 'save_needs_exclusive'],
    [{ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}`, mode: 'exclusive', saveOnRelease: true } }, 422, 'save_unsupported'],
    [{ method: 'POST', url: '/v1/leases', payload: { snapshot: archive, mode: 'exclusive', saveOnRelease: 'yes' } }, 400, 'validation_failed'],
  ]
  for (const [req, status, code] of cases) {
    const res = await ctx.app.inject(req)
    t.equal(res.statusCode, status, `${req.method} ${req.url} ${JSON.stringify(req.payload ?? '')}`)
    t.equal(res.json().code, code)
    t.match(res.headers['content-type'], 'application/problem+json')
  }
})

t.test("the session token goes to the lease's own holder only, not to operators reading it", async (t) => {
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.healthy = true
  const client = 'client-key-0123456789abcdef'
  const operator = 'operator-key-0123456789abcdef'
  const ctx = await buildTestApp(t, { launcher, snapshotRoot, apiKeys: [{ role: 'client', key: client }, { role: 'operator', key: operator }] })
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', headers: { 'x-api-key': client }, payload: { snapshot: `file://${fixture.tarPath}` } })
  const lease = res.json() as Lease
  launcher.states.set(lease.session.id, chroma.running())
  await reconcileUntil(ctx, lease.session.id, 'READY')
  const as = async (key: string, url: string) => (await ctx.app.inject({ method: 'GET', url, headers: { 'x-api-key': key } })).json()
  t.match((await as(client, `/v1/leases/${lease.id}`)).sessionToken, /^cld_/, 'the holder reads it')
  t.equal((await as(operator, `/v1/leases/${lease.id}`)).sessionToken, null, 'an operator reading the lease does not')
  t.same((await as(operator, '/v1/leases')).leases.map((l: Lease) => l.sessionToken), [null], 'nor listing leases')
})

t.test('a failed save on release is retried with backoff; the session fails only after the third failure', async (t) => {
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.healthy = true
  const ctx = await buildTestApp(t, { launcher, snapshotRoot, s3 })
  const clock = ctx.clock as ManualClock
  /** One pass; waits for the save it may start to finish and its outcome to be recorded. */
  const saveCallsAfterPass = async (sessionId: string) => {
    await ctx.workers.reconciler.reconcileOnce()
    await sleep(20)
    for (let i = 0; i < 250 && ctx.services.saveBack.isSaving({ id: sessionId, generation: 1 }); i++) await sleep(20)
    return chroma.saveCalls
  }
  const released = async (saveFailures: number) => {
    chroma.saveCalls = 0
    chroma.saveFailures = saveFailures
    const lease = await acquire(ctx, { snapshot: archive, collection: fixture.collection, mode: 'exclusive', saveOnRelease: true })
    launcher.states.set(lease.session.id, chroma.running())
    await reconcileUntil(ctx, lease.session.id, 'READY')
    t.equal((await ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })).statusCode, 200)
    return lease.session.id
  }

  // S3 is back after one failure: the second attempt saves, and the session stops as saved.
  const recovered = await released(1)
  t.equal(await saveCallsAfterPass(recovered), 1)
  t.equal((await ctx.services.sessions.get(recovered)).status, 'READY', 'not failed after one failed save')
  t.equal(await saveCallsAfterPass(recovered), 1, 'no retry before the backoff')
  clock.advance(31)
  t.equal(await saveCallsAfterPass(recovered), 2, 'retried after 30 s')
  let saved = await ctx.services.sessions.get(recovered)
  for (let i = 0; i < 250 && saved.stopReason === null; i++, await sleep(20)) saved = await ctx.services.sessions.get(recovered)
  t.match(saved.savedSnapshot, /versions\/.+\.tar\.gz$/)
  t.equal(saved.stopReason, 'saved')

  // It never comes back: three attempts (30 s, then 60 s apart), then FAILED with the reason.
  const lost = await released(100)
  t.equal(await saveCallsAfterPass(lost), 1)
  clock.advance(31)
  t.equal(await saveCallsAfterPass(lost), 2)
  clock.advance(31)
  t.equal(await saveCallsAfterPass(lost), 2, 'the second wait is 60 s')
  clock.advance(30)
  t.equal(await saveCallsAfterPass(lost), 3)
  await ctx.workers.reconciler.reconcileOnce()
  const failed = await ctx.services.sessions.get(lost)
  t.equal(failed.status, 'FAILED')
  t.match(failed.error, /save on release failed 3 times: .*ECONNREFUSED/)
})

t.test('compute stopping under a session (scale-in, a Spot notice): DRAINING, then STOPPED', async (t) => {
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.healthy = true
  const ctx = await buildTestApp(t, { launcher, snapshotRoot })
  const lease = await acquire(ctx, { snapshot: `file://${fixture.tarPath}` })
  launcher.states.set(lease.session.id, chroma.running())
  await reconcileUntil(ctx, lease.session.id, 'READY')

  launcher.states.set(lease.session.id, { state: 'running', host: '127.0.0.1', port: chroma.port, detail: 'stopping', stopping: true })
  const draining = await reconcileUntil(ctx, lease.session.id, 'DRAINING')
  t.equal(draining.stopReason, 'interrupted')
  t.match((await eventsOf(ctx, lease.session.id)).at(-1), { type: 'draining', reason: 'compute_stopping' })
  const other = await acquire(ctx, { snapshot: `file://${fixture.tarPath}` })
  t.not(other.session.id, lease.session.id, 'no new lease attaches to it')
  t.equal((await getLease(ctx, lease.id)).session.leaseCount, 1, 'its own lease still holds it')

  launcher.states.set(lease.session.id, { state: 'stopped', reason: 'the session agent exited: stopped by SIGTERM', clean: true })
  const stopped = await reconcileUntil(ctx, lease.session.id, 'STOPPED')
  t.equal(stopped.error, null, 'stopped, not failed')
  t.match(await getLease(ctx, lease.id), { status: 'ended', endReason: 'session_ended' }, 'its lease ended with it, and says why')
})

t.test('SIGTERM to a saveOnRelease session (scale-in, a Spot notice): it saves first, the version is recorded, STOPPED', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot, s3, listen: true })
  const { port } = new URL(ctx.url)
  const lease = await acquire(ctx, { snapshot: series, collection: fixture.collection, mode: 'exclusive', saveOnRelease: true })
  const ready = await reconcileUntilSettled(ctx, lease.session.id)
  const viaProxy = (token: string) => chromaClient(`http://127.0.0.1:${port}`, token).getCollection({ name: fixture.collection })
  await (await viaProxy(lease.token)).add({ ids: ['w-2'], embeddings: [fixture.vector(2).map((x) => -x)], documents: ['receipt written: bread 2.40'] })

  process.kill(Number(ready.launchRef), 'SIGTERM') // not the control plane's stop
  const stopped = await reconcileUntil(ctx, lease.session.id, 'STOPPED')
  t.equal(stopped.error, null, 'stopped, not failed')
  t.match(stopped.savedSnapshot, /\/receipts\/v1\/versions\/.+\.tar\.gz$/, 'the version saved on the way out is on the session')
  t.match((await eventsOf(ctx, lease.session.id)).find((e) => e.type === 'saved'), { reason: 'stop', detail: { snapshot: stopped.savedSnapshot, sha256: /^[0-9a-f]{64}$/ } })

  const next = await acquire(ctx, { snapshot: series, collection: fixture.collection, mode: 'exclusive' })
  t.equal(next.session.snapshot, stopped.savedSnapshot, 'latest names it')
  await reconcileUntilSettled(ctx, next.session.id)
  t.same((await (await viaProxy(next.token)).get({ ids: ['w-2'] })).documents, ['receipt written: bread 2.40'])
})
