import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'
import { buildTestApp } from './helpers/app.ts'

// An acquire whose wait ends in FAILED answers a problem and ends its lease (issue 17,
// item 2): the caller's own input is a 4xx, anything else 502 session_failed. Real
// Postgres, real agents started by the process launcher, the reconciler running.

const root = await mkdtemp(join(tmpdir(), 'acquire-failed-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(join(root, 'receipts'), { count: 20, dim: 4 })
const notChroma = join(root, 'not-chroma')
await mkdir(notChroma)
await writeFile(join(notChroma, 'notes.txt'), 'not a Chroma persist directory\n')
const corrupt = join(root, 'corrupt.tar')
await writeFile(corrupt, 'this is not a tar archive\n'.repeat(64))

const cp = await buildTestApp(t, { snapshotRoot: root, startTimeoutSeconds: 60 })
cp.workers.start()
t.teardown(() => cp.workers.stop())

const acquire = (body: Record<string, unknown>, key?: string) =>
  cp.app.inject({ method: 'POST', url: '/v1/leases', payload: body, headers: key ? { 'idempotency-key': key } : {} })

/** The lease named by a problem, and what the API says about it afterwards. */
async function leaseAfter(problem: Record<string, any>) {
  const lease = (await cp.app.inject({ method: 'GET', url: `/v1/leases/${problem.leaseId}` })).json()
  const events = (await cp.app.inject({ method: 'GET', url: `/v1/sessions/${problem.sessionId}/events` })).json().events
  return { lease, ended: events.filter((e: any) => e.type === 'lease_ended' && e.leaseId === problem.leaseId) }
}

t.test('a collection the snapshot does not hold: 404 collection_not_found, lease ended, the session serves on', async (t) => {
  const res = await acquire({ snapshot: `file://${fixture.dir}`, collection: 'invoices', waitSeconds: 40 }, 'missing-collection')
  t.equal(res.statusCode, 404)
  t.match(res.headers['content-type'], /application\/problem\+json/)
  const problem = res.json()
  t.equal(problem.code, 'collection_not_found')
  t.match(problem.detail, /collection "invoices" is not in snapshot/)
  const { lease, ended } = await leaseAfter(problem)
  t.match(lease, { status: 'ended', endReason: 'collection_not_found' }, 'the lease is ended, and says why')
  t.ok(lease.endedAt)
  // One shared session per snapshot serves every collection in it: another caller's
  // mistake does not fail it for the callers naming a collection it holds.
  t.equal(lease.session.status, 'READY')
  t.equal(lease.session.leaseCount, 0)
  t.equal(ended.length, 1, 'one lease_ended event on the timeline')
  t.equal(ended[0].reason, 'collection_not_found')

  // A retry with the same Idempotency-Key gets the same answer, not a dead lease.
  const replay = await acquire({ snapshot: `file://${fixture.dir}`, collection: 'invoices', waitSeconds: 40 }, 'missing-collection')
  t.equal(replay.statusCode, 404)
  t.equal(replay.json().code, 'collection_not_found')
  t.equal(replay.json().leaseId, problem.leaseId, 'the same lease')
  t.equal((await leaseAfter(problem)).ended.length, 1, 'ended once')

  const good = await acquire({ snapshot: `file://${fixture.dir}`, collection: fixture.collection, waitSeconds: 40 })
  t.equal(good.statusCode, 201)
  t.equal(good.json().session.id, problem.sessionId, 'the same session serves a collection it holds')
  t.equal((await cp.app.inject({ method: 'DELETE', url: `/v1/leases/${good.json().id}` })).statusCode, 200)
})

t.test('a directory that is not a Chroma persist directory: 422 invalid_snapshot', async (t) => {
  const res = await acquire({ snapshot: `file://${notChroma}`, waitSeconds: 40 })
  t.equal(res.statusCode, 422)
  t.equal(res.json().code, 'invalid_snapshot')
  t.match(res.json().detail, /not a Chroma persist directory/)
  t.not((await leaseAfter(res.json())).lease.status, 'active')
})

t.test('any other failure: 502 session_failed with the session error', async (t) => {
  const res = await acquire({ snapshot: `file://${corrupt}`, mode: 'exclusive', waitSeconds: 40 })
  t.equal(res.statusCode, 502)
  const problem = res.json()
  t.equal(problem.code, 'session_failed')
  const { lease } = await leaseAfter(problem)
  t.equal(problem.sessionError, lease.session.error, "the session's own error")
  t.match(problem.detail, lease.session.error)
  t.not(lease.status, 'active')
})

t.test('a long-poll that ends in FAILED answers the problem; a plain read answers the lease', async (t) => {
  const started = await acquire({ snapshot: `file://${corrupt}`, waitSeconds: 0 })
  t.equal(started.statusCode, 201, 'no wait: the lease, its session starting')
  const { id } = started.json()
  const polled = await cp.app.inject({ method: 'GET', url: `/v1/leases/${id}?waitSeconds=40` })
  t.equal(polled.statusCode, 502)
  t.equal(polled.json().code, 'session_failed')
  t.equal(polled.json().leaseId, id)
  const read = await cp.app.inject({ method: 'GET', url: `/v1/leases/${id}` })
  t.equal(read.statusCode, 200)
  t.equal(read.json().session.status, 'FAILED')
  t.not(read.json().status, 'active')
})

t.test('a READY session still answers 201 with an active lease', async (t) => {
  const res = await acquire({ snapshot: `file://${fixture.dir}`, collection: fixture.collection, waitSeconds: 40 })
  t.equal(res.statusCode, 201)
  t.equal(res.json().status, 'active')
  t.equal(res.json().session.status, 'READY')
})
