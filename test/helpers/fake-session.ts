import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { ComputeSize, LaunchSpec, LaunchTarget, Launcher, ObservedCompute, RunningCompute } from '../../src/services/launchers/launcher.ts'

/**
 * A launcher whose compute does exactly what the test says, when it says: for tests
 * that need the timing of each phase on a manual clock (metrics), not a real Chroma.
 */
export class ScriptedLauncher implements Launcher {
  readonly kind = 'process' as const
  /** What describe() reports per session id; unset: starting. */
  readonly states = new Map<string, ObservedCompute>()
  /** Snapshots whose launch throws. */
  readonly failLaunchesOf = new Set<string>()
  /** Compute the sweeper should find: it keeps running whatever stop() says (a stop takes a few sweeps). */
  readonly strays: RunningCompute[] = []
  readonly stopped: string[] = []
  private readonly launched = new Map<string, RunningCompute>()

  async preflight() {
    return [{ name: 'scripted', ok: true, detail: 'a test launcher' }]
  }

  async launch(spec: LaunchSpec): Promise<{ ref: string }> {
    if ([...this.failLaunchesOf].some((s) => spec.snapshot.includes(s))) throw new Error('no capacity for this task')
    const ref = `fake-${spec.sessionId}-g${spec.generation}`
    this.launched.set(ref, { ref, sessionId: spec.sessionId, generation: spec.generation })
    return { ref }
  }

  async describe(targets: LaunchTarget[]): Promise<Map<string, ObservedCompute>> {
    return new Map(targets.map((t) => [t.ref, this.states.get(t.sessionId) ?? { state: 'starting', detail: 'restoring 40%' }]))
  }

  async stop(target: LaunchTarget): Promise<void> {
    this.stopped.push(target.ref)
    if (!this.launched.delete(target.ref)) return
    this.states.set(target.sessionId, { state: 'stopped', reason: 'stopped on request' })
  }

  async listRunning(): Promise<RunningCompute[]> {
    const alive = [...this.launched.values()].filter((c) => this.states.get(c.sessionId)?.state !== 'stopped')
    return [...alive, ...this.strays]
  }
}

/**
 * A stand-in for a session's Chroma server: heartbeat, a healthcheck that answers 503
 * until `healthy`, its `collections`, a query answer, and `/api/v2/boom` that fails; and
 * the agent's save endpoint, which fails the first `saveFailures` times.
 */
export class FakeChroma {
  healthy = false
  /** The collections its snapshot holds. */
  readonly collections = new Set(['receipts'])
  saveFailures = 0
  saveCalls = 0
  /** What POST /_agent/confirm reports as the session's memory and CPU. */
  usage = { memoryBytes: 0, cpuSeconds: 0, cpuCores: 0 }
  /** What POST /_agent/confirm reports as the agent's phase and progress. */
  confirmStatus: Record<string, unknown> = { phase: 'ready' }
  /** How long POST /_agent/confirm takes to answer. */
  confirmDelayMs = 0
  /** POST /_agent/confirm answers 503 this many times first. */
  confirmFailures = 0
  /** The control token of every confirmation received, in order. */
  readonly confirms: string[] = []
  private confirmsInFlight = 0
  maxConfirmsInFlight = 0
  /** Extra routes by path, tried first: what a test's session does on those paths. */
  readonly routes = new Map<string, (req: IncomingMessage, res: ServerResponse) => void>()
  private server!: Server
  port = 0

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const send = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      const url = req.url ?? ''
      const route = this.routes.get(url.split('?')[0]!)
      if (route) return route(req, res)
      if (url === '/api/v2/heartbeat') return send(200, { 'nanosecond heartbeat': Date.now() * 1e6 })
      if (url === '/api/v2/healthcheck') return send(this.healthy ? 200 : 503, { healthy: this.healthy })
      if (url === '/api/v2/boom') return send(500, { error: 'boom' })
      if (url === '/_agent/confirm' && req.method === 'POST') {
        this.confirms.push(String(req.headers['x-chroma-token']))
        if (this.confirmFailures > 0 && this.confirmFailures--) return send(503, { code: 'agent_busy', detail: 'not now' })
        this.maxConfirmsInFlight = Math.max(this.maxConfirmsInFlight, ++this.confirmsInFlight)
        return void setTimeout(() => {
          this.confirmsInFlight--
          send(200, { ...this.confirmStatus, pid: 1, at: new Date().toISOString(), usage: this.usage })
        }, this.confirmDelayMs)
      }
      if (url === '/_agent/save' && req.method === 'POST') {
        this.saveCalls++
        if (this.saveFailures > 0) {
          this.saveFailures--
          return send(502, { code: 'save_failed', detail: 'uploading the version failed: connect ECONNREFUSED (S3)' })
        }
        const version = `2026-11-25T00-00-0${this.saveCalls}Z`
        const series = 's3://snapshots/receipts/v1'
        return send(200, { snapshot: `${series}/versions/${version}.tar.gz`, version, series, sha256: 'a'.repeat(64), bytes: 1234, savedAt: new Date().toISOString() })
      }
      const collection = /\/collections\/([^/]+)$/.exec(url)?.[1]
      if (collection !== undefined && this.collections.has(decodeURIComponent(collection))) {
        return send(200, { id: 'c0ffee00-0000-4000-8000-000000000000', name: decodeURIComponent(collection) })
      }
      if (/\/collections\/[^/]+\/query$/.test(url)) {
        req.resume()
        return req.on('end', () => send(200, { ids: [['r-1', 'r-2']], distances: [[0.1, 0.2]] }))
      }
      send(404, { error: 'NotFound' })
    })
    this.server.listen(0, '127.0.0.1')
    await new Promise((r) => this.server.once('listening', r))
    this.port = (this.server.address() as AddressInfo).port
    return this
  }

  /** Running here; `size`: what a Fargate task would report of itself. */
  running(size?: ComputeSize): ObservedCompute {
    return { state: 'running', host: '127.0.0.1', port: this.port, detail: 'starting', ...(size ? { size } : {}) }
  }

  close(): Promise<void> {
    this.server.closeAllConnections()
    return new Promise((r) => this.server.close(() => r()))
  }
}

/** The value of one series in a Prometheus text exposition, or undefined. */
export function sample(exposition: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of exposition.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v) && Object.keys(have).length === Object.keys(labels).length) return Number(m[3])
  }
  return undefined
}
