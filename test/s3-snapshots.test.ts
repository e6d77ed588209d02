import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PutObjectCommand } from '@aws-sdk/client-s3'
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

t.test("a versioned snapshot (latest/, a manifest, a save-back series) resolves to one concrete version for the session's life", async (t) => {
  const put = (key: string, body: string) => s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }))
  await s3.putFile('dated/2026-10-01.tar.gz', fixture.tarGzPath)
  await s3.putDirectory('dated/2026-11-01', fixture.dir)
  await put('dated/notes.txt', 'not a snapshot')

  const first = await acquire('s3://snapshots/dated/latest/')
  t.equal(first.statusCode, 201)
  const lease = first.json()
  t.equal(lease.session.snapshot, 's3://snapshots/dated/2026-11-01/', 'latest/ is the greatest version name')
  t.equal((await reconcileUntilSettled(ctx, lease.session.id)).status, 'READY', 'the pinned version serves')

  // A newer version is published: the running session keeps its version, and shared
  // acquires of latest/ reuse it; a new session gets the new version.
  await s3.putFile('dated/2026-12-01.tar.gz', fixture.tarGzPath)
  const again = (await acquire('s3://snapshots/dated/latest/')).json()
  t.equal(again.session.id, lease.session.id, 'latest/ pools with the running session')
  t.equal(again.session.snapshot, 's3://snapshots/dated/2026-11-01/')
  const fresh = (await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: 's3://snapshots/dated/latest', collection: fixture.collection, mode: 'exclusive' } })).json()
  t.equal(fresh.session.snapshot, 's3://snapshots/dated/2026-12-01.tar.gz', 'a new session: the newest version')

  await put('dated/manifest.json', JSON.stringify({ snapshot: '2026-10-01.tar.gz' }))
  t.equal((await acquire('s3://snapshots/dated/manifest.json')).json().session.snapshot, 's3://snapshots/dated/2026-10-01.tar.gz', 'a manifest names the version')

  // A save-back series: its `latest` pointer decides, whether the series or the pointer is named.
  await put('series/latest', JSON.stringify({ version: 'v7', snapshot: 's3://snapshots/dated/2026-10-01.tar.gz' }))
  for (const name of ['s3://snapshots/series', 's3://snapshots/series/latest']) {
    const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: name, collection: fixture.collection, mode: 'exclusive' } })
    t.equal(res.json().session.snapshot, 's3://snapshots/dated/2026-10-01.tar.gz', `${name}: the version latest names`)
  }

  await put('dated/broken.json', '{"snapshot": 42}')
  await put('dated/not-json.json', 'snapshot=2026-10-01.tar.gz')
  await put('dated/gone.json', JSON.stringify({ snapshot: 's3://snapshots/dated/1999-01-01.tar.gz' }))
  const refused: Array<[string, string]> = [
    ['s3://snapshots/dated/broken.json', 'invalid_snapshot'],
    ['s3://snapshots/dated/not-json.json', 'invalid_snapshot'],
    ['s3://snapshots/dated/gone.json', 'snapshot_not_found'],
    ['s3://snapshots/dated/missing.json', 'snapshot_not_found'],
    ['s3://snapshots/no-versions-here/latest/', 'snapshot_not_found'],
  ]
  for (const [snapshot, code] of refused) {
    const res = await acquire(snapshot)
    t.equal(res.statusCode, 422, snapshot)
    t.equal(res.json().code, code, `${snapshot}: ${res.json().detail}`)
  }
})
