import { createHash, timingSafeEqual } from 'node:crypto'
import { once } from 'node:events'
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { pipeline } from 'node:stream/promises'

/** Paths under this prefix are the agent's own; everything else goes to Chroma. */
export const AGENT_PATH_PREFIX = '/_agent/'

/** What the agent's own endpoints do; the front only authorises and routes. */
export interface AgentEndpoints {
  /** GET /_agent/status: the agent's status document. */
  status(): unknown
  /** POST /_agent/confirm: the control plane is alive (the dead man's switch is reset); answers the status. */
  confirm(): unknown
  /** POST /_agent/save: saves the data directory as a new snapshot version; answers where it went. */
  save(): Promise<unknown>
}

/** An endpoint's refusal with a status code, e.g. 409 when the agent cannot save now. */
export class AgentHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

// Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not to the request.
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']
/** The session token never reaches Chroma. */
const CREDENTIALS = ['x-chroma-token', 'authorization']

/**
 * The session's front door: it listens on the session's address, refuses every request
 * without the session token (401), serves the agent's endpoints under /_agent/, and
 * streams everything else to the Chroma server bound to loopback, bodies untouched
 * both ways. Chroma 1.x enforces no authentication of its own (docs/dependencies.md),
 * so this is the boundary that keeps an address leaking inside the VPC from opening
 * the session.
 */
export class AgentFront {
  /** Chroma's loopback port while it serves; null while restoring, saving or stopping (503). */
  private chroma: { port: number } | null = null
  private unavailable = 'the session is restoring its snapshot'
  private readonly server: Server
  private readonly tokenDigest: Buffer
  private readonly controlDigest: Buffer
  private readonly upstreamAgent = new Agent({ keepAlive: true, maxSockets: 256 })
  /** Requests passed to Chroma since markClean(): none means the data is what was last saved (or restored). */
  forwarded = 0

  constructor(
    private readonly opts: { host: string; port: number; token: string; controlToken: string; endpoints: AgentEndpoints; log: (message: string) => void },
  ) {
    this.tokenDigest = digest(opts.token)
    this.controlDigest = digest(opts.controlToken)
    this.server = createServer((req, res) => void this.handle(req, res))
    // Chroma's own keep-alive is longer than Node's default; clients reuse connections.
    this.server.keepAliveTimeout = 65_000
  }

  async listen(): Promise<void> {
    this.server.listen(this.opts.port, this.opts.host)
    await Promise.race([once(this.server, 'listening'), once(this.server, 'error').then(([err]) => Promise.reject(err))])
  }

  /** Starts passing requests to Chroma on this loopback port. */
  serve(chromaPort: number): void {
    this.chroma = { port: chromaPort }
  }

  /** Stops passing requests to Chroma; they get 503 with this reason until serve() again. */
  pause(reason: string): void {
    this.chroma = null
    this.unavailable = reason
  }

  markClean(): void {
    this.forwarded = 0
  }

  async close(): Promise<void> {
    this.server.close()
    this.server.closeAllConnections()
    this.upstreamAgent.destroy()
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = req.url ?? '/'
    const who = this.credential(req.headers)
    const agentPath = path.startsWith(AGENT_PATH_PREFIX) ? path.slice(AGENT_PATH_PREFIX.length).split('?')[0]! : null
    if (who === null || (who === 'control' && agentPath === null)) {
      // Drain nothing: the connection closes with the answer.
      return problem(res, 401, 'session_token_required', 'this session requires its session token as x-chroma-token or Authorization: Bearer', true)
    }
    if (agentPath !== null) {
      // Lease holders may read the status; only the control plane keeps the session alive or saves it.
      if (who !== 'control' && agentPath !== 'status') return problem(res, 403, 'control_token_required', `${AGENT_PATH_PREFIX}${agentPath} is the control plane's`, true)
      return this.agentEndpoint(req, res, agentPath)
    }
    if (!this.chroma) return problem(res, 503, 'session_unavailable', this.unavailable)
    this.forwarded++
    this.forward(req, res, this.chroma.port)
  }

  private credential(headers: IncomingHttpHeaders): 'session' | 'control' | null {
    const token = tokenFrom(headers)
    if (token === undefined) return null
    const d = digest(token)
    if (timingSafeEqual(d, this.tokenDigest)) return 'session'
    if (timingSafeEqual(d, this.controlDigest)) return 'control'
    return null
  }

  private async agentEndpoint(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    req.resume() // the endpoints take no body
    try {
      if (name === 'status' && req.method === 'GET') return json(res, 200, this.opts.endpoints.status())
      if (name === 'confirm' && req.method === 'POST') return json(res, 200, this.opts.endpoints.confirm())
      if (name === 'save' && req.method === 'POST') return json(res, 200, await this.opts.endpoints.save())
      return problem(res, 404, 'not_found', `no agent endpoint ${req.method} ${AGENT_PATH_PREFIX}${name}`)
    } catch (err) {
      if (err instanceof AgentHttpError) return problem(res, err.status, err.code, err.message)
      this.opts.log(`${req.method} ${req.url} failed: ${(err as Error).message}`)
      return problem(res, 500, 'agent_error', (err as Error).message)
    }
  }

  /** Streams the request to Chroma and its answer back; nothing is buffered. */
  private forward(req: IncomingMessage, res: ServerResponse, port: number): void {
    const headers = { ...req.headers }
    for (const h of [...HOP_BY_HOP, ...CREDENTIALS]) delete headers[h]
    const upstream = httpRequest({ host: '127.0.0.1', port, method: req.method, path: req.url, headers, agent: this.upstreamAgent })
    upstream.once('response', (answer) => {
      const out = { ...answer.headers }
      for (const h of HOP_BY_HOP) delete out[h]
      res.writeHead(answer.statusCode ?? 502, out)
      pipeline(answer, res).catch(() => res.destroy())
    })
    pipeline(req, upstream).catch((err: Error) => {
      if (!res.headersSent) problem(res, 502, 'chroma_unreachable', `chroma did not answer: ${err.message}`)
      else res.destroy()
    })
  }
}

/** The token from `x-chroma-token` (Chroma's own clients) or `Authorization: Bearer`. */
export function tokenFrom(headers: IncomingHttpHeaders): string | undefined {
  const chroma = headers['x-chroma-token']
  if (typeof chroma === 'string' && chroma) return chroma
  const auth = headers.authorization
  if (typeof auth === 'string' && auth.toLowerCase().startsWith('bearer ')) return auth.slice(7).trim() || undefined
  return undefined
}

// Comparing digests keeps the comparison constant-time whatever the lengths.
const digest = (s: string) => createHash('sha256').update(s).digest()

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

function problem(res: ServerResponse, status: number, code: string, detail: string, close = false): void {
  if (res.headersSent) return void res.destroy()
  const text = JSON.stringify({ type: 'about:blank', title: titles[status] ?? 'Error', status, detail, code })
  res.writeHead(status, {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(text),
    ...(status === 401 ? { 'www-authenticate': 'Bearer' } : {}),
    ...(close ? { connection: 'close' } : {}),
  })
  res.end(text)
}

const titles: Record<number, string> = { 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 409: 'Conflict', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable' }
