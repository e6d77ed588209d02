import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { get as httpGet } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { ManualClock } from '../src/services/clock.ts'
import type { Metrics } from '../src/services/metrics.ts'
import { buildTestApp, reconcileUntilSettled, type TestApp } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// Requests held through a cold start (issue 14, item 3): a proxied request or a JSON query
// for a session that is still starting waits for READY instead of a 409. Real app over
// real HTTP, real Postgres, real agents and Chroma from the process launcher; the
// workers do not run, so a session stays PENDING or STARTING until the test runs a
// reconciler pass.

const root = await mkdtemp(join(tmpdir(), 'request-hold-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(join(root, 'receipts'), { count: 20, dim: 4 })
const corrupt = join(root, 'corrupt.tar')
await writeFile(corrupt, 'this is not a tar archive\n'.repeat(64))
const CHROMA_DB = '/api/v2/tenants/default_tenant/databases/default_database'

/** A lease on a new (exclusive) session, left PENDING: nothing launches it until a reconciler pass. */
async function pendingLease(ctx: TestApp, snapshot = `file://${fixture.dir}`) {
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, mode: 'exclusive' } })
  if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
  const lease = res.json() as { id: string; token: string; session: { id: string; status: string } }
  return lease
}

/** Runs one reconciler pass, which launches a PENDING session: it is STARTING until Chroma answers and a later pass sees it. */
async function launch(ctx: TestApp, sessionId: string) {
  await ctx.workers.reconciler.reconcileOnce()
  return (await ctx.services.sessions.get(sessionId)).status
}

async function gaugeValue(metrics: Metrics): Promise<number> {
  return (await metrics.requestsHeld.get()).values.reduce((n, v) => n + v.value, 0)
}

async function holdCount(metrics: Metrics, outcome: string): Promise<number> {
  const { values } = await metrics.holdDuration.get()
  return values.filter((v) => v.metricName?.endsWith('_count') && v.labels.outcome === outcome).reduce((n, v) => n + v.value, 0)
}

/** Polls until `predicate` holds, or fails the wait after `timeoutMs` (margins for a loaded 2-core machine). */
async function until(what: string, predicate: () => Promise<boolean> | boolean, timeoutMs = 30_000) {
  for (const deadline = Date.now() + timeoutMs; !(await predicate()); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** An HTTP call whose answer is read in full, remembering whether it has arrived yet. */
function call(url: string, options: Parameters<typeof request>[1] = {}) {
  const answer = { done: false }
  const promise = request(url, options).then(async (res) => {
    const text = await res.body.text()
    answer.done = true
    return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) as Record<string, any> }
  })
  return Object.assign(answer, { promise })
}

t.test('default holding: requests for a starting session are served once it is READY', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot: root, clock: new ManualClock(Date.now()), listen: true, hold: { holdSeconds: 50, maxPerSession: 3 } })
  const metrics = ctx.services.metrics

  t.test('both proxy routes and the query route; the bound answers 503 with Retry-After', async (t) => {
    const lease = await pendingLease(ctx)
    const sessionId = lease.session.id
    t.equal(await launch(ctx, sessionId), 'STARTING', 'launched, not yet READY')
    const token = { 'x-chroma-token': lease.token }
    const held = [
      // Chroma's own API as official clients call it, with a body: created once forwarded.
      call(`${ctx.url}${CHROMA_DB}/collections`, {
        method: 'POST',
        headers: { ...token, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'made-while-held', get_or_create: true }),
      }),
      // The session-path proxy, for plain HTTP callers.
      call(`${ctx.url}/v1/sessions/${sessionId}/chroma${CHROMA_DB}/collections/${fixture.collection}`, { headers: token }),
      // The JSON query route.
      call(`${ctx.url}/v1/sessions/${sessionId}/query`, {
        method: 'POST',
        headers: { authorization: `Bearer ${lease.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ collection: fixture.collection, queryEmbeddings: [fixture.vector(3)], nResults: 1 }),
      }),
    ]
    await until('three held requests', async () => (await gaugeValue(metrics)) === 3)

    const over = await call(`${ctx.url}/api/v2/heartbeat`, { headers: token }).promise
    t.equal(over.status, 503, 'a fourth is not held')
    t.equal(over.json().code, 'too_many_held_requests')
    t.match(over.headers['content-type'], /application\/problem\+json/)
    t.ok(Number(over.headers['retry-after']) > 0, `Retry-After: ${over.headers['retry-after']}`)
    t.equal(over.json().sessionStatus, 'STARTING')
    t.notOk(held.some((h) => h.done), 'the held requests are still waiting')

    t.equal((await reconcileUntilSettled(ctx, sessionId)).status, 'READY')
    const [created, collection, queried] = await Promise.all(held.map((h) => h.promise))
    t.equal(created!.status, 200, created!.text)
    t.equal(created!.json().name, 'made-while-held', 'the held body reached Chroma')
    t.equal(collection!.status, 200, collection!.text)
    t.equal(collection!.json().name, fixture.collection)
    t.equal(queried!.status, 200, queried!.text)
    t.same(queried!.json().ids, [['r-3']], 'the held query answered')
    t.equal(await gaugeValue(metrics), 0, 'none held any more')
    t.equal(await holdCount(metrics, 'served'), 3, 'counted as served')
    t.equal(await holdCount(metrics, 'rejected'), 1, 'the one over the bound counted as rejected')

    const after = await call(`${ctx.url}/api/v2/heartbeat`, { headers: token }).promise
    t.equal(after.status, 200, 'and the session serves from then on')
  })

  t.test('a session that fails while requests are held answers each with its failure', async (t) => {
    const lease = await pendingLease(ctx, `file://${corrupt}`)
    const sessionId = lease.session.id
    const token = { 'x-chroma-token': lease.token }
    const held = [
      call(`${ctx.url}/api/v2/heartbeat`, { headers: token }),
      call(`${ctx.url}/v1/sessions/${sessionId}/chroma/api/v2/heartbeat`, { headers: token }),
      call(`${ctx.url}/v1/sessions/${sessionId}/query`, {
        method: 'POST',
        headers: { ...token, 'content-type': 'application/json' },
        body: JSON.stringify({ collection: fixture.collection, queryEmbeddings: [fixture.vector(3)], nResults: 1 }),
      }),
    ]
    await until('three held requests', async () => (await gaugeValue(metrics)) === 3)
    t.equal((await reconcileUntilSettled(ctx, sessionId)).status, 'FAILED')
    const session = (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${sessionId}` })).json()
    for (const answer of await Promise.all(held.map((h) => h.promise))) {
      t.equal(answer.status, 502, answer.text)
      t.match(answer.headers['content-type'], /application\/problem\+json/)
      t.match(answer.json(), { code: 'session_failed', sessionId, leaseId: lease.id, sessionError: session.error }, "the session's failure, as a long-poll gets it")
    }
    t.equal(await holdCount(metrics, 'failed'), 3)
  })

  t.test('a client that hangs up is no longer held', async (t) => {
    const lease = await pendingLease(ctx)
    // Its own connection (no pool that might open a spare one), closed mid-request.
    const req = httpGet(`${ctx.url}/api/v2/heartbeat`, { agent: false, headers: { 'x-chroma-token': lease.token } })
    const failed = new Promise<Error>((resolve) => req.once('error', resolve))
    await until('the request is held', async () => (await gaugeValue(metrics)) === 1)
    req.destroy(new Error('gave up'))
    t.match((await failed).message, 'gave up', 'the client gave up')
    await until('the hold ends with its socket', async () => (await gaugeValue(metrics)) === 0)
    t.equal(await holdCount(metrics, 'abandoned'), 1)
  })
})

t.test('PROXY_HOLD_SECONDS=0 keeps the 409 session_not_ready', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true, hold: { holdSeconds: 0, maxPerSession: 64 } })
  const lease = await pendingLease(ctx)
  for (const [url, init] of [
    [`${ctx.url}/api/v2/heartbeat`, {}],
    [`${ctx.url}/v1/sessions/${lease.session.id}/chroma/api/v2/heartbeat`, {}],
    [`${ctx.url}/v1/sessions/${lease.session.id}/query`, { method: 'POST', body: JSON.stringify({ collection: 'c', queryEmbeddings: [[1, 2, 3, 4]] }), headers: { 'content-type': 'application/json' } }],
  ] as const) {
    const res = await call(url, { ...init, headers: { ...(init as { headers?: Record<string, string> }).headers, 'x-chroma-token': lease.token } }).promise
    t.equal(res.status, 409, url)
    t.match(res.json(), { code: 'session_not_ready', sessionStatus: 'PENDING' }, url)
  }
  t.equal(await gaugeValue(ctx.services.metrics), 0, 'nothing was held')
})

t.test('a hold that runs out answers 503 session_starting with Retry-After', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true, hold: { holdSeconds: 1, maxPerSession: 64 } })
  const lease = await pendingLease(ctx)
  const [proxied, queried] = await Promise.all([
    call(`${ctx.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': lease.token } }).promise,
    call(`${ctx.url}/v1/sessions/${lease.session.id}/query`, {
      method: 'POST',
      headers: { 'x-chroma-token': lease.token, 'content-type': 'application/json' },
      body: JSON.stringify({ collection: 'c', queryEmbeddings: [[1, 2, 3, 4]] }),
    }).promise,
  ])
  for (const res of [proxied, queried]) {
    t.equal(res.status, 503, res.text)
    t.match(res.json(), { code: 'session_starting', sessionId: lease.session.id, sessionStatus: 'PENDING' })
    t.match(res.json().detail, /PROXY_HOLD_SECONDS/)
    t.ok(Number(res.headers['retry-after']) > 0, `Retry-After: ${res.headers['retry-after']}`)
  }
  t.equal(await holdCount(ctx.services.metrics, 'timeout'), 2)
  const still = (await ctx.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).json()
  t.equal(still.status, 'active', 'the lease is untouched')
})

t.test('closing the app lets held requests go at once, asking them to retry', async (t) => {
  const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true })
  const lease = await pendingLease(ctx)
  const held = call(`${ctx.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': lease.token } })
  await until('the request is held', async () => (await gaugeValue(ctx.services.metrics)) === 1)
  const closed = ctx.app.close()
  const res = await held.promise
  await closed
  t.equal(res.status, 503)
  t.match(res.json(), { code: 'session_starting' })
  t.match(res.json().detail, /shutting down/)
  t.equal(res.headers['retry-after'], '1')
  t.equal(await holdCount(ctx.services.metrics, 'closing'), 1)
})
