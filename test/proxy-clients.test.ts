import { execFile } from 'node:child_process'
import { mkdir, mkdtemp } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { buildTestApp } from './helpers/app.ts'
import { FakeChroma, ScriptedLauncher } from './helpers/fake-session.ts'

// The proxy as real clients meet it, over real sockets: curl and Node's fetch against
// the listening app, and a session whose answers the test scripts (echo, die, hang).

const run = promisify(execFile)
const PROXY_LIMIT = 64 * 1024
const API_LIMIT = 16 * 1024
// Far more than a socket's buffers hold: a server that answers without reading it makes fetch fail with EPIPE.
const BIG = 16 * 1024 * 1024
const root = await mkdtemp(join(tmpdir(), 'proxy-clients-'))
await mkdir(join(root, 'receipts'))
const clock = new ManualClock(Date.now())
const session = await new FakeChroma().start()
session.healthy = true
t.teardown(() => session.close())
const launcher = new ScriptedLauncher()
const ctx = await buildTestApp(t, {
  snapshotRoot: root,
  clock,
  launcher,
  listen: true,
  bodyLimitBytes: API_LIMIT,
  proxyBodyLimitBytes: PROXY_LIMIT,
  proxyTimeoutSeconds: 2,
})

const acquired = await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${join(root, 'receipts')}` } })
const lease = acquired.json() as { id: string; token: string; session: { id: string } }
launcher.states.set(lease.session.id, session.running())
for (let i = 0; i < 5 && (await ctx.services.sessions.get(lease.session.id)).status !== 'READY'; i++) await ctx.workers.reconciler.reconcileOnce()
t.equal((await ctx.services.sessions.get(lease.session.id)).status, 'READY')

// What the session received on /api/v2/echo, last request first.
const received: Array<{ headers: IncomingMessage['headers']; bytes: number }> = []
session.routes.set('/api/v2/echo', (req: IncomingMessage, res: ServerResponse) => {
  let bytes = 0
  req.on('data', (c: Buffer) => (bytes += c.length))
  req.on('end', () => {
    received.unshift({ headers: req.headers, bytes })
    res.writeHead(200, {
      'content-type': 'application/json',
      connection: 'x-session-hop',
      'x-session-hop': 'named in Connection',
      'keep-alive': 'timeout=5, max=7',
      'proxy-connection': 'keep-alive',
      upgrade: 'h2c',
      trailer: 'x-checksum',
      'x-session-kept': 'yes',
    })
    res.end(JSON.stringify({ bytes }))
  })
})
// Headers, part of a declared body, then the session's process dies.
session.routes.set('/api/v2/dies', (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100000' })
  res.write('{"ids": [')
  setTimeout(() => res.socket?.destroy(), 50)
})
session.routes.set('/api/v2/dies-chunked', (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' })
  res.write('{"ids": [')
  setTimeout(() => res.socket?.destroy(), 50)
})
// Accepts the request and never answers.
session.routes.set('/api/v2/hangs', () => {})

const url = (path: string) => `${ctx.url}${path}`
const token = { 'x-chroma-token': lease.token }

/** curl's answer: status, headers (lower-cased) and body. */
async function curl(args: string[]) {
  const { stdout } = await run('curl', ['-sS', '-i', '-H', `x-chroma-token: ${lease.token}`, ...args], { maxBuffer: 16 * 1024 * 1024 })
  const [head, ...rest] = stdout.split('\r\n\r\n').filter((part) => !/^HTTP\/1\.1 100 /.test(part))
  const [statusLine, ...lines] = head!.split('\r\n')
  const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]))
  return { status: Number(statusLine!.split(' ')[1]), headers, body: rest.join('\r\n\r\n') }
}

/** A body sent chunked (no Content-Length), in 16 KiB pieces. */
function chunked(bytes: number): ReadableStream<Uint8Array> {
  let sent = 0
  return new ReadableStream({
    pull(controller) {
      if (sent >= bytes) return controller.close()
      const n = Math.min(16 * 1024, bytes - sent)
      sent += n
      controller.enqueue(new Uint8Array(n).fill(97))
    },
  })
}

/** Settles with the promise, or fails once `ms` have passed: a hang is a failure, not a stuck test. */
function within<T>(ms: number, p: Promise<T>): Promise<T | 'hung'> {
  let timer!: NodeJS.Timeout
  return Promise.race([p, new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), ms)))]).finally(() => clearTimeout(timer))
}

t.test('Expect: 100-continue and Upgrade headers are proxied, not refused', async (t) => {
  const expect = await curl(['-H', 'Expect: 100-continue', '--data-binary', 'hello', url('/api/v2/echo')])
  t.equal(expect.status, 200, `Expect: 100-continue (${expect.body})`)
  t.same(JSON.parse(expect.body), { bytes: 5 })
  t.notOk('expect' in received[0]!.headers, 'the session is not asked to continue')

  const upgrade = await curl(['-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket', url('/api/v2/echo')])
  t.equal(upgrade.status, 200, `a websocket upgrade request is answered as plain HTTP (${upgrade.body})`)
  const h2c = await curl(['-H', 'Upgrade: h2c', url('/api/v2/echo')])
  t.equal(h2c.status, 200, `an Upgrade header alone (${h2c.body})`)
  t.notOk('upgrade' in received[0]!.headers)

  const viaFetch = await fetch(url('/api/v2/echo'), { method: 'POST', headers: { ...token, expect: '100-continue' }, body: 'hello' }).catch((err: Error) => err)
  if (viaFetch instanceof Error) t.pass(`fetch itself refuses an Expect header (${viaFetch.message})`)
  else t.equal(viaFetch.status, 200, "fetch's Expect header")
})

t.test('hop-by-hop headers are dropped on the way in and on the way out', async (t) => {
  const res = await curl([
    '-H', 'Keep-Alive: timeout=5',
    '-H', 'TE: trailers',
    '-H', 'Trailer: x-checksum',
    '-H', 'Proxy-Authorization: Basic c2VjcmV0',
    '-H', 'Proxy-Connection: keep-alive',
    '-H', 'Connection: keep-alive, X-Client-Hop',
    '-H', 'X-Client-Hop: named in Connection',
    '-H', 'X-Client-Kept: yes',
    url('/api/v2/echo'),
  ])
  t.equal(res.status, 200)
  const seen = received[0]!.headers
  for (const h of ['keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection', 'x-client-hop', 'upgrade', 'expect']) {
    t.notOk(h in seen, `${h} does not reach the session`)
  }
  t.equal(seen['x-client-kept'], 'yes', 'end-to-end headers do')
  t.equal(seen['x-chroma-token'] !== lease.token, true, "the lease token is replaced by the proxy's own")

  const viaFetch = await fetch(url('/api/v2/echo'), { headers: token })
  await viaFetch.text()
  for (const r of [res.headers, Object.fromEntries(viaFetch.headers)]) {
    for (const h of ['x-session-hop', 'proxy-connection', 'upgrade', 'trailer']) t.notOk(h in r, `${h} does not reach the client`)
    t.not(r['keep-alive'], 'timeout=5, max=7', "the session's Keep-Alive is its own")
    t.not(r.connection?.toLowerCase(), 'x-session-hop', "the session's Connection is its own")
    t.equal(r['x-session-kept'], 'yes', 'end-to-end headers do')
  }
})

t.test('chunked request bodies count against the proxy body limit as they stream', async (t) => {
  const small = await fetch(url('/api/v2/echo'), { method: 'POST', headers: token, body: chunked(PROXY_LIMIT / 2), duplex: 'half' } as RequestInit)
  t.equal(small.status, 200)
  t.same(await small.json(), { bytes: PROXY_LIMIT / 2 }, 'a chunked body under the limit passes whole')

  const before = received.length
  const big = await fetch(url('/api/v2/echo'), { method: 'POST', headers: token, body: chunked(PROXY_LIMIT * 16), duplex: 'half' } as RequestInit)
  t.equal(big.status, 413, 'a chunked body over the limit is refused')
  t.match(big.headers.get('content-type'), /^application\/problem\+json/)
  t.equal(((await big.json()) as { code: string }).code, 'payload_too_large')
  t.equal(received.length, before, 'the session never got a whole request')
})

t.test('a body over a limit gets its 413 problem delivered to Node fetch', async (t) => {
  const cases: Array<[string, string, () => NonNullable<RequestInit['body']>, Record<string, string>]> = [
    ['proxy, Content-Length', '/api/v2/echo', () => Buffer.alloc(BIG, 97), token],
    ['proxy, chunked', '/api/v2/echo', () => chunked(BIG) as unknown as NonNullable<RequestInit['body']>, token],
    ['API, Content-Length', '/v1/leases', () => JSON.stringify({ snapshot: 'file:///x', holder: 'h'.repeat(BIG) }), {}],
    ['API, chunked', '/v1/leases', () => chunked(BIG) as unknown as NonNullable<RequestInit['body']>, {}],
  ]
  for (const [name, path, body, headers] of cases) {
    const res = await fetch(url(path), { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: body(), duplex: 'half' } as RequestInit).catch(
      (err: Error & { cause?: Error }) => err,
    )
    if (res instanceof Error) {
      t.fail(`${name}: ${res.message} (${res.cause?.message})`)
      continue
    }
    t.equal(res.status, 413, name)
    t.equal(((await res.json()) as { code: string }).code, 'payload_too_large', name)
  }
  const after = await fetch(url('/api/v2/echo'), { headers: token })
  t.equal(after.status, 200, 'the proxy serves on afterwards')
  await after.text()
})

t.test('a session that dies mid-response ends the response with an error the client sees', async (t) => {
  for (const path of ['/api/v2/dies', '/api/v2/dies-chunked']) {
    const outcome = await within(
      30_000,
      fetch(url(path), { headers: token }).then(
        async (res) => `read: ${res.status} ${await res.text()}`,
        (err: Error) => `error: ${err.message}`,
      ).catch((err: Error) => `error: ${err.message}`),
    )
    t.match(outcome, /^error: /, `${path}: the client sees the failure (${outcome})`)
  }
  const curled = await run('curl', ['-sS', '-H', `x-chroma-token: ${lease.token}`, url('/api/v2/dies')]).then(
    () => 'complete',
    (err: Error & { code?: number }) => `curl exit ${err.code}`,
  )
  t.match(curled, /^curl exit (18|52|56)$/, `curl sees a partial answer (${curled})`)
})

t.test('a session that never answers is cut off with a 504 problem after the proxy timeout', async (t) => {
  const res = await within(30_000, fetch(url('/api/v2/hangs'), { headers: token }))
  if (res === 'hung') return t.fail('no answer within 30 s')
  t.equal(res.status, 504)
  t.match(res.headers.get('content-type'), /^application\/problem\+json/)
  t.equal(((await res.json()) as { code: string }).code, 'session_timeout')
})
