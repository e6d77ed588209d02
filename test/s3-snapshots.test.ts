import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildTestApp, reconcileUntilSettled } from './helpers/app.ts'
import { startS3Fake } from './helpers/s3-fake.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// s3:// snapshots end to end: the acquire checks the object with the real AWS SDK
// against an S3 server, and the session agent restores it from there.

const root = await mkdtemp(join(tmpdir(), 's3-snapshots-'))
const fixture = await buildSnapshotFixture(join(root, 'fixture'), { count: 25, dim: 8 })
const s3 = await startS3Fake(join(root, 's3'))
t.teardown(() => s3.close())
await s3.putFile('receipts/2026-11.tar.gz', fixture.tarGzPath)
await s3.putDirectory('receipts/unpacked', fixture.dir)
const ctx = await buildTestApp(t, { s3, snapshotRoot: root })

const acquire = (snapshot: string) =>
  ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection } })

for (const snapshot of ['s3://snapshots/receipts/2026-11.tar.gz', 's3://snapshots/receipts/unpacked/']) {
  t.test(`a session restored from ${snapshot} serves it`, async (t) => {
    const res = await acquire(snapshot)
    t.equal(res.statusCode, 201)
    const lease = res.json()
    t.equal((await reconcileUntilSettled(ctx, lease.session.id)).status, 'READY')
    const q = await ctx.app.inject({
      method: 'POST',
      url: `/v1/sessions/${lease.session.id}/query`,
      headers: { 'x-chroma-token': lease.token },
      payload: { collection: fixture.collection, queryEmbeddings: [fixture.vector(4)], nResults: 1 },
    })
    t.equal(q.json().ids[0][0], 'r-4')
  })
}

t.test('a snapshot that is not in the bucket is a 422 at once, not a failed session', async (t) => {
  for (const snapshot of ['s3://snapshots/receipts/2025-01.tar.gz', 's3://snapshots/nothing-here/', 's3://no-such-bucket/x.tar']) {
    const res = await acquire(snapshot)
    t.equal(res.statusCode, 422, snapshot)
    t.equal(res.json().code, 'snapshot_not_found', snapshot)
  }
  t.equal(await ctx.db.session.count({ where: { snapshot: { contains: 'nothing-here' } } }), 0)
})
