import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'

// Lease semantics on a real database. No reconciler runs here, so sessions stay
// PENDING: reference counting, TTLs and idempotency do not depend on Chroma.

const root = await mkdtemp(join(tmpdir(), 'snapshots-'))
await mkdir(join(root, 'receipts'))
await mkdir(join(root, 'invoices'))
const receipts = `file://${root}/receipts`
const invoices = `file://${root}/invoices`

async function setup(tt: Parameters<typeof buildTestApp>[0], opts: Parameters<typeof buildTestApp>[1] = {}) {
  const clock = new ManualClock()
  const ctx = await buildTestApp(tt, { snapshotRoot: root, clock, ...opts })
  const acquire = (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: body, headers })
  return { ...ctx, clock, acquire }
}

t.test('shared acquires reuse one session and count their leases', async (t) => {
  const { acquire, app } = await setup(t)
  const first = await acquire({ snapshot: receipts, holder: 'wf-1' })
  t.equal(first.statusCode, 201)
  const a = first.json()
  t.equal(a.status, 'active')
  t.match(a.token, /^clt_/)
  t.equal(a.session.status, 'PENDING')
  t.equal(a.session.leaseCount, 1)
  t.equal(a.session.endpoint, null)
  t.match(a.session.proxyUrl, new RegExp(`/v1/sessions/${a.session.id}/chroma$`))

  const b = (await acquire({ snapshot: receipts })).json()
  t.equal(b.session.id, a.session.id, 'same pool key, same session')
  t.equal(b.session.leaseCount, 2)
  t.not(b.token, a.token)

  const other = (await acquire({ snapshot: receipts, collection: 'x' })).json()
  t.equal(other.session.id, a.session.id, 'naming a collection picks no other session: one per snapshot')
  const exclusive = (await acquire({ snapshot: receipts, mode: 'exclusive' })).json()
  t.not(exclusive.session.id, a.session.id, 'exclusive leases get a private session')
  t.equal(exclusive.session.mode, 'exclusive')

  const read = await app.inject({ method: 'GET', url: `/v1/leases/${a.id}` })
  t.equal(read.statusCode, 200)
  t.equal(read.json().token, undefined, 'the token is shown at creation only')
  t.equal(read.json().session.leaseCount, 3)
})

t.test('release is idempotent and a released lease stops counting', async (t) => {
  const { acquire, app } = await setup(t)
  const a = (await acquire({ snapshot: receipts })).json()
  const b = (await acquire({ snapshot: receipts })).json()
  const r1 = await app.inject({ method: 'DELETE', url: `/v1/leases/${a.id}` })
  t.equal(r1.statusCode, 200)
  t.equal(r1.json().status, 'released')
  t.equal(r1.json().session.leaseCount, 1)
  const r2 = await app.inject({ method: 'DELETE', url: `/v1/leases/${a.id}` })
  t.equal(r2.statusCode, 200, 'releasing twice is fine')
  t.equal(r2.json().status, 'released')
  t.equal(r2.json().session.leaseCount, 1, 'and does not count twice')
  const renew = await app.inject({ method: 'POST', url: `/v1/leases/${a.id}/renew`, payload: {} })
  t.equal(renew.statusCode, 410, 'a released lease cannot be renewed')
  t.equal(renew.json().code, 'lease_ended')
  t.equal((await app.inject({ method: 'GET', url: `/v1/leases/${b.id}` })).json().status, 'active')
})

t.test('leases expire by the clock, renew extends them, expired ones stay expired', async (t) => {
  const { acquire, app, clock, workers } = await setup(t)
  const a = (await acquire({ snapshot: receipts, ttlSeconds: 60 })).json()
  clock.advance(50)
  const renewed = await app.inject({ method: 'POST', url: `/v1/leases/${a.id}/renew`, payload: { ttlSeconds: 120 } })
  t.equal(renewed.statusCode, 200)
  t.equal(Date.parse(renewed.json().expiresAt) - clock.now().getTime(), 120_000)
  clock.advance(119)
  t.equal((await app.inject({ method: 'GET', url: `/v1/leases/${a.id}` })).json().status, 'active')
  clock.advance(2)
  const expired = (await app.inject({ method: 'GET', url: `/v1/leases/${a.id}` })).json()
  t.equal(expired.status, 'expired', 'expired by the clock before any reaper ran')
  t.equal(expired.session.leaseCount, 0, 'an expired lease never counts')
  const late = await app.inject({ method: 'POST', url: `/v1/leases/${a.id}/renew`, payload: {} })
  t.equal(late.statusCode, 410)
  const reaped = await workers.reaper.expireLeases()
  t.equal(reaped, 1, 'the reaper records the expiry')
  t.equal(await workers.reaper.expireLeases(), 0, 'once')
  const events = (await app.inject({ method: 'GET', url: `/v1/sessions/${a.session.id}/events` })).json().events
  t.same(events.map((e: { type: string }) => e.type), ['created', 'lease_attached', 'lease_expired'])
  const released = await app.inject({ method: 'DELETE', url: `/v1/leases/${a.id}` })
  t.equal(released.json().status, 'expired', 'releasing an expired lease keeps it expired')
})

t.test('Idempotency-Key replays the same lease, token included', async (t) => {
  const { acquire, db } = await setup(t)
  const body = { snapshot: receipts, holder: 'arn:aws:states:exec-1' }
  const key = { 'idempotency-key': 'exec-1/acquire' }
  const first = await acquire(body, key)
  const again = await acquire(body, key)
  t.equal(first.statusCode, 201)
  t.equal(again.statusCode, 200)
  t.equal(again.json().id, first.json().id)
  t.equal(again.json().token, first.json().token, 'a retry after a lost response can still use the lease')
  const concurrent = await Promise.all(Array.from({ length: 20 }, () => acquire(body, { 'idempotency-key': 'exec-2' })))
  t.equal(new Set(concurrent.map((r) => r.json().id)).size, 1, 'racing retries get one lease')
  t.same(concurrent.map((r) => r.statusCode).sort(), [...Array(19).fill(200), 201], 'one created it, the rest replayed it')
  const misuse = await acquire({ ...body, holder: 'someone else' }, key)
  t.equal(misuse.statusCode, 422)
  t.equal(misuse.json().code, 'idempotency_key_reused')
  t.equal(await db.lease.count(), 2)
})

t.test('bad input gets a 4xx problem and changes nothing', async (t) => {
  const { app, acquire, db } = await setup(t)
  const cases: Array<[string, Awaited<ReturnType<typeof acquire>>, number, string]> = [
    ['malformed JSON', await app.inject({ method: 'POST', url: '/v1/leases', payload: '{"snapshot":', headers: { 'content-type': 'application/json' } }), 400, 'invalid_json'],
    ['wrong type', await acquire({ snapshot: 42 }), 400, 'validation_failed'],
    ['missing snapshot', await acquire({}), 400, 'validation_failed'],
    ['unknown field', await acquire({ snapshot: receipts, colour: 'red' }), 400, 'validation_failed'],
    ['bad mode', await acquire({ snapshot: receipts, mode: 'sometimes' }), 400, 'validation_failed'],
    ['waitSeconds over 50', await acquire({ snapshot: receipts, waitSeconds: 51 }), 400, 'validation_failed'],
    ['ttl over the server max', await acquire({ snapshot: receipts, ttlSeconds: 10_000_000 }), 400, 'ttl_out_of_range'],
    ['oversized body', await acquire({ snapshot: receipts, holder: 'x'.repeat(2 * 1024 * 1024) }), 413, 'payload_too_large'],
    ['other scheme', await acquire({ snapshot: 'http://example.com/snap.tar' }), 422, 'invalid_snapshot'],
    ['not a URI', await acquire({ snapshot: 'receipts' }), 422, 'invalid_snapshot'],
    ['outside the root', await acquire({ snapshot: 'file:///etc' }), 422, 'snapshot_not_found'],
    ['dot-dot out of the root', await acquire({ snapshot: `file://${root}/receipts/../../../etc` }), 422, 'snapshot_not_found'],
    ['missing file', await acquire({ snapshot: `file://${root}/nope.tar` }), 422, 'snapshot_not_found'],
    ['relative host form', await acquire({ snapshot: 'file://host/x' }), 422, 'invalid_snapshot'],
    ['unknown lease', await app.inject({ method: 'GET', url: '/v1/leases/00000000-0000-4000-8000-000000000000' }), 404, 'lease_not_found'],
    ['non-uuid lease id', await app.inject({ method: 'GET', url: '/v1/leases/abc' }), 400, 'validation_failed'],
    ['unknown session', await app.inject({ method: 'DELETE', url: '/v1/sessions/00000000-0000-4000-8000-000000000000' }), 404, 'session_not_found'],
    ['unknown route', await app.inject({ method: 'GET', url: '/v2/nothing' }), 404, 'route_not_found'],
  ]
  for (const [name, res, status, code] of cases) {
    t.equal(res.statusCode, status, `${name}: status`)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', `${name}: problem+json`)
    t.equal(res.json().code, code, `${name}: code`)
    t.equal(res.json().status, status, `${name}: status in body`)
    t.ok(res.json().detail, `${name}: says what is wrong`)
  }
  t.equal(await db.session.count(), 0, 'no session was created')
  t.equal(await db.lease.count(), 0, 'no lease was created')
})

t.test('API keys: roles, ownership, hashed storage', async (t) => {
  const client = 'client-key-0123456789abcdef'
  const client2 = 'client-key-2-0123456789abcdef'
  const operator = 'operator-key-0123456789abcdef'
  const { acquire, app, db } = await setup(t, {
    apiKeys: [
      { role: 'client', key: client },
      { role: 'client', key: client2 },
      { role: 'operator', key: operator },
    ],
  })
  t.equal((await acquire({ snapshot: receipts })).statusCode, 401, 'no key')
  t.equal((await acquire({ snapshot: receipts }, { 'x-api-key': 'wrong-key-0123456789' })).json().code, 'invalid_api_key')
  const mine = await acquire({ snapshot: receipts }, { 'x-api-key': client })
  t.equal(mine.statusCode, 201, 'x-api-key')
  const bearer = await acquire({ snapshot: invoices }, { authorization: `Bearer ${client}` })
  t.equal(bearer.statusCode, 201, 'Authorization: Bearer')
  const id = mine.json().id
  t.equal((await app.inject({ method: 'GET', url: `/v1/leases/${id}`, headers: { 'x-api-key': client2 } })).statusCode, 404, "another client's lease is invisible")
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/leases/${id}`, headers: { 'x-api-key': client2 } })).statusCode, 404, 'and cannot be released by it')
  const seen = await app.inject({ method: 'GET', url: `/v1/leases/${id}`, headers: { 'x-api-key': operator } })
  t.equal(seen.statusCode, 200, 'operators see every lease')
  t.equal(seen.json().status, 'active', "another client's release attempt left it active")
  t.equal(seen.json().session.leaseCount, 1, 'and counting')
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/leases/00000000-0000-4000-8000-000000000000', headers: { 'x-api-key': operator } })).statusCode, 404, 'releasing an unknown lease is a 404')
  const sessions = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { 'x-api-key': client } })
  t.equal(sessions.statusCode, 403, 'sessions are for operators')
  t.equal(sessions.json().code, 'operator_role_required')
  const list = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { 'x-api-key': operator } })
  t.equal(list.json().sessions.length, 2)
  const listAs = async (key: string, query = '') =>
    (await app.inject({ method: 'GET', url: `/v1/leases${query}`, headers: { 'x-api-key': key } })).json().leases.map((l: { id: string }) => l.id)
  t.same((await listAs(client)).sort(), [id, bearer.json().id].sort(), 'a client lists its own leases')
  t.same(await listAs(client2), [], 'and no one else\'s')
  t.equal((await listAs(operator)).length, 2, 'an operator lists all')
  t.same(await listAs(operator, `?sessionId=${mine.json().session.id}`), [id], 'filtered by session')
  await app.inject({ method: 'DELETE', url: `/v1/leases/${id}`, headers: { 'x-api-key': client } })
  t.same(await listAs(client, '?active=true'), [bearer.json().id], 'only active ones')

  const stored = await db.apiKey.findMany()
  t.equal(stored.length, 3)
  for (const k of stored) t.notOk([client, client2, operator].includes(k.keyHash), 'keys are stored hashed')
  const rows = await db.lease.findMany()
  for (const r of rows) t.notMatch(r.tokenHash, /^clt_/, 'lease tokens are stored hashed')
})
