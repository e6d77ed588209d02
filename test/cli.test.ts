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
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { freshDatabaseUrl } from './helpers/database.ts'

// The `chroma-lease` CLI against a real control plane on a loopback port. Workers are
// not started, so sessions stay PENDING: the CLI's job is the API, not the lifecycle.
const OPERATOR = 'operator-key-0123456789'
const root = await mkdtemp(join(tmpdir(), 'chroma-lease-cli-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true, apiKeys: [{ role: 'operator', key: OPERATOR }] })

/** Runs the CLI in this process with the environment a user would set, against `server` with `key`. */
async function cliAt(server: { url: string }, key: string, ...argv: string[]): Promise<{ code: number | null; out: string; err: string }> {
  let out = ''
  let err = ''
  const io: Io = {
    env: { CHROMA_LEASE_URL: server.url, CHROMA_LEASE_API_KEY: key },
    out: (s) => (out += s),
    err: (s) => (err += s),
  }
  const code = await main(argv, io)
  return { code, out, err }
}
/** The CLI against this file's control plane with the operator key. */
const cli = (...argv: string[]) => cliAt(ctx, OPERATOR, ...argv)

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

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'

t.test('warm-pool: off on this server, it says so, and a hint is refused with the 409', async (t) => {
  const table = await cli('warm-pool')
  t.equal(table.code, 0, table.err)
  t.match(table.out, /^enabled\s+false \(WARM_POOL_MAX=0/)
  t.match(table.out, /\nmax\s+0\n/)
  t.match(table.out, /\nUnclaimed agents\n\(none\)\n$/)
  t.match(JSON.parse((await cli('warm-pool', '--json')).out), { enabled: false, target: 0, hinted: 0, agents: [] }, '--json prints the API\'s JSON')
  const refused = await cli('warm-pool', 'hint', '--count', '3')
  t.equal(refused.code, 1)
  t.match(refused.err, /^chroma-lease: 409 warm_pool_disabled: the warm pool is off on this server \(WARM_POOL_MAX=0\)/, 'the problem, plainly')
  t.equal(refused.out, '')
  t.equal((await cli('warm-pool', 'hints')).out, '(none)\n', 'and nothing was recorded')
})

t.test('warm-pool with a pool: its state and agents, hint, hints, unhint', async (t) => {
  const CLIENT = 'client-key-warm-pool-0123'
  const clock = new ManualClock()
  const pool = await buildTestApp(t, { clock, snapshotRoot: root, listen: true, warmPool: { min: 0, max: 5 }, apiKeys: [{ role: 'operator', key: OPERATOR }, { role: 'client', key: CLIENT }] })
  const op = (...argv: string[]) => cliAt(pool, OPERATOR, ...argv)
  const state = async () => JSON.parse((await op('warm-pool', '--json')).out)
  t.match(await state(), { enabled: true, min: 0, max: 5, target: 0, hinted: 0 })

  const made = await op('warm-pool', 'hint', '--count', '3', '--seconds', '120', '--json')
  t.equal(made.code, 0, made.err)
  const hint = JSON.parse(made.out)
  t.match(hint, { id: String, count: 3 })
  t.equal(Date.parse(hint.expiresAt) - Date.parse(hint.createdAt), 120_000, '--seconds is how long it lasts')
  clock.advance(1)
  const printed = await cliAt(pool, CLIENT, 'warm-pool', 'hint', '--count', '1')
  t.equal(printed.code, 0, 'a client key will do: the key a workflow acquires with')
  t.match(printed.out, new RegExp(`^ID\\s+COUNT\\s+AGE\\s+EXPIRES\n${UUID}\\s+1\\s+\\S+\\s+\\d{4}-\\d\\d-\\d\\dT`), 'the hint, as a table')
  const clientHint = printed.out.split('\n')[1]!.split(/\s+/)[0]!

  // The pass (not run by a worker here) launches the hinted agents: PENDING rows, listed unclaimed.
  t.match(await pool.services.warmPool.refill(), { launched: 4, target: 4 })
  const table = await op('warm-pool')
  t.equal(table.code, 0, table.err)
  t.match(table.out, /^enabled\s+true\nmin\s+0\nmax\s+5\ntarget\s+4\nhinted\s+4\nunfilled\s+4\n/, 'the size: bounds, target, hinted, unfilled')
  t.match(table.out, /\nagents\s+0 READY, 0 STARTING, 4 PENDING \(unclaimed\)\n/)
  t.match(table.out, /\ndemand\s+0 acquires needed a new session in the last \d+s; a refill takes \d+(\.\d+)?s\n/)
  t.match(table.out, /\nidle cost\s+\$0\.000000 for \d+s of \d+ agents before their claim/)
  const agents = table.out.split('Unclaimed agents\n')[1]!.trim().split('\n')
  t.match(agents[0], /^ID\s+STATUS\s+GENERATION\s+ENDPOINT\s+AGE\s+READY FOR$/)
  t.equal(agents.length, 5, 'a row per unclaimed agent')
  for (const row of agents.slice(1)) t.match(row, new RegExp(`^${UUID}\\s+PENDING\\s+1\\s+-\\s+\\S+\\s+-$`))
  t.equal(JSON.parse((await op('warm-pool', '--limit', '2', '--json')).out).agents.length, 2, '--limit bounds the agents listed')

  const hints = await op('warm-pool', 'hints')
  t.match(hints.out, new RegExp(`^ID\\s+COUNT\\s+AGE\\s+EXPIRES\n${hint.id}\\s+3\\s[^\n]*\n${clientHint}\\s+1\\s`), 'an operator sees every active hint, oldest first')
  t.same(JSON.parse((await cliAt(pool, CLIENT, 'warm-pool', 'hints', '--json')).out).hints.map((h: { id: string }) => h.id), [clientHint], 'a client key its own')
  const forbidden = await cliAt(pool, CLIENT, 'warm-pool')
  t.equal(forbidden.code, 1)
  t.match(forbidden.err, /^chroma-lease: 403 /, "the pool's state is for operators")

  const ended = await op('warm-pool', 'unhint', hint.id.slice(0, 8))
  t.equal(ended.code, 0, ended.err)
  t.match(ended.out, new RegExp(`^ID\\s+COUNT[^\n]*\n${hint.id}\\s+3\\s[^\n]*\nEnded: the pool's target no longer counts hint ${hint.id}\\.\n$`), 'unhint takes a prefix and shows what ended')
  t.match(await state(), { hinted: 1, target: 1 }, 'the target drops by its count')
  t.same(JSON.parse((await op('warm-pool', 'hints', '--json')).out).hints.map((h: { id: string }) => h.id), [clientHint])

  // Bad input: the API's problem, printed plainly, exit 1, nothing changed.
  const aboveMax = await op('warm-pool', 'hint', '--count', '6')
  t.equal(aboveMax.code, 1)
  t.match(aboveMax.err, /^chroma-lease: 400 warm_pool_hint_above_max: count 6 is above WARM_POOL_MAX \(5\)/)
  const tooShort = await op('warm-pool', 'hint', '--count', '2', '--seconds', '5')
  t.equal(tooShort.code, 1)
  t.match(tooShort.err, /^chroma-lease: 400 validation_failed: .*seconds/)
  const gone = await op('warm-pool', 'unhint', hint.id)
  t.equal(gone.code, 1, 'an ended hint cannot end again')
  t.match(gone.err, /^chroma-lease: 404 warm_pool_hint_not_found: /)
  const noPrefix = await op('warm-pool', 'unhint', 'ffff0000')
  t.equal(noPrefix.code, 1)
  t.match(noPrefix.err, /^chroma-lease: no hint id starts with ffff0000 among the active hints\n$/)
  t.match(await state(), { hinted: 1, target: 1 }, 'the refusals changed nothing')
  t.equal(JSON.parse((await op('warm-pool', 'hints', '--json')).out).hints.length, 1)
})

t.test('pins: create, list with what each keeps READY, remove', async (t) => {
  await mkdir(join(root, 'pinned'), { recursive: true })
  const snapshot = `file://${root}/pinned`
  t.equal((await cli('pins', 'list')).out, '(none)\n')

  const shared = await cli('pins', 'create', '--snapshot', snapshot, '--collection', 'receipts', '--json')
  t.equal(shared.code, 0, shared.err)
  const pin = JSON.parse(shared.out)
  // No pins pass runs here (workers are not started), so nothing is starting yet.
  t.match(pin, { id: String, snapshot, collection: 'receipts', mode: 'shared', sessions: 1, ready: 0, starting: 0 })
  const exclusive = await cli('pins', 'create', '--snapshot', snapshot, '--mode', 'exclusive', '--sessions', '2')
  t.equal(exclusive.code, 0, exclusive.err)
  t.match(exclusive.out, new RegExp(`^ID\\s+MODE\\s+SESSIONS\\s+READY\\s+STARTING\\s+SNAPSHOT\\s+COLLECTION\\s+AGE\n${UUID}\\s+exclusive\\s+2\\s+0\\s+0\\s+file://\\S+\\s+-\\s+\\S+\n`))
  t.match(exclusive.out, /pins list' shows them READY/)
  const standbys = exclusive.out.split('\n')[1]!.split(/\s+/)[0]!

  const list = await cli('pins', 'list')
  t.equal(list.code, 0, list.err)
  t.match(list.out, new RegExp(`\n${pin.id}\\s+shared\\s+1\\s+0\\s+0\\s+file://\\S+\\s+receipts\\s`))
  t.match(list.out, new RegExp(`\n${standbys}\\s+exclusive\\s+2\\s+0\\s+0\\s`))
  t.same(JSON.parse((await cli('pins', 'list', '--json')).out).pins.map((p: { id: string }) => p.id).sort(), [pin.id, standbys].sort())

  // Bad input: the API's problem, printed plainly, exit 1, no pin made.
  for (const [argv, problem] of [
    [['--snapshot', 'file:///nowhere/at/all.tar'], /^chroma-lease: 422 snapshot_not_found: /],
    [['--snapshot', snapshot, '--sessions', '2'], /^chroma-lease: 400 invalid_pin: a shared pin keeps the snapshot's one shared session/],
    [['--snapshot', snapshot, '--mode', 'exclusive', '--sessions', '51'], /^chroma-lease: 400 validation_failed: /],
    [['--snapshot', snapshot, '--collection', 'receipts'], new RegExp(`^chroma-lease: 409 pin_exists: .*removing pin ${pin.id} first`)],
  ] as const) {
    const r = await cli('pins', 'create', ...argv)
    t.equal(r.code, 1, argv.join(' '))
    t.match(r.err, problem)
  }
  t.equal(JSON.parse((await cli('pins', 'list', '--json')).out).pins.length, 2, 'the refusals made no pin')

  const removed = await cli('pins', 'remove', standbys.slice(0, 8), '--json')
  t.equal(removed.code, 0, removed.err)
  t.match(JSON.parse(removed.out), { id: standbys, mode: 'exclusive' }, 'remove takes a prefix and prints the pin as it was')
  t.same(JSON.parse((await cli('pins', 'list', '--json')).out).pins.map((p: { id: string }) => p.id), [pin.id])
  const again = await cli('pins', 'remove', standbys)
  t.equal(again.code, 1)
  t.match(again.err, /^chroma-lease: 404 pin_not_found: /)
  const none = await cli('pins', 'remove', 'ffff0000')
  t.match(none.err, /^chroma-lease: no pin id starts with ffff0000\n$/)
})

t.test('bad usage exits 2 with a hint; an unreachable server exits 1', async (t) => {
  for (const argv of [
    ['frobnicate'], ['sessions'], ['sessions', 'show'], ['keys', 'list', '--limit', '3'], ['keys', 'create'], ['keys', 'create', '--name', 'x', '--role', 'admin'], ['--bogus'],
    ['warm-pool', 'hint'], ['warm-pool', 'hint', '--count', 'many'], ['warm-pool', '--count', '3'], ['warm-pool', 'unhint'], ['warm-pool', 'frobnicate'],
    ['pins'], ['pins', 'create'], ['pins', 'create', '--snapshot', 'file:///x', '--mode', 'both'], ['pins', 'remove'], ['pins', 'remove', 'abc'],
  ]) {
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
