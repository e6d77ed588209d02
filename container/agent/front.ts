import { createHash, timingSafeEqual } from 'node:crypto'
import { once } from 'node:events'
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { pipeline } from 'node:stream/promises'
import { verifyLeaseToken } from './lease-token.ts'

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
  /** GET /_agent/health, without a token: whether the session is healthy (the image's HEALTHCHECK). */
  health(): Promise<boolean>
  /** POST /_agent/assign {snapshot, collection?, saveOnStop?}: a warm agent's snapshot (control token only); answers the status. */
  assign(assignment: Assignment): unknown
}

/** What a warm agent is told to serve once an acquire has claimed it. */
export interface Assignment {
  snapshot: string
  collection: string | null
  saveOnStop: boolean
}

/** The largest POST /_agent/assign body read. */
const ASSIGN_BODY_LIMIT = 16 * 1024

/** The control plane's time (ms since the epoch) on its calls: the agent compares lease expiries on that clock. */
export const CONTROL_PLANE_TIME_HEADER = 'x-control-plane-time'

/** The largest POST /_agent/revoke body read: thousands of leases. */
const REVOKE_BODY_LIMIT = 1024 * 1024

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
/** No token reaches Chroma. */
const CREDENTIALS = ['x-chroma-token', 'authorization']

/**
 * The session's front door: it listens on the session's address, refuses every request
 * without a valid token (401): the session token (the control plane's proxy), a lease's
 * direct-access token (signed with the session's lease key, not expired, not revoked),
 * or the control token (for /_agent/ only). It serves the agent's endpoints under /_agent/, and
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
  /**
   * The control plane's clock minus ours (ms), from the time its calls carry: lease expiries
   * are the control plane's (the database's) times, so they are compared on its clock, whatever
   * this host's clock says.
   */
  private clockOffsetMs = 0
  /** Leases whose tokens are refused although not expired (released, ended), until their expiry (ms). */
  private readonly revoked = new Map<string, number>()
  private readonly upstreamAgent = new Agent({ keepAlive: true, maxSockets: 256 })
  /** Requests passed to Chroma since markClean(): none means the data is what was last saved (or restored). */
  forwarded = 0

  constructor(
    private readonly opts: {
      host: string
      port: number
      token: string
      controlToken: string
      /** Signs the session's lease tokens; null: no lease token is accepted. */
      leaseKey: Buffer | null
      endpoints: AgentEndpoints
      log: (message: string) => void
      /** The agent's clock, for lease token expiry. */
      now?: () => number
    },
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
    const agentPath = path.startsWith(AGENT_PATH_PREFIX) ? path.slice(AGENT_PATH_PREFIX.length).split('?')[0]! : null
    if (agentPath === 'health' && req.method === 'GET') {
      req.resume()
      const healthy = await this.opts.endpoints.health().catch(() => false)
      return json(res, healthy ? 200 : 503, { healthy })
    }
    const { who, refused } = this.credential(req.headers)
    if (who === 'control') this.followControlPlaneClock(req.headers)
    if (who === null || (who === 'control' && agentPath === null)) {
      // Drain nothing: the connection closes with the answer.
      if (refused) return problem(res, 401, refused.code, refused.detail, true)
      return problem(res, 401, 'session_token_required', 'this session requires a token (the lease\'s) as x-chroma-token or Authorization: Bearer', true)
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

  private credential(headers: IncomingHttpHeaders): { who: 'session' | 'lease' | 'control' | null; refused?: { code: string; detail: string } } {
    const token = tokenFrom(headers)
    if (token === undefined) return { who: null }
    if (this.opts.leaseKey && token.startsWith('cld_')) {
      const now = this.now()
      const check = verifyLeaseToken(this.opts.leaseKey, token, now)
      if (!check.ok) return { who: null, refused: check.reason === 'expired' ? { code: 'lease_expired', detail: 'the lease of this token has expired' } : { code: 'invalid_token', detail: 'this token does not open this session' } }
      if (this.revoked.has(check.leaseId)) return { who: null, refused: { code: 'lease_ended', detail: 'the lease of this token has ended' } }
      return { who: 'lease' }
    }
    const d = digest(token)
    if (timingSafeEqual(d, this.tokenDigest)) return { who: 'session' }
    if (timingSafeEqual(d, this.controlDigest)) return { who: 'control' }
    return { who: null }
  }

  private now(): number {
    return (this.opts.now?.() ?? Date.now()) + this.clockOffsetMs
  }

  private followControlPlaneClock(headers: IncomingHttpHeaders): void {
    const at = Number(headers[CONTROL_PLANE_TIME_HEADER])
    if (Number.isSafeInteger(at) && at > 0) this.clockOffsetMs = at - (this.opts.now?.() ?? Date.now())
  }

  /** Refuses these leases' tokens from now on; each is forgotten once its token has expired anyway. */
  revoke(leases: Array<{ id: string; expiresAtMs: number }>): number {
    const now = this.now()
    for (const [id, until] of this.revoked) if (until <= now) this.revoked.delete(id)
    for (const l of leases) if (l.expiresAtMs > now) this.revoked.set(l.id, Math.max(l.expiresAtMs, this.revoked.get(l.id) ?? 0))
    return this.revoked.size
  }

  private async agentEndpoint(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    if (name === 'revoke' && req.method === 'POST') return this.revokeEndpoint(req, res)
    if (name === 'assign' && req.method === 'POST') return this.assignEndpoint(req, res)
    req.resume() // the other endpoints take no body
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

  /** POST /_agent/revoke {leases: [{id, expiresAt}]} (the control token only: checked by handle()). */
  private async revokeEndpoint(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let raw = ''
    for await (const chunk of req) {
      raw += chunk
      if (raw.length > REVOKE_BODY_LIMIT) return problem(res, 413, 'payload_too_large', `at most ${REVOKE_BODY_LIMIT} bytes`, true)
    }
    let leases: Array<{ id: string; expiresAtMs: number }>
    try {
      const body = JSON.parse(raw) as { leases: Array<{ id: unknown; expiresAt: unknown }> }
      leases = body.leases.map((l) => {
        const expiresAtMs = Date.parse(String(l.expiresAt))
        if (typeof l.id !== 'string' || !Number.isFinite(expiresAtMs)) throw new Error('bad lease')
        return { id: l.id, expiresAtMs }
      })
    } catch {
      return problem(res, 400, 'invalid_revocation', 'expected {"leases": [{"id": "…", "expiresAt": "ISO 8601"}]}')
    }
    return json(res, 200, { revoked: this.revoke(leases) })
  }

  /** POST /_agent/assign (the control token only: checked by handle()). */
  private async assignEndpoint(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let raw = ''
    for await (const chunk of req) {
      raw += chunk
      if (raw.length > ASSIGN_BODY_LIMIT) return problem(res, 413, 'payload_too_large', `at most ${ASSIGN_BODY_LIMIT} bytes`, true)
    }
    let assignment: Assignment
    try {
      const body = JSON.parse(raw) as { snapshot?: unknown; collection?: unknown; saveOnStop?: unknown }
      if (typeof body.snapshot !== 'string' || body.snapshot === '') throw new Error('snapshot')
      if (body.collection !== undefined && body.collection !== null && typeof body.collection !== 'string') throw new Error('collection')
      assignment = { snapshot: body.snapshot, collection: (body.collection as string | null | undefined) || null, saveOnStop: body.saveOnStop === true }
    } catch {
      return problem(res, 400, 'invalid_assignment', 'expected {"snapshot": "file:///… or s3://…", "collection": "…" (optional), "saveOnStop": false}')
    }
    try {
      return json(res, 200, this.opts.endpoints.assign(assignment))
    } catch (err) {
      if (err instanceof AgentHttpError) return problem(res, err.status, err.code, err.message)
      throw err
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

const titles: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 409: 'Conflict', 413: 'Content Too Large', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable' }
