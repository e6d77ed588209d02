import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import { Prisma } from '../src/generated/prisma/client.ts'
import { ManualClock } from '../src/services/clock.ts'
import { DEMAND_WINDOW_SECONDS, warmPoolTarget } from '../src/services/warm-pool.ts'
import { buildTestApp, untilWarmReady } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// Warm pool hints (POST /v1/warm-pool/hints) on the real app, a real Postgres and the real
// process launcher; time moves on a manual clock. Most cases read the target and the warm
// rows a pass creates, without waiting for agents to start; the claims case starts real ones.

const root = await mkdtemp(join(tmpdir(), 'warm-pool-hints-'))
const fixture = await buildSnapshotFixture(root, { count: 20, dim: 8 })
const snapshot = `file://${fixture.tarPath}`

const CLIENT = 'client-key-hints-a'
const OTHER_CLIENT = 'client-key-hints-b'
const OPERATOR = 'operator-key-hints'

async function setup(tt: Parameters<typeof buildTestApp>[0], opts: Parameters<typeof buildTestApp>[1] = {}) {
  const clock = new ManualClock()
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line))
      done()
    },
  })
  const ctx = await buildTestApp(tt, { snapshotRoot: root, clock, warmPool: { min: 0, max: 10 }, logger: pino({ level: 'info' }, sink), ...opts })
  const inject = ctx.app.inject.bind(ctx.app)
  const pool = async () => {
    const res = await inject({ method: 'GET', url: '/v1/warm-pool' })
    if (res.statusCode !== 200) throw new Error(`GET /v1/warm-pool answered ${res.statusCode}: ${res.body}`)
    return res.json()
  }
  const hint = (payload: unknown, headers: Record<string, string> = {}) => inject({ method: 'POST', url: '/v1/warm-pool/hints', payload: payload as Record<string, unknown>, headers })
  const acquire = async (body: Record<string, unknown> = {}) => {
    const res = await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection, mode: 'exclusive', ...body } })
    if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
    return res.json()
  }
  const hintRows = async () => (await ctx.sql.rows<{ n: number }>(Prisma.sql`SELECT count(*)::int AS n FROM warm_pool_hints`))[0]!.n
  return { ...ctx, clock, inject, pool, hint, acquire, hintRows, lines }
}

t.test('a hint raises the target by its count and the pass launches that many agents; it expires on the clock', async (t) => {
  const ctx = await setup(t)
  t.match(await ctx.pool(), { target: 0, hinted: 0 }, 'no demand, no hint: the minimum')

  const res = await ctx.hint({ count: 4 })
  t.equal(res.statusCode, 201, res.body)
  const hint = res.json()
  t.match(hint, { id: String, count: 4, createdAt: ctx.clock.now().toISOString() })
  t.equal(Date.parse(hint.expiresAt) - Date.parse(hint.createdAt), 600_000, 'seconds defaults to 600, on the (database) clock')
  t.same(Object.keys(hint).sort(), ['count', 'createdAt', 'expiresAt', 'id'])

  t.match(await ctx.pool(), { target: 4, hinted: 4 })
  const pass = await ctx.services.warmPool.refill()
  t.match(pass, { launched: 4, hinted: 4, target: 4 }, 'the pass launches the hinted agents')
  t.match((await ctx.pool()).counts, { pending: 4 }, 'four warm rows, waiting for the reconciler')
  t.equal((await ctx.services.warmPool.refill()).launched, 0, 'the next pass counts them')
  const logged = ctx.lines.filter((l) => l.msg === 'warm pool pass')
  t.match(logged.at(-1), { warmPool: { target: 4, hinted: 4, pending: 4 } }, 'the pass logs hinted')

  const listed = (await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints' })).json()
  t.same(listed, { hints: [hint] })

  t.equal((await ctx.hint({ count: 3, seconds: 30 })).statusCode, 201)
  t.match(await ctx.pool(), { target: 7, hinted: 7 }, 'hints add up')
  t.equal((await ctx.hint({ count: 10 })).statusCode, 201, 'each hint is within the maximum…')
  t.match(await ctx.pool(), { target: 10, hinted: 17 }, '… and so is the target, whatever the sum (WARM_POOL_MAX is the cost cap)')

  ctx.clock.advance(31)
  t.match(await ctx.pool(), { target: 10, hinted: 14 }, 'the 30-second hint has expired')
  ctx.clock.advance(600)
  t.match(await ctx.pool(), { target: 0, hinted: 0 }, 'all expired: back to what demand asks for')
  t.same((await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints' })).json(), { hints: [] }, 'expired hints are not listed')
  t.equal(await ctx.hintRows(), 3, 'their rows stay a day')
  ctx.clock.advance(86_400)
  await ctx.services.warmPool.refill()
  t.equal(await ctx.hintRows(), 0, 'then the pool pass deletes them')
})

t.test('a hint comes on top of demand, within min..max', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 2, max: 10 } })
  t.match(await ctx.pool(), { target: 2, hinted: 0 })
  await ctx.hint({ count: 1 })
  t.match(await ctx.pool(), { target: 2, hinted: 1 }, 'the minimum already covers a hint of 1 (adaptive 0 + 1 < min)')
  await ctx.hint({ count: 2 })
  t.match(await ctx.pool(), { target: 3, hinted: 3 })
  // Demand: cold launches (no warm agent is READY) raise the adaptive part; they use no hint up.
  for (let i = 0; i < 3; i++) await ctx.acquire()
  const state = await ctx.pool()
  const adaptive = warmPoolTarget(state.demand, 0, 10)
  t.ok(adaptive > 0, `demand asks for ${adaptive}`)
  t.equal(state.hinted, 3, 'cold launches are not warm claims: the hint is not used up')
  t.equal(state.target, Math.min(10, adaptive + 3), 'adaptive plus hinted')
})

t.test('warm claims use a hint up: the target falls back as agents are claimed', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 0, max: 10 } })
  t.equal((await ctx.hint({ count: 2, seconds: 3600 })).statusCode, 201)
  t.equal((await ctx.services.warmPool.refill()).launched, 2)
  await untilWarmReady(ctx, 2, 90_000)

  const first = await ctx.acquire()
  t.ok(first.session.claimedAt, 'the acquire claimed a warm agent')
  let state = await ctx.pool()
  t.equal(state.hinted, 1, 'one claim used one up')
  t.equal(state.target, Math.min(10, warmPoolTarget(state.demand, 0, 10) + 1), 'adaptive (the claim is demand too) plus what is left of the hint')

  const second = await ctx.acquire()
  t.ok(second.session.claimedAt, 'the second acquire claimed the other')
  state = await ctx.pool()
  t.equal(state.hinted, 0, 'used up')
  t.equal(state.target, warmPoolTarget(state.demand, 0, 10), 'only demand is left')

  ctx.clock.advance(DEMAND_WINDOW_SECONDS + 1)
  state = await ctx.pool()
  t.equal(state.hinted, 0, 'a quiet quarter hour later, the hint still unexpired: it stays used up')
  t.equal(state.target, warmPoolTarget(state.demand, 0, 10), 'and only demand sizes the pool')
  t.equal((await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints' })).json().hints.length, 1, 'the used-up hint is still listed until it expires')
})

t.test('DELETE ends a hint early; a second DELETE is a 404', async (t) => {
  const ctx = await setup(t)
  const hint = (await ctx.hint({ count: 3 })).json()
  t.match(await ctx.pool(), { target: 3, hinted: 3 })
  const del = await ctx.inject({ method: 'DELETE', url: `/v1/warm-pool/hints/${hint.id}` })
  t.equal(del.statusCode, 204, del.body)
  t.equal(del.body, '')
  t.match(await ctx.pool(), { target: 0, hinted: 0 })
  t.same((await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints' })).json(), { hints: [] })
  const again = await ctx.inject({ method: 'DELETE', url: `/v1/warm-pool/hints/${hint.id}` })
  t.equal(again.statusCode, 404)
  t.match(again.json(), { code: 'warm_pool_hint_not_found' })
  t.match(again.headers['content-type'], /application\/problem\+json/)
  const bad = await ctx.inject({ method: 'DELETE', url: '/v1/warm-pool/hints/not-a-uuid' })
  t.equal(bad.statusCode, 400)
  t.match(bad.json(), { code: 'validation_failed' })

  const expiring = (await ctx.hint({ count: 1, seconds: 30 })).json()
  ctx.clock.advance(31)
  t.match((await ctx.inject({ method: 'DELETE', url: `/v1/warm-pool/hints/${expiring.id}` })).json(), { status: 404, code: 'warm_pool_hint_not_found' }, 'an expired hint has ended already')
})

t.test('bad input is a 400 problem and changes nothing', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 0, max: 5 } })
  const cases: Array<[unknown, string, RegExp]> = [
    [{ count: 6 }, 'warm_pool_hint_above_max', /WARM_POOL_MAX \(5\)/],
    [{ count: 1000 }, 'warm_pool_hint_above_max', /at most 5/],
    [{ count: 0 }, 'validation_failed', /count/],
    [{ count: 1001 }, 'validation_failed', /count/],
    [{ count: 1.5 }, 'validation_failed', /count/],
    [{ count: '3' }, 'validation_failed', /count/],
    [{}, 'validation_failed', /count/],
    [{ count: 2, seconds: 29 }, 'validation_failed', /seconds/],
    [{ count: 2, seconds: 3601 }, 'validation_failed', /seconds/],
    [{ count: 2, seconds: null }, 'validation_failed', /seconds/],
    [{ count: 2, burst: true }, 'validation_failed', /burst|additional/],
    [[{ count: 2 }], 'validation_failed', /./],
  ]
  for (const [payload, code, detail] of cases) {
    const res = await ctx.hint(payload)
    t.equal(res.statusCode, 400, `${JSON.stringify(payload)}: ${res.body}`)
    t.match(res.headers['content-type'], /application\/problem\+json/)
    t.match(res.json(), { status: 400, code, detail })
  }
  t.equal(await ctx.hintRows(), 0, 'no hint was stored')
  t.match(await ctx.pool(), { target: 0, hinted: 0 })
  t.equal((await ctx.services.warmPool.refill()).launched, 0)
})

t.test('a server whose warm pool is off answers 409 warm_pool_disabled', async (t) => {
  const ctx = await setup(t, { warmPool: undefined })
  const res = await ctx.hint({ count: 1 })
  t.equal(res.statusCode, 409)
  t.match(res.json(), { code: 'warm_pool_disabled', detail: /WARM_POOL_MAX=0/ })
  t.equal(await ctx.hintRows(), 0)
  t.same((await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints' })).json(), { hints: [] })
  t.match(await ctx.pool(), { enabled: false, target: 0, hinted: 0 })
})

t.test('client keys hint; each sees and ends its own, an operator all; no key is a 401', async (t) => {
  const ctx = await setup(t, {
    apiKeys: [
      { role: 'client', key: CLIENT },
      { role: 'client', key: OTHER_CLIENT },
      { role: 'operator', key: OPERATOR },
    ],
  })
  const as = (key: string) => ({ 'x-api-key': key })
  const none = await ctx.hint({ count: 1 })
  t.equal(none.statusCode, 401)
  t.match(none.json(), { code: 'api_key_required' })
  t.equal((await ctx.hint({ count: 1 }, as('wrong'))).statusCode, 401)
  t.equal((await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints' })).statusCode, 401)
  t.equal(await ctx.hintRows(), 0)

  const mine = await ctx.hint({ count: 2 }, as(CLIENT))
  t.equal(mine.statusCode, 201, 'a client key may hint (a workflow\'s key)')
  const theirs = await ctx.hint({ count: 1 }, { authorization: `Bearer ${OTHER_CLIENT}` })
  t.equal(theirs.statusCode, 201)
  const ops = await ctx.hint({ count: 1 }, as(OPERATOR))
  t.equal(ops.statusCode, 201, 'an operator key may too')

  const list = async (key: string) => (await ctx.inject({ method: 'GET', url: '/v1/warm-pool/hints', headers: as(key) })).json().hints.map((h: { id: string }) => h.id)
  t.same(await list(CLIENT), [mine.json().id], 'a client sees its own')
  t.same((await list(OPERATOR)).sort(), [mine.json().id, theirs.json().id, ops.json().id].sort(), 'an operator sees all')
  t.equal((await ctx.inject({ method: 'GET', url: '/v1/warm-pool', headers: as(CLIENT) })).statusCode, 403, 'the pool\'s state stays an operator\'s')
  t.match((await ctx.inject({ method: 'GET', url: '/v1/warm-pool', headers: as(OPERATOR) })).json(), { hinted: 4, target: 4 }, 'every key\'s hints count')

  const stolen = await ctx.inject({ method: 'DELETE', url: `/v1/warm-pool/hints/${mine.json().id}`, headers: as(OTHER_CLIENT) })
  t.equal(stolen.statusCode, 404, 'another client cannot end it')
  t.equal(await ctx.hintRows(), 3)
  t.equal((await ctx.inject({ method: 'DELETE', url: `/v1/warm-pool/hints/${mine.json().id}`, headers: as(CLIENT) })).statusCode, 204, 'its maker can')
  t.equal((await ctx.inject({ method: 'DELETE', url: `/v1/warm-pool/hints/${theirs.json().id}`, headers: as(OPERATOR) })).statusCode, 204, 'an operator can end any')
  t.same(await list(OPERATOR), [ops.json().id])
})
