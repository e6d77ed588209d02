/**
 * `npm run snapshot:example [DIR]`: builds the small receipts snapshot that the README's
 * "Use it" examples query: a Chroma persist directory written by the real Chroma server,
 * collection `receipts`, 200 records with deterministic 8-dimension embeddings (no model
 * download). DIR defaults to `$SNAPSHOT_ROOT/receipts`, else `$DATA_DIR/snapshots/receipts`
 * (`.data/snapshots/receipts`): under the snapshot root that `npm start` allows.
 */
import { mkdir, mkdtemp, rename, rm } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { buildSnapshotFixture } from '../test/helpers/snapshot-fixture.ts'

const root = process.env.SNAPSHOT_ROOT || join(process.env.DATA_DIR || '.data', 'snapshots')
const target = resolve(process.argv[2] ?? join(root, 'receipts'))
await mkdir(dirname(target), { recursive: true })
const work = await mkdtemp(join(dirname(target), '.snapshot-'))
try {
  const fixture = await buildSnapshotFixture(work, { collection: 'receipts', count: 200, dim: 8, seed: 7 })
  await rm(target, { recursive: true, force: true })
  await rename(fixture.dir, target)
  console.log(`wrote ${target}: collection "receipts", ${fixture.count} records, ${fixture.dim}-dimension embeddings`)
  console.log(`snapshot URI: file://${target}`)
} finally {
  await rm(work, { recursive: true, force: true })
}
