import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ChromaClient } from 'chromadb'
import { request } from 'undici'
import { Prisma } from '../src/generated/prisma/client.ts'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp, reconcileUntilSettled } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// The proxy, spoken to over real HTTP by the official chromadb client, unmodified:
// it is given the control plane's host and port and the lease token as its token.

const root = await mkdtemp(join(tmpdir(), 'proxy-'))
const fixture = await buildSnapshotFixture(root, { count: 60, dim: 8 })
const clock = new ManualClock(Date.now()) // starts at the real time; the keep-alive statement reads this clock's instant
const PROXY_LIMIT = 1024 * 1024 // under what Chroma itself accepts, so that the limit met is the proxy's
const ctx = await buildTestApp(t, { snapshotRoot: root, clock, listen: true, leaseTtlSeconds: 90, proxyBodyLimitBytes: PROXY_LIMIT })
const { port } = new URL(ctx.url)

async function readyLease(mode: 'shared' | 'exclusive' = 'shared') {
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${fixture.tarPath}`, collection: fixture.collection, mode } })
  const lease = res.json()
  await reconcileUntilSettled(ctx, lease.session.id)
  return lease as { id: string; token: string; session: { id: string } }
}

const a = await readyLease()
const b = await readyLease('exclusive')

t.test('the official chromadb client works through /api/v2 with the lease token', async (t) => {
  const client = new ChromaClient({ host: '127.0.0.1', port: Number(port), ssl: false, headers: { 'x-chroma-token': a.token } })
  t.type(await client.heartbeat(), 'number', 'heartbeat')
  const col = await client.getCollection({ name: fixture.collection, embeddingFunction: undefined })
  t.equal(await col.count(), 60)
  const hits = await col.query({ queryEmbeddings: [fixture.vector(11)], nResults: 2 })
  t.equal(hits.ids[0]![0], 'r-11', 'query')
  await col.add({ ids: ['new-1'], embeddings: [[1, 1, 1, 1, 1, 1, 1, 1]], documents: ['receipt new: tea 3.10'] })
  const got = await col.get({ ids: ['new-1'] })
  t.same(got.documents, ['receipt new: tea 3.10'], 'add then get')
  t.equal(await col.count(), 61)

  const bearer = new ChromaClient({ host: '127.0.0.1', port: Number(port), ssl: false, headers: { authorization: `Bearer ${a.token}` } })
  t.equal(await (await bearer.getCollection({ name: fixture.collection })).count(), 61, 'Authorization: Bearer works too')
})

t.test('a token opens only its own session', async (t) => {
  const viaB = new ChromaClient({ host: '127.0.0.1', port: Number(port), ssl: false, headers: { 'x-chroma-token': b.token } })
  t.equal(await (await viaB.getCollection({ name: fixture.collection })).count(), 60, "b's exclusive session does not see a's write")
  const cross = await request(`${ctx.url}/v1/sessions/${a.session.id}/chroma/api/v2/heartbeat`, { headers: { 'x-chroma-token': b.token } })
  t.equal(cross.statusCode, 403)
  t.equal(((await cross.body.json()) as { code: string }).code, 'wrong_session')
  const own = await request(`${ctx.url}/v1/sessions/${a.session.id}/chroma/api/v2/heartbeat`, { headers: { 'x-chroma-token': a.token } })
  t.equal(own.statusCode, 200, 'the session-path proxy for plain HTTP callers')
  await own.body.dump()
  for (const [name, headers, code] of [
    ['no token', {}, 'lease_token_required'],
    ['unknown token', { 'x-chroma-token': 'clt_nope' }, 'invalid_lease_token'],
    ['an API key is not a lease token', { 'x-api-key': 'whatever' }, 'lease_token_required'],
  ] as const) {
    const res = await request(`${ctx.url}/api/v2/heartbeat`, { headers })
    t.equal(res.statusCode, 401, name)
    t.equal(((await res.body.json()) as { code: string }).code, code, name)
  }
})

t.test('path tricks are refused before anything is forwarded', async (t) => {
  for (const path of [
    `/v1/sessions/${a.session.id}/chroma/api/v2/../../admin`,
    `/v1/sessions/${a.session.id}/chroma/api/v2/%2e%2e/%2e%2e/x`,
    `/v1/sessions/${a.session.id}/chroma/api/v2/collections%2F..%2Fx`,
    `/v1/sessions/${a.session.id}/chroma/openapi.json`,
    `/v1/sessions/${a.session.id}/chroma/api/v1/heartbeat`,
    `/api/v2//heartbeat`,
  ]) {
    const res = await request(`${ctx.url}${path}`, { headers: { 'x-chroma-token': a.token } })
    const body = (await res.body.json()) as { code: string }
    t.equal(res.statusCode, 400, path)
    t.equal(body.code, 'bad_proxy_path', path)
  }
})

t.test('proxied bodies are limited, and released leases stop working at once', async (t) => {
  // A body really sent (Node's fetch, chunked, no Content-Length) one byte past the
  // limit: refused with its problem, read by the client. (test/proxy-clients.test.ts
  // covers Content-Length, the API's limit, curl and a session that dies or hangs.)
  const limit = PROXY_LIMIT
  let sent = 0
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent > limit) return controller.close()
      const n = Math.min(64 * 1024, limit + 1 - sent)
      sent += n
      controller.enqueue(new Uint8Array(n).fill(32))
    },
  })
  const big = await fetch(`${ctx.url}/api/v2/tenants/default_tenant/databases/default_database/collections`, { method: 'POST', headers: { 'x-chroma-token': a.token, 'content-type': 'application/json' }, body, duplex: 'half' } as RequestInit)
  t.equal(big.status, 413)
  t.equal(((await big.json()) as { code: string }).code, 'payload_too_large')

  const c = await readyLease()
  const ok = await request(`${ctx.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': c.token } })
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  await ctx.app.inject({ method: 'DELETE', url: `/v1/leases/${c.id}` })
  // The route cache drops it on the change notification: poll for the NOTIFY round trip.
  let status = 200
  for (const deadline = Date.now() + 15_000; status === 200 && Date.now() < deadline; ) {
    const res = await request(`${ctx.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': c.token } })
    status = res.statusCode
    await res.body.dump()
    if (status === 200) await new Promise((r) => setTimeout(r, 50))
  }
  t.equal(status, 401, 'a released lease no longer opens the session')
})

t.test('proxied use keeps the lease alive with at most one write per third of its TTL', async (t) => {
  const d = await readyLease()
  const expiry = async () => Date.parse((await ctx.app.inject({ method: 'GET', url: `/v1/leases/${d.id}` })).json().expiresAt)
  const dbNow = async () => (await ctx.sql.rows<{ now: Date }>(Prisma.sql`SELECT now() AS now`))[0]!.now.getTime()
  const first = await expiry()
  const hit = async () => {
    const res = await request(`${ctx.url}/api/v2/heartbeat`, { headers: { 'x-chroma-token': d.token } })
    await res.body.dump()
    return res.statusCode
  }
  t.equal(await hit(), 200)
  clock.advance(20)
  t.equal(await hit(), 200)
  await ctx.services.router.flush()
  t.equal(await expiry(), first, 'no renewal within the first third of the TTL')
  clock.advance(20)
  const before = await dbNow()
  t.equal(await hit(), 200)
  await ctx.services.router.flush()
  const after = await dbNow()
  const renewed = await expiry()
  t.ok(renewed > first, 'renewed once a third of the TTL had passed')
  t.equal(renewed, clock.now().getTime() + 90_000, "to the clock's now (the time the SQL reads) plus the TTL")
  clock.advance((renewed - clock.now().getTime()) / 1000 - 1)
  t.equal(await hit(), 200, 'alive until the expiry the write returned')
  await ctx.services.router.flush()
  clock.advance(91)
  t.equal(await hit(), 401, 'an unused lease expires')
})

t.test('the JSON query route trims results to the size limit and says so', async (t) => {
  const e = await readyLease() // the clock moved past a's TTL in the test before
  const res = await ctx.app.inject({
    method: 'POST',
    url: `/v1/sessions/${e.session.id}/query`,
    headers: { authorization: `Bearer ${e.token}` },
    payload: { collection: fixture.collection, queryEmbeddings: [fixture.vector(1), fixture.vector(2)], nResults: 50, include: ['documents', 'embeddings', 'distances'], maxResultBytes: 4096 },
  })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.truncated, true)
  t.ok(res.rawPayload.length <= 4096, `answer is ${res.rawPayload.length} bytes`)
  t.equal(body.ids[0][0], 'r-1', 'the nearest results are the ones kept')
  t.equal(body.total, 100)
  t.ok(body.returned < 100 && body.returned === body.ids.flat().length)
  t.match(body.note, /trimmed to \d+ of 100 results/)

  const missing = await ctx.app.inject({
    method: 'POST',
    url: `/v1/sessions/${e.session.id}/query`,
    headers: { 'x-chroma-token': e.token },
    payload: { collection: 'nope', queryEmbeddings: [fixture.vector(1)] },
  })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'collection_not_found')
  const wrongDim = await ctx.app.inject({
    method: 'POST',
    url: `/v1/sessions/${e.session.id}/query`,
    headers: { 'x-chroma-token': e.token },
    payload: { collection: fixture.collection, queryEmbeddings: [[1, 2]] },
  })
  t.equal(wrongDim.statusCode, 400, 'a query Chroma rejects is the caller\'s 4xx')
  t.equal(wrongDim.json().code, 'invalid_query')
})
