import t from 'tap'
import { sha256 } from '../src/services/auth.ts'
import { buildTestApp } from './helpers/app.ts'

const OPERATOR = 'operator-key-0123456789'
const CLIENT = 'client-key-0123456789ab'

t.test('operators create, list and revoke keys; a key is shown once and stored hashed', async (t) => {
  const { app, db } = await buildTestApp(t, { apiKeys: [{ role: 'operator', key: OPERATOR }, { role: 'client', key: CLIENT }] })
  const as = (key: string) => ({ 'x-api-key': key })
  const created = await app.inject({ method: 'POST', url: '/v1/keys', headers: as(OPERATOR), payload: { name: 'step-functions prod' } })
  t.equal(created.statusCode, 201)
  const key = created.json()
  t.match(key, { name: 'step-functions prod', role: 'client', revokedAt: null, enabledNow: false, key: /^clk_[A-Za-z0-9_-]{43}$/ })
  t.equal(key.fingerprint, sha256(key.key).slice(0, 8))
  t.ok(await db.apiKey.findFirst({ where: { keyHash: sha256(key.key) } }), 'stored as its hash')
  t.notOk(await db.apiKey.findFirst({ where: { keyHash: key.key } }))

  t.equal((await app.inject({ method: 'GET', url: '/v1/leases', headers: as(key.key) })).statusCode, 200, 'the new key works')
  const list = (await app.inject({ method: 'GET', url: '/v1/keys', headers: as(OPERATOR) })).json().keys
  t.same(list.map((k: { role: string }) => k.role).sort(), ['client', 'client', 'operator'])
  t.notOk(JSON.stringify(list).includes(key.key), 'listing never shows a key')
  t.ok(list.every((k: Record<string, unknown>) => !('key' in k) && !('keyHash' in k)))

  const revoked = await app.inject({ method: 'DELETE', url: `/v1/keys/${key.id}`, headers: as(OPERATOR) })
  t.equal(revoked.statusCode, 200)
  t.ok(revoked.json().revokedAt)
  const again = await app.inject({ method: 'DELETE', url: `/v1/keys/${key.id}`, headers: as(OPERATOR) })
  t.equal(again.json().revokedAt, revoked.json().revokedAt, 'revoking is idempotent')
  const refused = await app.inject({ method: 'GET', url: '/v1/leases', headers: as(key.key) })
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().code, 'invalid_api_key', 'a revoked key is refused at once on this replica')

  t.equal((await app.inject({ method: 'GET', url: '/v1/keys', headers: as(CLIENT) })).statusCode, 403, 'keys are for operators')
  t.equal((await app.inject({ method: 'POST', url: '/v1/keys', headers: as(CLIENT), payload: { name: 'x' } })).statusCode, 403)
  t.equal((await app.inject({ method: 'GET', url: '/v1/keys' })).statusCode, 401)
  const missing = await app.inject({ method: 'DELETE', url: '/v1/keys/00000000-0000-4000-8000-000000000000', headers: as(OPERATOR) })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'api_key_not_found')
  const bad = await app.inject({ method: 'POST', url: '/v1/keys', headers: as(OPERATOR), payload: { name: '', role: 'admin' } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'validation_failed')
})

t.test('the last operator key cannot be revoked', async (t) => {
  const { app } = await buildTestApp(t, { apiKeys: [{ role: 'operator', key: OPERATOR }] })
  const as = { 'x-api-key': OPERATOR }
  const [seeded] = (await app.inject({ method: 'GET', url: '/v1/keys', headers: as })).json().keys
  const last = await app.inject({ method: 'DELETE', url: `/v1/keys/${seeded.id}`, headers: as })
  t.equal(last.statusCode, 409)
  t.equal(last.json().code, 'last_operator_key')
  const second = (await app.inject({ method: 'POST', url: '/v1/keys', headers: as, payload: { name: 'ops 2', role: 'operator' } })).json()
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/keys/${seeded.id}`, headers: { 'x-api-key': second.key } })).statusCode, 200, 'with another operator key it can')
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: as })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: { 'x-api-key': second.key } })).statusCode, 200)
})

t.test('on a keyless server the first key must be an operator key, and it turns the check on everywhere', async (t) => {
  const one = await buildTestApp(t)
  const two = await buildTestApp(t, { databaseUrl: one.databaseUrl })
  t.equal((await two.app.inject('/v1/sessions')).statusCode, 200, 'no key anywhere: the check is off')

  const client = await one.app.inject({ method: 'POST', url: '/v1/keys', payload: { name: 'first', role: 'client' } })
  t.equal(client.statusCode, 409)
  t.equal(client.json().code, 'operator_key_required')
  t.equal(await one.db.apiKey.count(), 0, 'nothing was made')

  const created = await one.app.inject({ method: 'POST', url: '/v1/keys', payload: { name: 'first', role: 'operator' } })
  t.equal(created.statusCode, 201)
  t.equal(created.json().enabledNow, true, 'the answer says the check is on now')
  const key = created.json().key
  t.equal((await one.app.inject('/v1/sessions')).statusCode, 401, 'this replica asks for a key at once')
  t.equal((await one.app.inject({ url: '/v1/sessions', headers: { authorization: `Bearer ${key}` } })).statusCode, 200)
  // The other replica re-reads whether keys exist at most every 5 s while it has none.
  let status = 0
  for (let i = 0; i < 60 && status !== 401; i++) {
    status = (await two.app.inject('/v1/sessions')).statusCode
    if (status !== 401) await new Promise((r) => setTimeout(r, 200))
  }
  t.equal(status, 401, 'the other replica asks for a key within seconds')
  t.equal((await two.app.inject({ url: '/v1/sessions', headers: { 'x-api-key': key } })).statusCode, 200)
  t.equal(
    (await one.app.inject({ method: 'POST', url: '/v1/keys', headers: { 'x-api-key': key }, payload: { name: 'wf' } })).json().enabledNow,
    false,
    'later keys change nothing',
  )
})
