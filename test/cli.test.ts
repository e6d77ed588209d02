import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import t from 'tap'
import { main, type Io } from '../src/cli/main.ts'
import { shortenMiddle } from '../src/cli/table.ts'
import { freeLoopbackPort } from '../src/free-port.ts'
import { buildTestApp } from './helpers/app.ts'
import { freshDatabaseUrl } from './helpers/database.ts'

// The `chroma-lease` CLI against a real control plane on a loopback port. Workers are
// not started, so sessions stay PENDING: the CLI's job is the API, not the lifecycle.
const OPERATOR = 'operator-key-0123456789'
const root = await mkdtemp(join(tmpdir(), 'chroma-lease-cli-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true, apiKeys: [{ role: 'operator', key: OPERATOR }] })

/** Runs the CLI in this process with the environment a user would set. */
async function cli(...argv: string[]): Promise<{ code: number | null; out: string; err: string }> {
  let out = ''
  let err = ''
  const io: Io = {
    env: { CHROMA_LEASE_URL: ctx.url, CHROMA_LEASE_API_KEY: OPERATOR },
    out: (s) => (out += s),
    err: (s) => (err += s),
  }
  const code = await main(argv, io)
  return { code, out, err }
}

// Each test leases its own snapshot (a directory under the root), so their sessions stay apart.
const acquire = async (key: string, snapshot: string) => {
  await mkdir(join(root, snapshot), { recursive: true })
  const res = await ctx.app.inject({ method: 'POST', url: '/v1/leases', headers: { 'x-api-key': key }, payload: { snapshot: `file://${root}/${snapshot}`, holder: 'cli-test' } })
  t.equal(res.statusCode, 201)
  return res.json()
}

t.test('the installed command runs, and says what is wrong without a key', async (t) => {
  const run = promisify(execFile)
  const help = await run(process.execPath, ['bin/chroma-lease.js', '--help'])
  t.match(help.stdout, /Usage: chroma-lease <command>/)
  const denied = await run(process.execPath, ['bin/chroma-lease.js', 'keys', 'list', '--url', ctx.url], { env: { PATH: process.env.PATH } }).catch((e) => e)
  t.equal(denied.code, 1, 'exit 1 when the API refuses')
  t.match(denied.stderr, /401 .*set --api-key or CHROMA_LEASE_API_KEY/)
})

t.test('the command runs a bundle with plain Node, rebuilt when a source is newer', async (t) => {
  const run = promisify(execFile)
  const bin = await readFile('bin/chroma-lease.js', 'utf8')
  t.notMatch(bin, /tsx/, 'bin/chroma-lease.js loads no TypeScript loader')
  t.match(bin, /dist\/cli\.js/, 'it runs dist/cli.js')
  await run(process.execPath, ['bin/chroma-lease.js', '--help'])
  const inputs: string[] = JSON.parse(await readFile('dist/inputs.json', 'utf8'))
  t.ok(inputs.includes('src/cli/main.ts') && inputs.includes('packages/client/src/client.ts'), 'the bundle holds the CLI and the client package')
  const built = (await stat('dist/cli.js')).mtimeMs
  const newest = Math.max(...(await Promise.all(inputs.map((i) => stat(i).then((s) => s.mtimeMs)))))
  t.ok(built >= newest, 'after a run the bundle is at least as new as its sources')
  // The bundle alone, as the image runs it: plain Node, no loader, no TypeScript.
  const direct = await run(process.execPath, ['dist/cli.js', '--help'], { env: { PATH: process.env.PATH } })
  t.match(direct.stdout, /Usage: chroma-lease <command>/)
  const bundle = await readFile('dist/cli.js', 'utf8')
  t.notMatch(bundle, /from ["'][^"']+\.ts["']/, 'it imports no .ts module')

  await utimes('dist/cli.js', new Date(0), new Date(0))
  await run(process.execPath, ['bin/chroma-lease.js', '--help'])
  t.ok((await stat('dist/cli.js')).mtimeMs >= newest, 'a bundle older than its sources is rebuilt before it runs')
})

t.test('ids: a unique prefix names the one id, an ambiguous one lists the matches', async (t) => {
  const lease = await acquire(OPERATOR, 'prefixes')
  const session = await cli('sessions', 'show', lease.session.id.slice(0, 8), '--json')
  t.equal(session.code, 0, session.err)
  t.equal(JSON.parse(session.out).session.id, lease.session.id, 'sessions show takes a prefix')
  const upper = await cli('sessions', 'show', lease.session.id.slice(0, 6).toUpperCase(), '--json')
  t.equal(JSON.parse(upper.out).session.id, lease.session.id, 'in either case')
  const released = await cli('leases', 'release', lease.id.slice(0, 10), '--json')
  t.equal(released.code, 0, released.err)
  t.match(JSON.parse(released.out), { id: lease.id, status: 'released' }, 'leases release takes a prefix')
  const filtered = await cli('leases', 'list', '--session', lease.session.id.slice(0, 8), '--json')
  t.same(JSON.parse(filtered.out).leases.map((l: { id: string }) => l.id), [lease.id], '--session takes a prefix')
  // Its session is still PENDING (nothing launches here): drain is for serving sessions.
  const drained = await cli('sessions', 'drain', lease.session.id.slice(0, 8), '--json')
  t.not(drained.code, 0, 'a prefix reaches the drain, which refuses a session that is not serving')
  t.match(drained.err + drained.out, /PENDING/)

  // Two keys made to share a prefix (ids are random, so the test sets them).
  const a = JSON.parse((await cli('keys', 'create', '--name', 'prefix a', '--json')).out)
  const b = JSON.parse((await cli('keys', 'create', '--name', 'prefix b', '--json')).out)
  await ctx.db.$executeRaw`UPDATE api_keys SET id = 'abcd1111-0000-4000-8000-000000000000'::uuid WHERE id = ${a.id}::uuid`
  await ctx.db.$executeRaw`UPDATE api_keys SET id = 'abcd2222-0000-4000-8000-000000000000'::uuid WHERE id = ${b.id}::uuid`
  const ambiguous = await cli('keys', 'revoke', 'abcd')
  t.equal(ambiguous.code, 2, 'an ambiguous prefix is bad usage')
  t.match(ambiguous.err, /abcd is ambiguous: 2 keys start with it:\n  abcd1111-0000-4000-8000-000000000000  \(prefix a, client\)\n  abcd2222-0000-4000-8000-000000000000  \(prefix b, client\)\ngive more of the id/)
  const unique = await cli('keys', 'revoke', 'abcd2', '--json')
  t.equal(unique.code, 0, unique.err)
  t.match(JSON.parse(unique.out), { id: 'abcd2222-0000-4000-8000-000000000000', revokedAt: String })
  const none = await cli('sessions', 'show', 'ffff0000ffff')
  t.equal(none.code, 1)
  t.match(none.err, /^chroma-lease: no session id starts with ffff0000ffff\n$/)
  const short = await cli('leases', 'release', 'abc')
  t.equal(short.code, 2)
  t.match(short.err, /give at least 4 characters of the lease id/)
  const notHex = await cli('sessions', 'show', 'receipts')
  t.equal(notHex.code, 2)
  t.match(notHex.err, /"receipts" is not a session id or id prefix/)
})

t.test('snapshot URIs keep their scheme and end, cut in the middle', async (t) => {
  t.equal(shortenMiddle('s3://bucket/receipts/2026-11-02.tar.gz', 60), 's3://bucket/receipts/2026-11-02.tar.gz', 'short ones whole')
  const long = 's3://analytics-snapshots-prod/receipts/customers/eu-west/2026-11-02T10-00-00.tar.gz'
  const cut = shortenMiddle(long, 40)
  t.equal(cut.length, 40)
  t.match(cut, /^s3:\/\/analytics-snaps.*….*-00-00\.tar\.gz$/)

  const dir = `a-rather-long-snapshot-directory-name-${'x'.repeat(30)}/receipts-2026-11-02`
  const lease = await acquire(OPERATOR, dir)
  const table = await cli('sessions', 'list', '--status', 'PENDING')
  const row = table.out.split('\n').find((l) => l.startsWith(lease.session.id))!
  t.match(row, /\sfile:\/\/\/\S*…\S*receipts-2026-11-02\s/, 'the table shows file:// and the name, the middle cut')
})

t.test('keys: create (shown once), list (never the key), revoke', async (t) => {
  const created = await cli('keys', 'create', '--name', 'ci pipeline', '--role', 'client', '--json')
  t.equal(created.code, 0)
  const key = JSON.parse(created.out)
  t.match(key, { name: 'ci pipeline', role: 'client', key: /^clk_/ })
  await acquire(key.key, 'keys') // the printed key works

  const table = await cli('keys', 'list')
  t.equal(table.code, 0)
  t.match(table.out, /^ID\s+NAME\s+ROLE\s+FINGERPRINT/)
  t.match(table.out, new RegExp(`${key.id}\\s+ci pipeline\\s+client\\s+${key.fingerprint}`))
  t.notMatch(table.out, key.key, 'the list never shows a key')

  const revoked = await cli('keys', 'revoke', key.id, '--json')
  t.equal(revoked.code, 0)
  t.ok(JSON.parse(revoked.out).revokedAt)
  const refused = await ctx.app.inject({ method: 'GET', url: '/v1/leases', headers: { 'x-api-key': key.key } })
  t.equal(refused.statusCode, 401, 'the revoked key is refused')

  const [operator] = (await ctx.services.apiKeys.list()).filter((k) => k.role === 'operator')
  const last = await cli('keys', 'revoke', operator!.id)
  t.equal(last.code, 1)
  t.match(last.err, /409 last_operator_key/, 'the API refusal reaches the user with its code')
})

t.test('sessions and leases: list, show with its timeline, release, stop', async (t) => {
  const lease = await acquire(OPERATOR, 'receipts')
  const sessionId: string = lease.session.id

  const sessions = await cli('sessions', 'list', '--status', 'pending')
  t.equal(sessions.code, 0)
  t.match(sessions.out, new RegExp(`${sessionId}\\s+PENDING\\s+shared\\s+1\\b`), 'status, mode and live lease count')
  const none = await cli('sessions', 'list', '--status', 'READY')
  t.equal(none.out, '(none)\n')

  const show = await cli('sessions', 'show', sessionId)
  t.match(show.out, /live leases\s+1/)
  t.match(show.out, /Timeline\n/)
  t.match(show.out, /created[\s\S]*lease_attached/, 'the timeline in order')
  const json = JSON.parse((await cli('sessions', 'show', sessionId, '--json')).out)
  t.same(json.events.map((e: { type: string }) => e.type), ['created', 'lease_attached'])

  const leases = await cli('leases', 'list', '--active')
  t.match(leases.out, new RegExp(`${lease.id}\\s+active\\s+${sessionId}\\s+PENDING\\s+cli-test`))
  const released = await cli('leases', 'release', lease.id)
  t.match(released.out, new RegExp(`${lease.id}\\s+released`))
  t.notMatch((await cli('leases', 'list', '--active')).out, lease.id, 'no longer active')

  const stopped = await cli('sessions', 'stop', sessionId, '--reason', 'cli test')
  t.equal(stopped.code, 0)
  t.match(stopped.out, new RegExp(`${sessionId}\\s+STOPPING`))
  const events = (await ctx.services.sessions.events(sessionId, { limit: 100 })).map((e) => [e.type, e.reason])
  t.same(events.at(-1), ['force_stop', 'cli test'], 'the reason is on the timeline')

  const other = await acquire(OPERATOR, 'invoices')
  const refused = await cli('sessions', 'drain', other.session.id, '--json')
  t.not(refused.code, 0, 'a PENDING session does not drain')
  t.match(refused.err, /PENDING.*force=true/, 'the CLI says why, and what to do')
  // Serving (the reconciler is not run here): drain applies.
  t.ok(await ctx.services.sessions.transition({ id: other.session.id, generation: 1 }, ['PENDING'], 'READY', { type: 'ready' }))
  const drained = await cli('sessions', 'drain', other.session.id, '--json')
  t.equal(JSON.parse(drained.out).status, 'DRAINING')
})

t.test('costs: per workflow, as a table or JSON, filtered by holder', async (t) => {
  await acquire(OPERATOR, 'costs')
  const json = await cli('costs', '--json')
  t.equal(json.code, 0)
  const [row] = JSON.parse(json.out).workflows
  // The CLI's sessions never run (no workers), so no session reported a size: nothing is priced.
  t.match(row, { holder: 'cli-test', costUsd: 0 })
  t.ok(row.leases >= 1 && row.unpricedLeases === row.leases, 'leases on unsized sessions are counted as unpriced, not free')
  const table = await cli('costs', '--holder', 'cli-test')
  t.match(table.out, /^HOLDER\s+LEASES\s+SESSIONS\s+COST \(USD\)\s+UNPRICED\s+LAST LEASE\n/)
  t.match(table.out, new RegExp(`cli-test\\s+${row.leases}\\s+${row.sessions}\\s+0\\.000000\\s+${row.leases}`))
  t.equal((await cli('costs', '--holder', 'nobody')).out, '(none)\n')
  const bad = await cli('costs', '--since', 'yesterday')
  t.equal(bad.code, 1)
  t.match(bad.err, /400 validation_failed/)
})

t.test('bad usage exits 2 with a hint; an unreachable server exits 1', async (t) => {
  for (const argv of [['frobnicate'], ['sessions'], ['sessions', 'show'], ['keys', 'list', '--limit', '3'], ['keys', 'create'], ['keys', 'create', '--name', 'x', '--role', 'admin'], ['--bogus']]) {
    const r = await cli(...argv)
    t.equal(r.code, 2, argv.join(' '))
    t.match(r.err, /^chroma-lease: .+\nRun 'chroma-lease --help' for usage\.\n$/)
  }
  const unknown = await cli('sessions', 'show', '00000000-0000-4000-8000-000000000000')
  t.equal(unknown.code, 1)
  t.match(unknown.err, /404 session_not_found/)
  const gone = await main(['sessions', 'list', '--url', 'http://127.0.0.1:9'], { env: {}, out: () => {}, err: (s) => t.match(s, /cannot reach http:\/\/127\.0\.0\.1:9/) })
  t.equal(gone, 1)
})

t.test('migrate and serve: the installed command applies the migrations and runs the service', async (t) => {
  const run = promisify(execFile)
  const databaseUrl = await freshDatabaseUrl({ migrated: false })
  const dataDir = await mkdtemp(join(tmpdir(), 'chroma-lease-cli-serve-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = { PATH: process.env.PATH, DATABASE_URL: databaseUrl, DATA_DIR: dataDir, LOG_LEVEL: 'warn' }
  const migrations = (await readdir('prisma/migrations', { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name)

  const first = await run(process.execPath, ['bin/chroma-lease.js', 'migrate'], { env })
  t.match(first.stdout, `applied ${migrations.length} migration(s): ${migrations.join(', ')}; 0 already applied`)
  const again = await run(process.execPath, ['bin/chroma-lease.js', 'migrate'], { env })
  t.match(again.stdout, `applied 0 migration(s); ${migrations.length} already applied`, 'a second run changes nothing')
  const db = new pg.Client({ connectionString: databaseUrl })
  await db.connect()
  const applied = await db.query<{ migration_name: string }>('SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL ORDER BY migration_name')
  await db.end()
  t.same(applied.rows.map((r) => r.migration_name), migrations, "recorded in Prisma's bookkeeping")

  const port = await freeLoopbackPort()
  const server = spawn(process.execPath, ['bin/chroma-lease.js', 'serve'], { env: { ...env, PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  server.stdout.on('data', (c) => (output += c))
  server.stderr.on('data', (c) => (output += c))
  const exited = once(server, 'exit')
  t.teardown(() => void (server.exitCode === null && server.kill('SIGKILL')))
  let ready = 0
  for (let i = 0; i < 300 && ready !== 200 && server.exitCode === null; i++) {
    ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status, () => 0)
    if (ready !== 200) await new Promise((r) => setTimeout(r, 100))
  }
  t.equal(ready, 200, `serve answers /readyz (output: ${output})`)
  const sessions = await fetch(`http://127.0.0.1:${port}/v1/sessions`)
  t.equal(sessions.status, 200, 'and the API, on the migrated database')
  server.kill('SIGTERM')
  const [code] = await exited
  t.equal(code, 0, 'serve stops cleanly on SIGTERM')
})
