import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { Agent, getGlobalDispatcher, setGlobalDispatcher, type Dispatcher } from 'undici'
import { ChromaClient } from '../src/services/chroma.ts'
import { SessionAgentClient } from '../src/services/session-agent.ts'

// Each agent is asked once a minute (confirm), or once a pass while starting (readiness),
// and a replica may have thousands: a kept-alive connection per agent, with undici's pool
// for its origin (~30 KB), added up to hundreds of MB when a replica confirmed thousands of
// new sessions at once (BENCHMARKS.md, At scale). These calls leave no connection open.

async function agent(t: Test): Promise<{ server: Server; base: string }> {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(req.url === '/_agent/confirm' ? { phase: 'ready', pid: 1, at: new Date().toISOString() } : { ok: true }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    return new Promise((resolve) => server.close(resolve))
  })
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
}

/** Open connections at the agent, polled until none are left or `ms` pass (a kept-alive one stays ~4 s). */
async function connectionsAfter(server: Server, ms = 1500): Promise<number> {
  const deadline = Date.now() + ms
  for (;;) {
    const open = await new Promise<number>((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))))
    if (open === 0 || Date.now() > deadline) return open
    await new Promise((r) => setTimeout(r, 25))
  }
}

t.test('a confirmation leaves no connection to the agent open', async (t) => {
  const { server, base } = await agent(t)
  const status = await new SessionAgentClient().confirm(base, 'clc_token')
  t.equal(status.phase, 'ready')
  t.equal(await connectionsAfter(server), 0, 'closed once answered')
})

t.test('a readiness check leaves no connection to the session open', async (t) => {
  const { server, base } = await agent(t)
  const readiness = await new ChromaClient().readiness(base, null, 'cls_token')
  t.equal(readiness.ready, true)
  t.equal(await connectionsAfter(server), 0, 'closed once answered')
})

t.test("confirmations, status reads and readiness checks leave nothing in undici's shared pools", async (t) => {
  // undici's global Agent keeps a pool per origin; with `reset` alone a replica at 5,000
  // sessions still held 5,000 of them, 112 MB (BENCHMARKS.md, At scale). These calls must
  // not go through it at all.
  const origins: string[] = []
  class Recording extends Agent {
    override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
      origins.push(String(opts.origin))
      return super.dispatch(opts, handler)
    }
  }
  const previous = getGlobalDispatcher()
  const recording = new Recording()
  setGlobalDispatcher(recording)
  t.teardown(async () => {
    setGlobalDispatcher(previous)
    await recording.close()
  })
  const agents = await Promise.all(Array.from({ length: 5 }, () => agent(t)))
  const client = new SessionAgentClient()
  const chroma = new ChromaClient()
  // As the workers call them: the confirmer, the reconciler and status reads at once, per agent.
  await Promise.all(agents.flatMap(({ base }) => [client.confirm(base, 'clc_token'), client.status(base, 'clc_token'), chroma.readiness(base, null, 'cls_token')]))
  t.same(origins, [], 'no request went through the global dispatcher')
  for (const { server } of agents) t.equal(await connectionsAfter(server), 0, 'and no connection stays open')
})
