import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../src/config.ts'
import { createS3 } from '../src/runtime.ts'
import { SnapshotService } from '../src/services/snapshots/snapshot-service.ts'
import { startS3Fake } from './helpers/s3-fake.ts'

// The server's S3 (createS3) loads the SDK on first use rather than at start; what it sends
// must be what an S3Client configured from S3_ENDPOINT sends.

const root = await mkdtemp(join(tmpdir(), 'chroma-lease-lazy-s3-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const s3 = await startS3Fake(join(root, 's3'))
t.teardown(() => s3.close())

t.test('s3:// snapshots are checked through the lazily loaded client', async (t) => {
  const archive = join(root, 'receipts.tar')
  await writeFile(archive, 'not really a tar')
  await s3.putFile('receipts/v1.tar', archive)
  const saved = { ...process.env }
  t.teardown(() => {
    process.env = saved
  })
  Object.assign(process.env, s3.env)
  const config = loadConfig({ ...s3.env, S3_ENDPOINT: s3.endpoint })
  const snapshots = new SnapshotService({ snapshotRoot: root, s3: createS3(config) })
  t.equal(await snapshots.forLaunch(`s3://${s3.bucket}/receipts/v1.tar`), `s3://${s3.bucket}/receipts/v1.tar`, 'an existing archive passes')
  await t.rejects(snapshots.forLaunch(`s3://${s3.bucket}/receipts/v2.tar`), { code: 'snapshot_not_found' }, 'a missing one is a 422')
})
