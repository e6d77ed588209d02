import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
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
import { procUsage } from '../container/agent/usage.ts'
import { freeLoopbackPort } from '../src/free-port.ts'
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3'
import { startS3Fake, startStallingS3, type S3Fake } from './helpers/s3-fake.ts'
import { buildSnapshotFixture, chromaAnswers, chromaClient, countChroma, queryChroma } from './helpers/snapshot-fixture.ts'

// The session agent as the launchers run it: a real process restoring real snapshots
// (files, archives, S3 through s3rver and the real SDK) and running the real Chroma.
// Some twenty real agents, one after another: more than the suite's 180 s per file on a
// loaded 2-core machine (178 s seen in a full run).
t.setTimeout(360_000)

const AGENT_MAIN = fileURLToPath(new URL('../container/agent/main.ts', import.meta.url))
const root = await mkdtemp(join(tmpdir(), 'agent-test-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(join(root, 'fixture'))

const TOKEN = 'cls_agent-test-session-token'
const CONTROL = 'clc_agent-test-control-token'

interface AgentRun {
  dataDir: string
  /** The session's address, with its token. */
  endpoint: { host: string; port: number; token: string }
  exitCode: Promise<number | null>
  waitForPhase(phases: AgentPhase[]): Promise<AgentStatus>
  log(): Promise<string>
  signal(signal: NodeJS.Signals): void
  pid: number
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
      CONTROL_TOKEN: CONTROL,
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
    pid: child.pid!,
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

t.test('zstd: the pure-JavaScript decoder agrees with zstd, and a corrupt .tar.zst fails clearly', { skip: !fixture.tarZstPath && 'no zstd CLI to make one' }, async (t) => {
  const { fzstdDecompressor } = await import('../container/agent/archive.ts')
  const { createReadStream } = await import('node:fs')
  const chunks: Buffer[] = []
  const { pipeline } = await import('node:stream/promises')
  await pipeline(createReadStream(fixture.tarZstPath!), fzstdDecompressor(), async function* (source) {
    for await (const chunk of source) chunks.push(chunk as Buffer)
  })
  t.ok(Buffer.concat(chunks).equals(await readFile(fixture.tarPath)), 'fzstd (used where Node and the machine have no zstd) decodes the archive exactly')

  const corrupt = join(root, 'corrupt.tar.zst')
  const good = await readFile(fixture.tarZstPath!)
  await writeFile(corrupt, Buffer.concat([good.subarray(0, 64), Buffer.alloc(4096, 0x5a)]))
  const run = await startAgent(t, `file://${corrupt}`)
  const status = await run.waitForPhase(['failed'])
  t.match(status.error, `snapshot file://${corrupt} is not a valid tar.zst archive: `)
  t.notOk(status.chromaPid, 'nothing served')
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
  let nowMs = 1_000_000 // the throttle's time, moved by the test: no real-time margin to miss
  const status = new StatusFile(statusPath, (err) => t.error(err), () => nowMs)
  await status.progress(50, 200)
  nowMs += 249
  await status.progress(100, 200)
  t.match(
    JSON.parse(await readFile(statusPath, 'utf8')),
    { phase: 'restoring', bytes: 50, totalBytes: 200, percent: 25, pid: process.pid },
    'a second progress report within 250 ms is not written',
  )
  t.notOk(existsSync(`${statusPath}.${process.pid}.tmp`), 'written through a temporary file, renamed into place')
  nowMs += 1
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

/** A request to the session's front: the control token for the agent's endpoints, the session token for Chroma, unless told otherwise. */
async function call(run: AgentRun, method: string, path: string, token: string | null = path.startsWith('/_agent/') && path !== '/_agent/status' ? CONTROL : TOKEN, body?: unknown) {
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
  t.match(status, { status: 200, body: { phase: 'ready', restored: `file://${fixture.tarPath}` } }, 'a lease holder may read the status')
  for (const path of ['/_agent/confirm', '/_agent/save']) {
    const res = await call(run, 'POST', path, TOKEN)
    t.match(res, { status: 403, body: { code: 'control_token_required' } }, `the session token cannot ${path}`)
  }
  t.equal((await call(run, 'GET', '/api/v2/heartbeat', CONTROL)).status, 401, 'the control token does not open Chroma')
  t.not(status.body?.chromaPid, undefined)

  // Memory and CPU of the session: the agent and Chroma together, as /proc sees them.
  const { usage } = (await call(run, 'POST', '/_agent/confirm')).body as { usage: { memoryBytes: number; cpuSeconds: number; cpuCores: number } }
  const agent = procUsage(run.pid)!
  const chroma = procUsage(status.body!.chromaPid as number)!
  t.ok(Math.abs(usage.memoryBytes - (agent.memoryBytes + chroma.memoryBytes)) < 0.2 * (agent.memoryBytes + chroma.memoryBytes), `memory: ${usage.memoryBytes} ≈ agent ${agent.memoryBytes} + Chroma ${chroma.memoryBytes}`)
  t.ok(usage.cpuSeconds >= chroma.cpuSeconds && usage.cpuSeconds <= agent.cpuSeconds + chroma.cpuSeconds + 0.5, `CPU time ${usage.cpuSeconds} s covers Chroma's ${chroma.cpuSeconds} s and the agent's ${agent.cpuSeconds} s`)
  t.ok(usage.cpuCores >= 0 && usage.cpuCores < 4, `cores busy since the last reading: ${usage.cpuCores}`)
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
    // A switch of 4 s confirmed about every 0.5 s: 3.5 s of margin for a loaded machine.
    const run = await startAgent(t, `file://${fixture.tarPath}`, { DEAD_MAN_SECONDS: '4' })
    await run.waitForPhase(['ready'])
    // Confirm for twice the switch's delay; each confirmation restarts it.
    let i = 0
    for (const until = Date.now() + 8_000; Date.now() < until; i++) {
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

async function objectText(s3: S3Fake, key: string): Promise<string | null> {
  try {
    const o = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }))
    return (await o.Body?.transformToString()) ?? ''
  } catch {
    return null
  }
}

async function keysUnder(s3: S3Fake, prefix: string): Promise<string[]> {
  const page = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }))
  return (page.Contents ?? []).map((o) => o.Key!).sort()
}

t.test('every archive format and a verified prefix from S3', async (t) => {
  const s3 = await startS3Fake(join(root, 's3-formats'))
  t.teardown(() => s3.close())
  const { createHash } = await import('node:crypto')
  const formats = [['tar', fixture.tarPath], ['tar.gz', fixture.tarGzPath], ...(fixture.tarZstPath ? [['tar.zst', fixture.tarZstPath]] : [])]
  for (const [ext, path] of formats) {
    t.test(`.${ext} with its manifest`, async (t) => {
      await s3.putFile(`formats/snap.${ext}`, path!)
      const sha = createHash('sha256').update(await readFile(path!)).digest('hex')
      await s3.client.send(new (await import('@aws-sdk/client-s3')).PutObjectCommand({ Bucket: s3.bucket, Key: `formats/snap.${ext}.sha256`, Body: `${sha}  snap.${ext}\n` }))
      await assertServesFixture(t, await startAgent(t, `s3://${s3.bucket}/formats/snap.${ext}`, s3.env))
    })
  }

  t.test('a prefix with a SHA256SUMS manifest', async (t) => {
    await s3.putDirectory('formats/files', fixture.dir)
    const { readdir } = await import('node:fs/promises')
    const files = (await readdir(fixture.dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile())
    const lines = await Promise.all(files.map(async (e) => {
      const abs = join(e.parentPath, e.name)
      return `${createHash('sha256').update(await readFile(abs)).digest('hex')}  ${abs.slice(fixture.dir.length + 1)}`
    }))
    await s3.client.send(new (await import('@aws-sdk/client-s3')).PutObjectCommand({ Bucket: s3.bucket, Key: 'formats/files/SHA256SUMS', Body: lines.join('\n') + '\n' }))
    await assertServesFixture(t, await startAgent(t, `s3://${s3.bucket}/formats/files`, s3.env))

    // One file changed after the manifest was written: the restore fails and nothing is served.
    await s3.client.send(new (await import('@aws-sdk/client-s3')).PutObjectCommand({ Bucket: s3.bucket, Key: 'formats/files/chroma.sqlite3', Body: 'tampered' }))
    const run = await startAgent(t, `s3://${s3.bucket}/formats/files`, s3.env)
    const status = await run.waitForPhase(['failed'])
    t.match(status.error, /^snapshot s3:\/\/snapshots\/formats\/files does not match its manifest: chroma\.sqlite3 has sha256 [0-9a-f]{64}, s3:\/\/snapshots\/formats\/files\/SHA256SUMS says [0-9a-f]{64}; refusing to serve it$/)
    t.notOk(status.chromaPid, 'nothing served')
    t.equal(await run.exitCode, 1)
  })

  t.test('a corrupt .tar.gz object fails clearly', async (t) => {
    await s3.client.send(new (await import('@aws-sdk/client-s3')).PutObjectCommand({ Bucket: s3.bucket, Key: 'formats/corrupt.tar.gz', Body: Buffer.alloc(4096, 7) }))
    const run = await startAgent(t, `s3://${s3.bucket}/formats/corrupt.tar.gz`, s3.env)
    const status = await run.waitForPhase(['failed'])
    t.match(status.error, /^snapshot s3:\/\/snapshots\/formats\/corrupt\.tar\.gz is not a valid tar\.gz archive: /)
    t.notOk(status.chromaPid, 'nothing served')
  })
})

t.test('save-back to S3', async (t) => {
  const s3 = await startS3Fake(join(root, 's3-save'))
  t.teardown(() => s3.close())
  await s3.putFile('receipts/v1.tar.gz', fixture.tarGzPath)
  const series = `s3://${s3.bucket}/receipts/v1`
  const latest = async () => JSON.parse((await objectText(s3, 'receipts/v1/latest')) ?? 'null') as { snapshot: string; sha256: string; version: string } | null
  const extra = { ids: ['saved-1'], embeddings: [fixture.vector(5).map((x) => -x)], documents: ['receipt saved: tea 3.10'] }
  /** A session of the series behind an S3 that stalls every upload of a version (it gets halfway, never done). */
  const stallingUploads = async (t: Test) => {
    const stall = await startStallingS3(s3.endpoint, (method, path) => method !== 'GET' && method !== 'HEAD' && path.includes('/versions/'))
    t.teardown(() => stall.close())
    return stall
  }

  t.test('round trip: write, save, restore the new version, read the write', async (t) => {
    const run = await startAgent(t, `s3://${s3.bucket}/receipts/v1.tar.gz`, s3.env)
    await run.waitForPhase(['ready'])
    const col = await chromaClient(`http://127.0.0.1:${run.endpoint.port}`, TOKEN).getCollection({ name: fixture.collection })
    await col.add(extra)
    const saved = await call(run, 'POST', '/_agent/save')
    t.equal(saved.status, 200, JSON.stringify(saved.body))
    t.match(saved.body, { snapshot: /^s3:\/\/snapshots\/receipts\/v1\/versions\/\d{8}T\d{6}Z-[0-9a-f]{8}\.tar\.gz$/, series, sha256: /^[0-9a-f]{64}$/ })
    t.equal(await countChroma(run.endpoint, fixture.collection), fixture.count + 1, 'serving again after the save, the write included')
    t.match(await latest(), { snapshot: saved.body!.snapshot, sha256: saved.body!.sha256 }, 'latest names the new version')
    const key = String(saved.body!.snapshot).slice(`s3://${s3.bucket}/`.length)
    t.equal(await objectText(s3, `${key}.sha256`), `${saved.body!.sha256}  ${saved.body!.version}.tar.gz\n`, 'with its manifest')
    t.match((await run.waitForPhase(['ready'])).lastSave, { snapshot: saved.body!.snapshot }, 'the status reports the save')

    const again = await startAgent(t, series, s3.env)
    const status = await again.waitForPhase(['ready', 'failed'])
    t.equal(status.restored, saved.body!.snapshot, 'the series restores what latest names')
    const got = await chromaClient(`http://127.0.0.1:${again.endpoint.port}`, TOKEN).getCollection({ name: fixture.collection }).then((c) => c.get({ ids: ['saved-1'] }))
    t.same(got.documents, ['receipt saved: tea 3.10'], 'the write survived the round trip')
  })

  // Random bytes do not compress: an archive of over two 5 MB parts, so the save is a
  // multipart upload (@aws-sdk/lib-storage) that really reaches s3rver.
  const PADDING_BYTES = 11 * 1024 * 1024
  const sha256Of = async (path: string) => createHash('sha256').update(await readFile(path)).digest('hex')
  let padding = ''

  t.test('a multipart save (three parts) completes on the store and restores', async (t) => {
    const run = await startAgent(t, series, s3.env)
    await run.waitForPhase(['ready'])
    await writeFile(join(run.dataDir, 'padding.bin'), randomBytes(PADDING_BYTES))
    padding = await sha256Of(join(run.dataDir, 'padding.bin'))
    const saved = await call(run, 'POST', '/_agent/save')
    t.equal(saved.status, 200, JSON.stringify(saved.body))
    t.ok(Number(saved.body!.bytes) > 2 * 5 * 1024 * 1024, `${saved.body!.bytes} bytes: more than two parts`)
    t.same(await s3.incompleteUploads(), [], 'the multipart upload was completed, nothing left open')
    t.match(await latest(), { snapshot: saved.body!.snapshot }, 'latest names it')
    const again = await startAgent(t, series, s3.env)
    t.equal((await again.waitForPhase(['ready', 'failed'])).restored, saved.body!.snapshot)
    t.equal(await sha256Of(join(again.dataDir, 'padding.bin')), padding, 'restored byte for byte')
    t.equal(await countChroma(again.endpoint, fixture.collection), fixture.count + 1)
  })

  t.test('a save killed mid-multipart-upload leaves the previous latest and version intact', async (t) => {
    const before = await latest()
    t.ok(before, 'a previous version to protect')
    const versionsBefore = await keysUnder(s3, 'receipts/v1/versions/')
    // Part 1 goes through to s3rver; parts 2 and later are read and never answered.
    const laterPart = (method: string, path: string) => method === 'PUT' && Number(/[?&]partNumber=(\d+)/.exec(path)?.[1] ?? 0) >= 2
    const stall = await startStallingS3(s3.endpoint, laterPart)
    t.teardown(() => stall.close())
    const run = await startAgent(t, series, { ...s3.env, S3_ENDPOINT: stall.endpoint })
    await run.waitForPhase(['ready'])
    void call(run, 'POST', '/_agent/save').catch(() => {})
    const partOneStored = () => stall.passed().some((r) => r.method === 'PUT' && /[?&]partNumber=1(&|$)/.test(r.path) && r.status === 200)
    while (!partOneStored() || stall.stalled() === 0) await sleep(50)
    process.kill(-run.pid, 'SIGKILL')
    await run.exitCode

    const left = await s3.incompleteUploads()
    t.equal(left.length, 1, 'the upload reached the store and was left open (the bucket lifecycle rule aborts such uploads in AWS)')
    t.match(left[0], { key: /^receipts\/v1\/versions\/.+\.tar\.gz$/ })
    t.ok(left[0]!.parts.includes(1), `s3rver holds part 1 of it: parts ${left[0]!.parts.join(', ')}`)
    t.same(await latest(), before, 'latest is unchanged')
    t.same(await keysUnder(s3, 'receipts/v1/versions/'), versionsBefore, 'no partial version is visible')
    t.notOk(versionsBefore.includes(left[0]!.key), 'the open upload names no listed version')
    const again = await startAgent(t, series, s3.env)
    t.equal((await again.waitForPhase(['ready', 'failed'])).restored, before!.snapshot, 'the series restores the previous version')
    t.equal(await sha256Of(join(again.dataDir, 'padding.bin')), padding, 'whole')
    t.equal(await countChroma(again.endpoint, fixture.collection), fixture.count + 1)
  })

  t.test('a save whose latest PUT fails: the complete new version stays unnamed, latest unchanged', async (t) => {
    const before = await latest()
    const versionsBefore = await keysUnder(s3, 'receipts/v1/versions/')
    const uploadsBefore = await s3.incompleteUploads()
    const stall = await startStallingS3(s3.endpoint, (method, path) => method === 'PUT' && path.split('?')[0]!.endsWith('/receipts/v1/latest'), 'refuse')
    t.teardown(() => stall.close())
    const run = await startAgent(t, series, { ...s3.env, S3_ENDPOINT: stall.endpoint })
    await run.waitForPhase(['ready'])
    const saved = await call(run, 'POST', '/_agent/save')
    t.equal(saved.status, 502, 'the save fails')
    t.match(saved.body, { code: 'save_failed', detail: /failed: .*Access Denied.*; latest is unchanged$/ })
    t.equal(stall.stalled(), 1, 'at the latest PUT')
    t.same(await latest(), before, 'latest is unchanged')
    const added = (await keysUnder(s3, 'receipts/v1/versions/')).filter((k) => !versionsBefore.includes(k))
    t.equal(added.length, 2, `the archive and its manifest were complete before latest: ${added.join(', ')}`)
    t.same(await s3.incompleteUploads(), uploadsBefore, 'its multipart upload was completed')
    t.notOk(added.some((k) => `s3://${s3.bucket}/${k}` === before!.snapshot), 'latest still names the previous version, not the new one')
    const again = await startAgent(t, series, s3.env)
    t.equal((await again.waitForPhase(['ready', 'failed'])).restored, before!.snapshot, 'the series restores the previous version')
  })

  t.test('SIGTERM during a save: stops within the stop timeout, latest unchanged', async (t) => {
    const before = await latest()
    const stall = await stallingUploads(t)
    const run = await startAgent(t, series, { ...s3.env, S3_ENDPOINT: stall.endpoint, STOP_TIMEOUT_SECONDS: '3' })
    await run.waitForPhase(['ready'])
    const answer = call(run, 'POST', '/_agent/save').catch((err: Error) => err)
    while (stall.stalled() === 0) await sleep(50)
    run.signal('SIGTERM')
    t.equal(await run.exitCode, 0, 'exits 0')
    const status = await run.waitForPhase(['exited'])
    t.match(status.saveError, /was cut short: the stop timeout \(3s\) is nearly spent; latest is unchanged/)
    t.notOk(existsSync(run.dataDir), 'data directory removed')
    t.same(await latest(), before, 'latest is unchanged')
    await answer
  })

  t.test('SIGTERM with SAVE_ON_STOP saves first', async (t) => {
    const run = await startAgent(t, series, { ...s3.env, SAVE_ON_STOP: '1' })
    await run.waitForPhase(['ready'])
    const col = await chromaClient(`http://127.0.0.1:${run.endpoint.port}`, TOKEN).getCollection({ name: fixture.collection })
    await col.add({ ...extra, ids: ['saved-2'] })
    run.signal('SIGTERM')
    t.equal(await run.exitCode, 0)
    const status = await run.waitForPhase(['exited'])
    t.ok(status.lastSave, 'saved on the way out')
    t.equal((await latest())?.snapshot, status.lastSave?.snapshot, 'and latest names it')
    const again = await startAgent(t, series, s3.env)
    await again.waitForPhase(['ready'])
    t.equal(await countChroma(again.endpoint, fixture.collection), fixture.count + 2)
  })

  t.test('SIGTERM during the restore of a series stops cleanly, saving nothing', async (t) => {
    const before = await latest()
    const stall = await startStallingS3(s3.endpoint, (method, path) => method === 'GET' && path.includes('/versions/') && !path.includes('.sha256'))
    t.teardown(() => stall.close())
    const run = await startAgent(t, series, { ...s3.env, S3_ENDPOINT: stall.endpoint, SAVE_ON_STOP: '1' })
    while (stall.stalled() === 0) await sleep(50)
    run.signal('SIGTERM')
    t.equal(await run.exitCode, 0)
    t.notOk((await run.waitForPhase(['exited'])).lastSave, 'nothing to save before Chroma ever served')
    t.same(await latest(), before)
  })
})
