import './polyfill.ts'
import type { ChromaClient } from 'chromadb'
import { unwrap, type ChromaLeaseClient } from './client.ts'
import { ChromaLeaseError } from './errors.ts'
import type { components } from './openapi.ts'

/** A lease and its session as the API answers them (openapi.yaml's Lease). */
export type LeaseData = components['schemas']['Lease']
/** A session as the API answers it (openapi.yaml's Session). */
export type SessionData = components['schemas']['Session']

/** The options of chromadb's ChromaClient that chroma() leaves to the caller. */
export type ChromaOptions = Omit<NonNullable<ConstructorParameters<typeof ChromaClient>[0]>, 'host' | 'port' | 'ssl' | 'path' | 'auth'> & {
  /**
   * Go to the session's own endpoint with the lease's sessionToken (callers that can reach
   * it, e.g. inside the VPC) instead of through the control plane's proxy with the lease token.
   */
  direct?: boolean
}

/** How the acquire hands the lease the answers of its long-polls (not part of the API). */
export const updateLease = Symbol('updateLease')

/**
 * A held lease. It renews itself at a third of its TTL until released; `signal` aborts
 * (and `ended` resolves) when it ends for any reason, with a ChromaLeaseError saying why:
 * `released` (by this object), `lease_ended` (the server ended or expired it, e.g. an
 * operator's force stop), `lease_lost` (no renewal got through before its TTL ran out).
 * `await using lease = await client.acquire(…)` releases it when the block ends.
 */
export class Lease implements AsyncDisposable {
  /** The lease's id. */
  readonly id: string
  /** The proxy's credential (x-chroma-token), returned once at acquire. */
  readonly token: string
  /** Aborts when the lease ends; its reason is a ChromaLeaseError. Pass it to work that must stop with the lease. */
  readonly signal: AbortSignal
  /** Resolves with the reason when the lease ends. */
  readonly ended: Promise<ChromaLeaseError>

  #data: LeaseData
  readonly #client: ChromaLeaseClient
  readonly #controller = new AbortController()
  #timer: ReturnType<typeof setTimeout> | undefined
  /** The latest time (this host's clock) by which the server surely still holds the lease. */
  #safeUntil: number
  #releasing: Promise<LeaseData> | undefined
  /** Set by release(): no renewal is scheduled any more, whether or not the release got through. */
  #letGo = false

  constructor(client: ChromaLeaseClient, data: LeaseData, token: string, options: { keepAlive?: boolean } = {}) {
    this.#client = client
    this.#data = data
    this.id = data.id
    this.token = token
    this.signal = this.#controller.signal
    this.ended = new Promise((resolve) => this.signal.addEventListener('abort', () => resolve(this.signal.reason as ChromaLeaseError), { once: true }))
    this.#safeUntil = Date.now() + data.ttlSeconds * 1000
    if (options.keepAlive ?? true) this.#schedule()
  }

  [updateLease](data: LeaseData): void {
    this.#data = data
  }

  /** The lease and its session as last answered. */
  get data(): LeaseData {
    return this.#data
  }

  get session(): SessionData {
    return this.#data.session
  }

  /** The token session.endpoint requires (direct access); null unless active and serving. */
  get sessionToken(): string | null {
    return this.#data.sessionToken
  }

  /** False once the lease has ended (released, expired, ended by the server, or lost). */
  get active(): boolean {
    return !this.signal.aborted
  }

  /** Extends the lease now (the keep-alive does this by itself). Throws `lease_ended` (410) once it has ended. */
  async renew(ttlSeconds?: number): Promise<LeaseData> {
    const sentAt = Date.now()
    try {
      this.#data = await unwrap(this.#client.api.POST('/v1/leases/{id}/renew', { params: { path: { id: this.id } }, body: ttlSeconds === undefined ? {} : { ttlSeconds } }))
    } catch (err) {
      if (err instanceof ChromaLeaseError && (err.status === 410 || err.status === 404)) this.#end(err)
      throw err
    }
    this.#safeUntil = sentAt + this.#data.ttlSeconds * 1000
    return this.#data
  }

  /**
   * Releases the lease and stops the keep-alive (idempotent; once released it asks the
   * server no more). When the release cannot get through, it throws and may be called
   * again; the keep-alive stays stopped, so the lease expires after its TTL regardless.
   */
  release(): Promise<LeaseData> {
    this.#releasing ??= (async () => {
      this.#letGo = true
      this.#stopKeepAlive()
      try {
        this.#data = await this.#client.release(this.id)
      } catch (err) {
        this.#releasing = undefined
        throw err
      }
      this.#end(new ChromaLeaseError(null, 'released', `lease ${this.id} was released`))
      return this.#data
    })()
    return this.#releasing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release()
  }

  /**
   * An official chromadb ChromaClient on this lease's session: through the control plane's
   * proxy with the lease token (its requests also keep the lease alive), or with
   * `{ direct: true }` at session.endpoint with the sessionToken. Loads chromadb on first use.
   */
  async chroma(options: ChromaOptions = {}): Promise<ChromaClient> {
    const { direct = false, headers, ...rest } = options
    let url: URL
    let token: string
    if (direct) {
      const endpoint = this.#data.session.endpoint
      if (!endpoint || !this.#data.sessionToken) {
        throw new ChromaLeaseError(null, 'session_not_ready', `session ${this.#data.session.id} has no endpoint or session token for direct access (it is ${this.#data.session.status})`)
      }
      url = new URL(endpoint.url)
      token = this.#data.sessionToken
    } else {
      url = new URL(this.#client.url)
      token = this.token
    }
    const ssl = url.protocol === 'https:'
    const { ChromaClient } = await import('chromadb')
    return new ChromaClient({
      ...rest,
      host: url.hostname,
      port: Number(url.port || (ssl ? 443 : 80)),
      ssl,
      headers: { ...headers, 'x-chroma-token': token },
    })
  }

  #schedule(): void {
    if (this.signal.aborted || this.#letGo) return
    const interval = (this.#data.ttlSeconds * 1000) / 3
    this.#timer = setTimeout(() => void this.#keepAlive(), interval)
    // A lease does not keep its process alive by itself: a process that exits leaves it to expire.
    this.#timer.unref?.()
  }

  async #keepAlive(): Promise<void> {
    try {
      await this.renew()
    } catch (err) {
      if (this.signal.aborted || this.#letGo) return
      if (Date.now() >= this.#safeUntil) {
        this.#end(new ChromaLeaseError(null, 'lease_lost', `lease ${this.id} could not be renewed before its TTL ran out: ${(err as Error).message}`, { cause: err }))
        return
      }
    }
    this.#schedule()
  }

  #stopKeepAlive(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #end(reason: ChromaLeaseError): void {
    this.#stopKeepAlive()
    if (!this.signal.aborted) this.#controller.abort(reason)
  }
}
