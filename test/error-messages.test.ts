import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildTestApp } from './helpers/app.ts'

// Errors that say what to fix (issue 17, item 4): each problem's detail names the
// setting, the field, the header or the place, and the request changed nothing.

const root = await mkdtemp(join(tmpdir(), 'error-messages-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const snapshotRoot = join(root, 'snapshots')
await mkdir(join(snapshotRoot, 'receipts'), { recursive: true })
const outside = join(root, 'elsewhere')
await mkdir(outside)

const cp = await buildTestApp(t, { snapshotRoot })
const post = (payload: string | undefined, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
  cp.app.inject({ method: 'POST', url: '/v1/leases', payload, headers })
const leaseCount = async () => (await cp.app.inject({ method: 'GET', url: '/v1/leases' })).json().leases.length

t.test('a snapshot outside SNAPSHOT_ROOT names the setting and its value', async (t) => {
  const res = await post(JSON.stringify({ snapshot: `file://${outside}` }))
  t.equal(res.statusCode, 422)
  t.equal(res.json().code, 'snapshot_not_found')
  t.match(res.json().detail, `lies outside SNAPSHOT_ROOT (${snapshotRoot})`)
  const missing = await post(JSON.stringify({ snapshot: `file://${snapshotRoot}/invoices` }))
  t.equal(missing.statusCode, 422)
  t.match(missing.json().detail, `no snapshot at ${snapshotRoot}/invoices under SNAPSHOT_ROOT (${snapshotRoot})`)
})

t.test('an unknown body field is named', async (t) => {
  const res = await post(JSON.stringify({ snapshot: `file://${snapshotRoot}/receipts`, colection: 'receipts' }))
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'validation_failed')
  t.match(res.json().detail, /unknown field "colection"/)
})

t.test('a missing or wrong content type says to send content-type: application/json', async (t) => {
  const body = JSON.stringify({ snapshot: `file://${snapshotRoot}/receipts` })
  for (const headers of [{ 'content-type': 'text/plain' }, { 'content-type': 'application/x-www-form-urlencoded' }]) {
    const res = await post(body, headers)
    t.equal(res.statusCode, 415, headers['content-type'])
    t.equal(res.json().code, 'unsupported_media_type')
    t.match(res.json().detail, /send .*content-type: application\/json/)
    t.match(res.json().detail, headers['content-type'], 'and says what it got')
  }
  const none = await cp.app.inject({ method: 'POST', url: '/v1/leases', payload: body, headers: { 'content-type': '' } })
  t.equal(none.statusCode, 415, 'no content type')
  t.match(none.json().detail, /content-type: application\/json/)
  const noBody = await cp.app.inject({ method: 'POST', url: '/v1/leases' })
  t.equal(noBody.statusCode, 400, 'no body at all')
  t.match(noBody.json().detail, /content-type: application\/json/)
})

t.test('invalid JSON says where it broke', async (t) => {
  const res = await post('{\n  "snapshot": "file:///x",\n  "collection": receipts\n}')
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'invalid_json')
  t.match(res.json().detail, /line 3, column 17/)
  const empty = await post('')
  t.equal(empty.statusCode, 400)
  t.equal(empty.json().code, 'invalid_json')
  t.match(empty.json().detail, /empty/)
  const poisoned = await post('{"snapshot":"file:///x","__proto__":{"admin":true}}')
  t.equal(poisoned.statusCode, 400, 'prototype poisoning is still refused')
})

t.test('bad requests changed nothing', async (t) => {
  t.equal(await leaseCount(), 0)
})

t.test('401 lease_ended on the proxy says to acquire a new lease', async (t) => {
  const lease = (await post(JSON.stringify({ snapshot: `file://${snapshotRoot}/receipts` }))).json()
  await cp.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` })
  const res = await cp.app.inject({ method: 'GET', url: '/api/v2/heartbeat', headers: { 'x-chroma-token': lease.token } })
  t.equal(res.statusCode, 401)
  t.equal(res.json().code, 'lease_ended')
  t.match(res.json().detail, /acquire a new lease \(POST \/v1\/leases\)/)
})
