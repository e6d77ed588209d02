import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer } from 'node:http'
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { ChromaLeaseClient, ChromaLeaseError, type LeaseData } from '@chroma-lease/client'
import { systemClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// @chroma-lease/client against the real control plane on a real Postgres, with the real
// process launcher running real Chroma servers, on the system clock: leases really
// expire unless renewed, so the keep-alive is exercised in real time with short TTLs.

const CLIENT_KEY = 'clk_client-package-test-key'
const OPERATOR_KEY = 'opk_client-package-test-key'
const root = await mkdtemp(join(tmpdir(), 'client-package-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(join(root, 'receipts'))
const snapshot = `file://${fixture.tarPath}`
const cp = await buildTestApp(t, {
  listen: true,
  clock: systemClock,
  snapshotRoot: root,
  apiKeys: [
    { role: 'client', key: CLIENT_KEY },
    { role: 'operator', key: OPERATOR_KEY },
  ],
})
cp.workers.start()
t.teardown(() => cp.workers.stop())
const client = new ChromaLeaseClient({ url: cp.url, apiKey: CLIENT_KEY })

/** The lease as the server sees it now. */
const serverLease = async (id: string): Promise<LeaseData> => client.getLease(id)

/** Polls `check` until it returns true, or fails the test at the deadline. */
async function until(t: Test, what: string, check: () => Promise<boolean> | boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      t.fail(`timed out waiting until ${what}`)
      return
    }
    await sleep(100)
  }
}

/** The error a promise rejects with (failing the test when it resolves). */
async function rejection(t: Test, promise: Promise<unknown>): Promise<ChromaLeaseError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  )
  t.type(err, ChromaLeaseError, 'rejects with a ChromaLeaseError')
  return err as ChromaLeaseError
}

t.test('acquire waits until READY; lease.chroma() queries the session; await using releases it', async (t) => {
  let leaseId = ''
  let ended: Promise<ChromaLeaseError>
  {
    await using lease = await client.acquire({ snapshot, collection: fixture.collection, holder: 'using-block', waitSeconds: 120 })
    leaseId = lease.id
    ended = lease.ended
    t.equal(lease.session.status, 'READY', 'the acquire returns once the session is READY')
    t.match(lease.token, /^clt_/)

    const chroma = await lease.chroma()
    const receipts = await chroma.getCollection({ name: fixture.collection })
    const hits = await receipts.query({ queryEmbeddings: [fixture.vector(5)], nResults: 1 })
    t.same(hits.ids, [['r-5']], 'the official ChromaClient queries the session through the proxy')

    const direct = await lease.chroma({ direct: true })
    const again = await (await direct.getCollection({ name: fixture.collection })).query({ queryEmbeddings: [fixture.vector(9)], nResults: 1 })
    t.same(again.ids, [['r-9']], 'and directly at session.endpoint with the session token')
    t.equal((await serverLease(leaseId)).status, 'active')
  }
  t.equal((await serverLease(leaseId)).status, 'released', 'leaving the block released the lease')
  t.equal((await ended!).code, 'released', 'and ended it, saying why')
})

t.test('the keep-alive holds a lease across several TTLs, and release() stops it', async (t) => {
  const ttlSeconds = 5
  const lease = await client.acquire({ snapshot, collection: fixture.collection, holder: 'keep-alive', ttlSeconds, waitSeconds: 120 })
  const firstExpiry = Date.parse(lease.data.expiresAt)
  // Unrenewed, the lease would have expired at firstExpiry; wait two more TTLs past it,
  // checking on the way that the server never saw it lapse.
  const past = firstExpiry + 2 * ttlSeconds * 1000
  let lapsed = false
  await until(t, 'two TTLs after the first expiry', async () => {
    const seen = await serverLease(lease.id)
    if (seen.status !== 'active') lapsed = true
    return lapsed || Date.now() > past + 500
  }, 60_000)
  t.notOk(lapsed, 'the server saw the lease active throughout')
  const now = await serverLease(lease.id)
  t.equal(now.status, 'active')
  t.ok(Date.parse(now.expiresAt) > past, 'its expiry moved past three TTLs from acquire: it was renewed')
  t.ok(lease.active)
  const released = await lease.release()
  t.equal(released.status, 'released')
  t.equal((await lease.release()).status, 'released', 'release is idempotent')
  t.equal((await lease.ended).code, 'released')
})

t.test('a client that dies leaves a lease that expires', async (t) => {
  // A separate process holds a lease with the keep-alive on, and is killed without releasing it.
  const script = `
    import { ChromaLeaseClient } from '@chroma-lease/client'
    const client = new ChromaLeaseClient({ url: process.env.URL, apiKey: process.env.KEY })
    const lease = await client.acquire({ snapshot: process.env.SNAPSHOT, holder: 'dies', ttlSeconds: 5, waitSeconds: 120 })
    console.log(lease.id)
    setInterval(() => {}, 1000)
  `
  const child = spawn(process.execPath, ['--conditions=chroma-lease-source', '--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, URL: cp.url, KEY: CLIENT_KEY, SNAPSHOT: snapshot },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.teardown(() => void (child.exitCode === null && child.kill('SIGKILL')))
  let out = ''
  child.stdout.on('data', (c: Buffer) => (out += c))
  await until(t, 'the child printed its lease', () => out.includes('\n') || child.exitCode !== null)
  const id = out.trim()
  t.match(id, /^[0-9a-f-]{36}$/)
  const heldUntil = Date.parse((await serverLease(id)).expiresAt)
  // Alive, it renews: its expiry moves.
  await until(t, 'the child renewed its lease', async () => Date.parse((await serverLease(id)).expiresAt) > heldUntil)
  child.kill('SIGKILL')
  await once(child, 'exit')
  await until(t, 'the lease expired', async () => (await serverLease(id)).status === 'expired', 30_000)
  t.pass('the lease of the killed client expired')
})

t.test('a retry after the connection dropped mid-acquire returns the same lease', async (t) => {
  // A TCP proxy in front of the control plane that forwards the first connection's request,
  // then cuts that connection as the answer starts coming back: the server made the lease,
  // the client saw no answer.
  const upstream = new URL(cp.url)
  let connections = 0
  const proxy: Server = createServer((socket) => {
    const n = ++connections
    const server = createConnection({ host: upstream.hostname, port: Number(upstream.port) })
    socket.pipe(server)
    server.on('data', (chunk) => {
      if (n === 1) {
        socket.destroy()
        server.destroy()
      } else {
        socket.write(chunk)
      }
    })
    server.on('end', () => socket.end())
    server.on('error', () => socket.destroy())
    socket.on('error', () => server.destroy())
  })
  proxy.listen(0, '127.0.0.1')
  await once(proxy, 'listening')
  t.teardown(() => proxy.close())
  const viaProxy = new ChromaLeaseClient({ url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, apiKey: CLIENT_KEY, retry: { baseDelayMs: 50 } })

  const key = `cut-${randomUUID()}`
  const lease = await viaProxy.acquire({ snapshot, collection: fixture.collection, holder: 'cut-connection', idempotencyKey: key, waitSeconds: 120, keepAlive: false })
  t.ok(connections >= 2, `the first connection was cut and the client retried (${connections} connections)`)
  const rows = await cp.db.lease.findMany({ where: { holder: 'cut-connection' } })
  t.equal(rows.length, 1, 'the server made one lease')
  t.equal(rows[0]!.id, lease.id, 'and the retry returned it')
  t.match(lease.token, /^clt_/, 'with its token (an idempotent replay returns it)')
  await lease.release()
})

t.test('a 503 is retried with the same Idempotency-Key', async (t) => {
  // An HTTP front that answers the first acquire 503 and forwards everything else.
  const keys: string[] = []
  const front = createHttpServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    if (req.method === 'POST' && req.url === '/v1/leases') {
      keys.push(String(req.headers['idempotency-key']))
      if (keys.length === 1) {
        res.writeHead(503, { 'retry-after': '0', 'content-type': 'application/problem+json' })
        res.end(JSON.stringify({ type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'shutting down', code: 'unavailable' }))
        return
      }
    }
    const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => !['host', 'connection', 'content-length'].includes(k))) as Record<string, string>
    const answer = await fetch(`${cp.url}${req.url}`, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined })
    res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'application/json' })
    res.end(Buffer.from(await answer.arrayBuffer()))
  })
  front.listen(0, '127.0.0.1')
  await once(front, 'listening')
  t.teardown(() => front.close())
  const viaFront = new ChromaLeaseClient({ url: `http://127.0.0.1:${(front.address() as AddressInfo).port}`, apiKey: CLIENT_KEY })
  const lease = await viaFront.acquire({ snapshot, collection: fixture.collection, holder: 'after-503', waitSeconds: 120, keepAlive: false })
  t.equal(keys.length, 2, 'the 503 was retried once')
  t.equal(keys[0], keys[1], 'with the same Idempotency-Key')
  t.equal(lease.session.status, 'READY')
  await lease.release()

  const never = new ChromaLeaseClient({ url: 'http://127.0.0.1:9', retry: { retries: 1, baseDelayMs: 10 } })
  const err = await rejection(t, never.acquire({ snapshot }))
  t.match(err, { code: 'unreachable', status: null }, 'no answer after the retries: unreachable')
})

t.test('each refusal arrives as a ChromaLeaseError with its code and status', async (t) => {
  const cases: Array<[string, () => Promise<unknown>, number, string]> = [
    ['a missing snapshot', () => client.acquire({ snapshot: '' }), 400, 'validation_failed'],
    ['a TTL under the minimum', () => client.acquire({ snapshot, ttlSeconds: 1 }), 400, 'validation_failed'],
    ['an idle TTL over the ceiling', () => client.acquire({ snapshot, idleTtlSeconds: 99_999 }), 400, 'ttl_out_of_range'],
    ['saveOnRelease on a shared session', () => client.acquire({ snapshot, saveOnRelease: true }), 400, 'save_needs_exclusive'],
    ['no API key', () => new ChromaLeaseClient({ url: cp.url }).acquire({ snapshot }), 401, 'api_key_required'],
    ['a wrong API key', () => new ChromaLeaseClient({ url: cp.url, apiKey: 'clk_wrong' }).acquire({ snapshot }), 401, 'invalid_api_key'],
    ['an unknown lease', () => client.getLease(randomUUID()), 404, 'lease_not_found'],
    ['a snapshot scheme it does not serve', () => client.acquire({ snapshot: 'http://example.com/x.tar' }), 422, 'invalid_snapshot'],
    ['a snapshot that is not there', () => client.acquire({ snapshot: `file://${root}/nothing-here.tar` }), 422, 'snapshot_not_found'],
  ]
  for (const [what, call, status, code] of cases) {
    const err = await rejection(t, call())
    t.match(err, { status, code, problem: { status, code } }, what)
  }

  const key = randomUUID()
  const first = await client.acquire({ snapshot, holder: 'key-a', idempotencyKey: key, waitSeconds: 120, keepAlive: false })
  t.match(await rejection(t, client.acquire({ snapshot, holder: 'key-b', idempotencyKey: key })), { status: 422, code: 'idempotency_key_reused' }, 'a key reused with other parameters')

  await client.release(first.id)
  const ended = await rejection(t, first.renew())
  t.match(ended, { status: 410, code: 'lease_ended' }, 'renewing a released lease')
  t.equal((await first.ended).code, 'lease_ended', 'and the lease object knows it ended')
  t.notOk(first.active)
})

t.test('an acquire whose wait runs out throws not_ready and releases its lease', async (t) => {
  const other = await buildSnapshotFixture(join(root, 'not-ready'), { seed: 3 })
  const err = await rejection(t, client.acquire({ snapshot: `file://${other.tarPath}`, holder: 'not-ready', waitSeconds: 0 }))
  t.match(err, { code: 'not_ready', status: null })
  const rows = await cp.db.lease.findMany({ where: { holder: 'not-ready' } })
  t.equal(rows.length, 1)
  t.equal((await serverLease(rows[0]!.id)).status, 'released', 'the lease it made was released')
})

t.test('a session that fails during the wait: a typed error, and no lease left active', async (t) => {
  const broken = join(root, 'broken.tar')
  await writeFile(broken, 'this is not a tar archive of a Chroma directory')
  const err = await rejection(t, client.acquire({ snapshot: `file://${broken}`, holder: 'broken', waitSeconds: 120 }))
  t.match(err.code, /^(session_failed|invalid_snapshot)$/, `the failure's code (${err.code}: ${err.message})`)
  const rows = await cp.db.lease.findMany({ where: { holder: 'broken' } })
  for (const row of rows) t.not((await serverLease(row.id)).status, 'active', 'its lease is not left active')
})

t.test('cancelling an acquire through its AbortSignal releases the lease it made', async (t) => {
  const slow = await buildSnapshotFixture(join(root, 'cancelled'), { seed: 5 })
  const controller = new AbortController()
  const acquiring = client.acquire({ snapshot: `file://${slow.tarPath}`, holder: 'cancelled', waitSeconds: 120, signal: controller.signal })
  await until(t, 'the lease exists', async () => (await cp.db.lease.count({ where: { holder: 'cancelled' } })) === 1)
  controller.abort(new Error('the workflow was cancelled'))
  const err = await acquiring.then(() => null, (e: unknown) => e)
  t.match(err, { message: 'the workflow was cancelled' }, "rejects with the signal's reason")
  const [row] = await cp.db.lease.findMany({ where: { holder: 'cancelled' } })
  t.equal((await serverLease(row!.id)).status, 'released', 'the lease it had made is released')
})

t.test('a lease ended by the server is reported by the keep-alive', async (t) => {
  const lease = await client.acquire({ snapshot, mode: 'exclusive', holder: 'force-stopped', ttlSeconds: 6, waitSeconds: 120 })
  const operator = new ChromaLeaseClient({ url: cp.url, apiKey: OPERATOR_KEY })
  const { error } = await operator.api.DELETE('/v1/sessions/{id}', { params: { path: { id: lease.session.id }, query: { force: true, reason: 'client test' } } })
  t.notOk(error, 'the operator force-stopped the session')
  const reason = await Promise.race([lease.ended, sleep(30_000).then(() => null)])
  t.match(reason, { code: 'lease_ended', status: 410 }, 'the next renewal learns it ended, and ended says so')
  t.ok(lease.signal.aborted, 'its signal aborted')
})

t.test('an acquire whose signal is already aborted sends nothing', async (t) => {
  const err = await client.acquire({ snapshot, holder: 'pre-aborted', signal: AbortSignal.abort(new Error('too late')) }).then(() => null, (e: unknown) => e)
  t.match(err, { message: 'too late' })
  t.equal(await cp.db.lease.count({ where: { holder: 'pre-aborted' } }), 0, 'no lease was made')
})

t.test('a release that cannot get through throws and can be tried again', async (t) => {
  // A TCP forwarder that can be told to cut every connection, open or new.
  const upstream = new URL(cp.url)
  let cutting = false
  const open = new Set<Socket>()
  const forwarder: Server = createServer((socket) => {
    if (cutting) return void socket.destroy()
    open.add(socket)
    socket.on('close', () => open.delete(socket))
    const server = createConnection({ host: upstream.hostname, port: Number(upstream.port) })
    socket.pipe(server).pipe(socket)
    server.on('error', () => socket.destroy())
    socket.on('error', () => server.destroy())
  })
  forwarder.listen(0, '127.0.0.1')
  await once(forwarder, 'listening')
  t.teardown(() => forwarder.close())
  const cut = () => {
    cutting = true
    for (const socket of open) socket.destroy()
  }
  const viaForwarder = new ChromaLeaseClient({ url: `http://127.0.0.1:${(forwarder.address() as AddressInfo).port}`, apiKey: CLIENT_KEY, retry: { retries: 0 } })
  const lease = await viaForwarder.acquire({ snapshot, collection: fixture.collection, holder: 'release-retried', waitSeconds: 120 })
  cut()
  const err = await rejection(t, lease.release())
  t.match(err, { code: 'unreachable', status: null })
  t.ok(lease.active, 'the lease has not ended: the server still holds it')
  t.equal((await serverLease(lease.id)).status, 'active')
  cutting = false
  t.equal((await lease.release()).status, 'released', 'the second release gets through')
  t.equal((await lease.ended).code, 'released')
})
