import { cp, mkdir, mkdtemp, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import pg from 'pg'
import { migrate } from '../src/database/migrator.ts'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { freshDatabaseUrl } from './helpers/database.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// One shared session per snapshot (DESIGN.md invariant 2, pool key = the snapshot): it
// serves every collection in it, and the collection an acquire names is checked there.

const root = await mkdtemp(join(tmpdir(), 'pools-'))
await mkdir(join(root, 'receipts'))
const snapshot = `file://${join(root, 'receipts')}`

t.test('acquires that name different collections, or none, share one session; a missing one is a 404 that ends its lease', async (t) => {
  const launcher = new ScriptedLauncher()
  const chroma = await new FakeChroma().start()
  t.teardown(() => chroma.close())
  chroma.collections.add('invoices')
  const ctx = await buildTestApp(t, { snapshotRoot: root, launcher, clock: new ManualClock() })
  const acquire = (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, ...body }, headers })

  const first = await acquire({ collection: 'receipts' })
  t.equal(first.statusCode, 201)
  const sessionId = first.json().session.id
  t.equal(first.json().session.collection, null, 'a shared session belongs to no one collection')
  // The session starts and serves (scripted compute, a Chroma stand-in).
  await ctx.workers.reconciler.reconcileOnce()
  launcher.states.set(sessionId, chroma.running())
  chroma.healthy = true
  await ctx.workers.reconciler.reconcileOnce()
  t.equal((await ctx.services.sessions.get(sessionId)).status, 'READY')

  const none = await acquire({})
  const other = await acquire({ collection: 'invoices' })
  t.same([none.statusCode, other.statusCode], [201, 201])
  t.same([none.json().session.id, other.json().session.id], [sessionId, sessionId], 'no collection, or another one: the same session')
  t.equal(await ctx.db.session.count(), 1, 'one session for the snapshot')

  const missing = await acquire({ collection: 'no-such' }, { 'idempotency-key': 'typo-1' })
  t.equal(missing.statusCode, 404)
  t.match(missing.json(), { code: 'collection_not_found', detail: /"no-such" is not in snapshot .*was ended/ })
  t.equal((await ctx.services.sessions.get(sessionId)).leaseCount, 3, 'the refused acquire holds nothing')
  const ended = await ctx.db.lease.findFirstOrThrow({ where: { idempotencyKey: 'typo-1' } })
  t.equal(ended.endReason, 'collection_not_found', 'its lease is ended, with the reason')
  const replay = await acquire({ collection: 'no-such' }, { 'idempotency-key': 'typo-1' })
  t.equal(replay.statusCode, 404, 'a retry of the same acquire gets the same answer')
  t.equal((await ctx.services.sessions.get(sessionId)).status, 'READY', 'the shared session serves on')
})

t.test('the migration gives each snapshot one pool key and leaves duplicates to serve out', async (t) => {
  const url = await freshDatabaseUrl({ migrated: false })
  // The migrations before this one, then rows as the old pool keys made them.
  const all = join(import.meta.dirname, '../prisma/migrations')
  const before = await mkdtemp(join(tmpdir(), 'migrations-'))
  for (const name of await readdir(all)) {
    if (name < '20261205100000_pool_per_snapshot') await cp(join(all, name), join(before, name), { recursive: true })
  }
  await migrate(url, before)
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  t.teardown(() => c.end())
  const insert = (id: string, poolKey: string | null, collection: string | null, status: string, minutesAgo: number) =>
    c.query(
      `INSERT INTO sessions (id, mode, pool_key, snapshot, collection, status, launcher, idle_ttl_seconds, created_by, created_at, updated_at)
       VALUES ($1, $2, $3, 'file:///s/a#b', $4, $5, 'process', 60, 'test', now() - make_interval(mins => $6), now())`,
      [id, poolKey === null ? 'exclusive' : 'shared', poolKey, collection, status, minutesAgo],
    )
  const id = (n: number) => `00000000-0000-4000-8000-00000000000${n}`
  await insert(id(1), 'file:///s/a#b#receipts', 'receipts', 'STARTING', 5) // older, but not serving yet
  await insert(id(2), 'file:///s/a#b#', null, 'READY', 1)
  await insert(id(3), 'file:///s/a#b#invoices', 'invoices', 'PENDING', 10)
  await insert(id(4), 'file:///s/a#b#receipts', 'receipts', 'STOPPED', 60)
  await insert(id(5), null, 'receipts', 'READY', 2)
  await migrate(url)
  const { rows } = await c.query('SELECT id, pool_key, collection FROM sessions ORDER BY id')
  t.same(
    rows.map((r) => [r.pool_key, r.collection]),
    [
      ['file:///s/a#b#receipts', null], // a duplicate: keeps its old key, serves its leases out
      ['file:///s/a#b', null], // the READY one takes the snapshot's key
      ['file:///s/a#b#invoices', null],
      ['file:///s/a#b', 'receipts'], // ended: the new key, its history kept
      [null, 'receipts'], // exclusive: untouched
    ],
  )
})
