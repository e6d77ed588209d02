import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { Header } from 'tar'
import { restoreSnapshot } from '../container/agent/restore.ts'
import { StatusFile, type AgentPhase, type AgentStatus } from '../container/agent/status.ts'
import { freeLoopbackPort } from '../src/free-port.ts'
import { startS3Fake } from './helpers/s3-fake.ts'
import { buildSnapshotFixture, chromaAnswers, countChroma, queryChroma } from './helpers/snapshot-fixture.ts'

// The session agent as the launchers run it: a real process restoring real snapshots
// (files, archives, S3 through s3rver and the real SDK) and running the real Chroma.

const AGENT_MAIN = fileURLToPath(new URL('../container/agent/main.ts', import.meta.url))
const root = await mkdtemp(join(tmpdir(), 'agent-test-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(join(root, 'fixture'))

const TOKEN = 'cls_agent-test-session-token'

interface AgentRun {
  dataDir: string
  /** The session's address, with its token. */
  endpoint: { host: string; port: number; token: string }
  exitCode: Promise<number | null>
  waitForPhase(phases: AgentPhase[]): Promise<AgentStatus>
  log(): Promise<string>
  signal(signal: NodeJS.Signals): void
}

let runs = 0
async function startAgent(t: Test, snapshot: string, env: Record<string, string> = {}): Promise<AgentRun> {
  const dir = join(root, `run-${++runs}`)
  await mkdir(dir)
  const dataDir = join(dir, 'data')
  const statusFile = join(dir, 'status.json')
  const logFile = await open(join(dir, 'agent.log'), 'w')
  const endpoint = { host: '127.0.0.1', port: Number(env.CHROMA_PORT ?? (await freeLoopbackPort())), token: TOKEN }
  const child = spawn(process.execPath, ['--import', 'tsx', AGENT_MAIN, '--session', `s-${runs}`], {
    detached: true, // its own process group, so teardown can take Chroma down with it
    stdio: ['ignore', logFile.fd, logFile.fd],
    env: {
      PATH: process.env.PATH!,
      SNAPSHOT_URI: snapshot,
      CHROMA_DATA_DIR: dataDir,
      STATUS_FILE: statusFile,
      SESSION_TOKEN: TOKEN,
      ...env,
      CHROMA_PORT: String(endpoint.port),
    },
  })
  await logFile.close()
  const exitCode = once(child, 'exit').then(([code]) => code as number | null)
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL')
    await exitCode
  })
  return {
    dataDir,
    endpoint,
    exitCode,
    async waitForPhase(phases) {
      const deadline = Date.now() + 30_000
      while (Date.now() < deadline) {
        const status = await readFile(statusFile, 'utf8').then((s) => JSON.parse(s) as AgentStatus, () => null)
        if (status && phases.includes(status.phase)) return status
        await sleep(50)
      }
      throw new Error(`agent did not reach ${phases.join('/')}; log:\n${await readFile(join(dir, 'agent.log'), 'utf8')}`)
    },
    log: () => readFile(join(dir, 'agent.log'), 'utf8'),
    signal: (signal) => process.kill(child.pid!, signal),
  }
}

/** Waits for ready, then proves the restored data is what the fixture wrote. */
async function assertServesFixture(t: Test, run: AgentRun): Promise<void> {
  const status = await run.waitForPhase(['ready', 'failed'])
  t.equal(status.phase, 'ready', status.error ?? 'ready')
  t.ok(status.chromaPid, 'reports the Chroma pid')
  t.equal(await countChroma(run.endpoint, fixture.collection), fixture.count, 'every record restored')
  const [hit] = await queryChroma(run.endpoint, fixture.collection, fixture.vector(17))
  t.equal(hit?.id, 'r-17', 'nearest neighbour of vector 17 is r-17')
  t.match(hit?.document, /^receipt 17: /)
}

async function assertCleanStop(t: Test, run: AgentRun): Promise<void> {
  run.signal('SIGTERM')
  t.equal(await run.exitCode, 0, 'exits 0')
  t.equal((await run.waitForPhase(['exited'])).phase, 'exited')
  t.notOk(existsSync(run.dataDir), 'data directory removed')
  t.notOk(await chromaAnswers(run.endpoint), 'Chroma is down')
}

t.test('restores a directory, serves it, and stops cleanly on SIGTERM', async (t) => {
  const run = await startAgent(t, `file://${fixture.dir}`, { COLLECTION: fixture.collection })
  await assertServesFixture(t, run)
  await assertCleanStop(t, run)
  t.match(await run.log(), /stopped by SIGTERM; stopping/)
})

t.test('restores a .tar archive', async (t) => {
  const run = await startAgent(t, `file://${fixture.tarPath}`)
  await assertServesFixture(t, run)
})

t.test('restores a .tar.gz archive under SNAPSHOT_ROOT', async (t) => {
  const run = await startAgent(t, `file://${fixture.tarGzPath}`, { SNAPSHOT_ROOT: join(root, 'fixture') })
  await assertServesFixture(t, run)
})

t.test('refuses a file:// snapshot outside SNAPSHOT_ROOT', async (t) => {
  const run = await startAgent(t, `file://${fixture.tarPath}`, { SNAPSHOT_ROOT: join(root, 'elsewhere') })
  const status = await run.waitForPhase(['failed'])
  t.match(status.error, /SNAPSHOT_ROOT .*elsewhere does not exist/)
  t.equal(await run.exitCode, 1)
})

t.test('from S3 (s3rver, real SDK)', async (t) => {
  const s3 = await startS3Fake(join(root, 's3'))
  t.teardown(() => s3.close())
  await s3.putFile('receipts/v1.tar.gz', fixture.tarGzPath)
  await s3.putDirectory('receipts/v1-files', fixture.dir)

  t.test('an archive object, streamed into tar', async (t) => {
    const run = await startAgent(t, `s3://${s3.bucket}/receipts/v1.tar.gz`, s3.env)
    await assertServesFixture(t, run)
    await assertCleanStop(t, run)
  })

  t.test('a prefix, object by object', async (t) => {
    const run = await startAgent(t, `s3://${s3.bucket}/receipts/v1-files`, s3.env)
    await assertServesFixture(t, run)
  })

  t.test('a missing key fails with the reason', async (t) => {
    const run = await startAgent(t, `s3://${s3.bucket}/receipts/nope.tar`, s3.env)
    const status = await run.waitForPhase(['failed'])
    t.equal(status.error, `snapshot s3://${s3.bucket}/receipts/nope.tar cannot be read from S3: it does not exist`)
    t.equal(await run.exitCode, 1)
  })
})

t.test('SIGTERM during the restore stops cleanly', async (t) => {
  // An "S3" that accepts connections and never answers: the restore hangs until stopped.
  const silent = createServer(() => {})
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.teardown(() => silent.close())
  const endpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}`
  const run = await startAgent(t, 's3://snapshots/receipts/v1.tar', {
    S3_ENDPOINT: endpoint,
    AWS_ACCESS_KEY_ID: 'x',
    AWS_SECRET_ACCESS_KEY: 'x',
  })
  await run.waitForPhase(['restoring'])
  run.signal('SIGTERM')
  t.equal(await run.exitCode, 0, 'exits 0')
  t.equal((await run.waitForPhase(['exited', 'failed'])).phase, 'exited')
  t.notOk(existsSync(run.dataDir), 'data directory removed')
})

t.test('a corrupt archive fails clearly and starts no server', async (t) => {
  const corrupt = join(root, 'corrupt.tar')
  await writeFile(corrupt, 'this is not a tar archive, just some bytes\n'.repeat(40))
  const run = await startAgent(t, `file://${corrupt}`)
  const status = await run.waitForPhase(['failed'])
  t.match(status.error, `snapshot file://${corrupt} is not a valid tar archive`)
  t.notOk(status.chromaPid, 'no Chroma was started')
  t.equal(await run.exitCode, 1)
  t.notOk(await chromaAnswers(run.endpoint))
  t.notOk(existsSync(run.dataDir), 'partial data removed')
})

t.test('refuses archive entries that would leave the data directory', async (t) => {
  const cases = [
    { name: 'dotdot', entry: { path: '../escaped.txt', type: 'File' as const, body: 'gotcha' }, reason: /escapes the data directory/ },
    { name: 'symlink', entry: { path: 'etc', type: 'SymbolicLink' as const, linkpath: '/etc' }, reason: /a SymbolicLink entry "etc"/ },
  ]
  for (const c of cases) {
    t.test(c.name, async (t) => {
      const archive = join(root, `${c.name}.tar`)
      await writeFile(archive, tarOf([{ path: 'chroma.sqlite3', type: 'File', body: 'x' }, c.entry]))
      const run = await startAgent(t, `file://${archive}`)
      const status = await run.waitForPhase(['failed'])
      t.match(status.error, c.reason)
      t.match(status.error, 'refusing to restore it')
      t.equal(await run.exitCode, 1)
      t.notOk(existsSync(join(run.dataDir, '..', 'escaped.txt')), 'nothing written outside the data directory')
    })
  }
})

t.test('restores a .tar.zst archive (fzstd on Node 20, zlib where Node has zstd)', { skip: !fixture.tarZstPath && 'no zstd CLI to make one' }, async (t) => {
  const run = await startAgent(t, `file://${fixture.tarZstPath}`)
  await assertServesFixture(t, run)
})

t.test('fails when the named collection is not in the snapshot', async (t) => {
  const run = await startAgent(t, `file://${fixture.tarPath}`, { COLLECTION: 'invoices' })
  const status = await run.waitForPhase(['failed'])
  t.equal(status.error, `collection "invoices" is not in snapshot file://${fixture.tarPath}`)
  t.equal(await run.exitCode, 1)
  t.notOk(await chromaAnswers(run.endpoint), 'Chroma stopped')
})

t.test('fails with Chroma\'s own words when Chroma cannot start', async (t) => {
  const squatter = createServer()
  const port = await freeLoopbackPort()
  squatter.listen(port, '127.0.0.1')
  await once(squatter, 'listening')
  t.teardown(() => squatter.close())
  const run = await startAgent(t, `file://${fixture.tarPath}`, { CHROMA_INTERNAL_PORT: String(port) })
  const status = await run.waitForPhase(['failed'])
  t.match(status.error, /chroma exited before answering its heartbeat .*Address 127\.0\.0\.1:\d+ is not available/)
  t.equal(await run.exitCode, 1)

  t.test('and fails at once when the session port is taken', async (t) => {
    const run = await startAgent(t, `file://${fixture.tarPath}`, { CHROMA_PORT: String(port) })
    const status = await run.waitForPhase(['failed'])
    t.match(status.error, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`))
    t.equal(await run.exitCode, 1)
  })
})

t.test('restore progress counts the snapshot bytes and reaches 100%', async (t) => {
  const seen: Array<[number, number | undefined]> = []
  const dataDir = join(root, 'in-process')
  await mkdir(dataDir)
  await restoreSnapshot(`file://${fixture.tarGzPath}`, dataDir, {
    s3: { region: 'us-east-1' },
    signal: new AbortController().signal,
    onProgress: (bytes, totalBytes) => seen.push([bytes, totalBytes]),
  })
  const { size } = await stat(fixture.tarGzPath)
  t.same(seen.at(-1), [size, size], 'ends at the archive size')
  t.ok(seen.every(([bytes], i) => i === 0 || bytes >= seen[i - 1]![0]), 'never goes back')

  const statusPath = join(root, 'progress-status.json')
  const status = new StatusFile(statusPath, (err) => t.error(err))
  await status.progress(50, 200)
  await status.progress(100, 200)
  t.match(
    JSON.parse(await readFile(statusPath, 'utf8')),
    { phase: 'restoring', bytes: 50, totalBytes: 200, percent: 25, pid: process.pid },
    'a second progress report within 250 ms is not written',
  )
  t.notOk(existsSync(`${statusPath}.${process.pid}.tmp`), 'written through a temporary file, renamed into place')
  await sleep(300)
  await status.progress(150, 200)
  t.match(JSON.parse(await readFile(statusPath, 'utf8')), { bytes: 150, percent: 75 }, 'a later one is')
})

/** A tar archive built header by header, to hold entries no well-behaved tool writes. */
function tarOf(entries: Array<{ path: string; type: 'File' | 'SymbolicLink'; body?: string; linkpath?: string }>): Buffer {
  const blocks: Buffer[] = []
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '')
    const header = new Header({ path: e.path, type: e.type, linkpath: e.linkpath, size: body.length, mode: 0o644, mtime: new Date() })
    header.encode()
    blocks.push(header.block!, body, Buffer.alloc((512 - (body.length % 512)) % 512))
  }
  blocks.push(Buffer.alloc(1024))
  return Buffer.concat(blocks)
}

/** A request to the session's front, with the session token unless told otherwise. */
async function call(run: AgentRun, method: string, path: string, token: string | null = TOKEN, body?: unknown) {
  const res = await fetch(`http://127.0.0.1:${run.endpoint.port}${path}`, {
    method,
    headers: { ...(token ? { 'x-chroma-token': token } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  })
  const text = await res.text()
  return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : null }
}

t.test('the session refuses every request without its token', async (t) => {
  const run = await startAgent(t, `file://${fixture.tarPath}`)
  await assertServesFixture(t, run)
  for (const [name, token] of [['no token', null], ['a wrong token', 'cls_not-the-session-token'], ['a lease token', 'clt_some-lease-token-of-another']] as const) {
    for (const path of ['/api/v2/heartbeat', `/api/v2/tenants/default_tenant/databases/default_database/collections/${fixture.collection}`, '/_agent/status']) {
      const res = await call(run, 'GET', path, token)
      t.equal(res.status, 401, `${name}: ${path}`)
      t.equal(res.body?.code, 'session_token_required')
    }
  }
  const bearer = await fetch(`http://127.0.0.1:${run.endpoint.port}/api/v2/heartbeat`, { headers: { authorization: `Bearer ${TOKEN}` } })
  t.equal(bearer.status, 200, 'Authorization: Bearer with the token passes')
  await bearer.body?.cancel()
  const status = await call(run, 'GET', '/_agent/status')
  t.match(status, { status: 200, body: { phase: 'ready', restored: `file://${fixture.tarPath}` } })
  t.not(status.body?.chromaPid, undefined)
  t.equal((await call(run, 'POST', '/_agent/save')).body?.code, 'save_unsupported', 'file:// snapshots cannot be saved back')
})

t.test("the dead man's switch", async (t) => {
  t.test('stops the session when the control plane goes silent', async (t) => {
    const run = await startAgent(t, `file://${fixture.tarPath}`, { DEAD_MAN_SECONDS: '2' })
    await run.waitForPhase(['ready'])
    t.equal(await run.exitCode, 0, 'exits 0, on its own')
    const status = await run.waitForPhase(['exited'])
    t.match(status.stopReason, /has not confirmed the session for 2s \(dead man's switch\)/)
    t.notOk(existsSync(run.dataDir), 'data directory removed')
    t.notOk(await chromaAnswers(run.endpoint), 'Chroma is down')
  })

  t.test('does not fire while the control plane confirms', async (t) => {
    const run = await startAgent(t, `file://${fixture.tarPath}`, { DEAD_MAN_SECONDS: '2' })
    await run.waitForPhase(['ready'])
    // Confirm for three times the switch's delay; each confirmation restarts it.
    for (let i = 0; i < 12; i++) {
      const confirmed = await call(run, 'POST', '/_agent/confirm')
      t.equal(confirmed.body?.phase, 'ready', `confirmation ${i + 1} answers the status`)
      await sleep(500)
    }
    t.ok(await chromaAnswers(run.endpoint), 'still serving')
    t.equal((await call(run, 'POST', '/_agent/confirm', null)).status, 401, 'a confirmation needs the token too')
    await assertCleanStop(t, run)
  })
})

t.test('sha256 manifests', async (t) => {
  const { createHash } = await import('node:crypto')
  const sha = createHash('sha256').update(await readFile(fixture.tarGzPath)).digest('hex')
  const dir = join(root, 'manifests')
  await mkdir(dir)

  t.test('a matching sidecar manifest is checked and passes', async (t) => {
    const archive = join(dir, 'good.tar.gz')
    await writeFile(archive, await readFile(fixture.tarGzPath))
    await writeFile(`${archive}.sha256`, `${sha}  good.tar.gz\n`)
    await assertServesFixture(t, await startAgent(t, `file://${archive}`))
  })

  t.test('a wrong checksum fails clearly and serves nothing', async (t) => {
    const archive = join(dir, 'bad.tar.gz')
    await writeFile(archive, await readFile(fixture.tarGzPath))
    await writeFile(`${archive}.sha256`, `${'0'.repeat(64)}  bad.tar.gz\n`)
    const run = await startAgent(t, `file://${archive}`)
    const status = await run.waitForPhase(['failed'])
    t.equal(status.error, `snapshot file://${archive} does not match its manifest: the archive has sha256 ${sha}, ${archive}.sha256 says ${'0'.repeat(64)}; refusing to serve it`)
    t.notOk(status.chromaPid, 'no Chroma was started')
    t.equal(await run.exitCode, 1)
    t.notOk(existsSync(run.dataDir), 'restored files removed')
  })
})
