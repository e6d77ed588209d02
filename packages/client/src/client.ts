import createClient, { type Client } from 'openapi-fetch'
import { ChromaLeaseError } from './errors.ts'
import { Lease, updateLease, type LeaseData } from './lease.ts'
import type { paths } from './openapi.ts'
import { retryingFetch, type RetryOptions } from './retry.ts'

/** The acquire's body as openapi.yaml defines it. */
export type AcquireBody = NonNullable<paths['/v1/leases']['post']['requestBody']>['content']['application/json']

export interface ChromaLeaseClientOptions {
  /** The control plane, e.g. http://chroma-lease.internal:8080 */
  url: string
  /** An API key (sent as x-api-key); none when the server has no keys configured. */
  apiKey?: string
  /** Retries of network errors and 503 answers (see RetryOptions). */
  retry?: RetryOptions
  /** The fetch to use (default: the global one), e.g. one with a connection pool of your own. */
  fetch?: (request: Request) => Promise<Response>
}

export interface AcquireOptions extends Omit<AcquireBody, 'waitSeconds'> {
  /**
   * How long to wait for the session to be READY, in seconds, through as many long-polls
   * as it takes (each at most 50 s, the server's limit). Default 600. When it runs out the
   * lease is released and the acquire throws `not_ready`.
   */
  waitSeconds?: number
  /** Sent as Idempotency-Key on every attempt; default a random UUID per acquire. */
  idempotencyKey?: string
  /** Renew in the background at a third of the TTL (default true). */
  keepAlive?: boolean
  /** Cancels the acquire; a lease it already made is released. */
  signal?: AbortSignal
}

const STARTING = new Set(['PENDING', 'STARTING'])
const LONG_POLL_LIMIT_SECONDS = 50

/** A client of the chroma-lease API. `acquire()` is the way in; `api` is the whole API, typed. */
export class ChromaLeaseClient {
  /** Every route of openapi.yaml, typed (openapi-fetch), with the API key and the retries. Pass results to `unwrap`. */
  readonly api: Client<paths>
  /** The control plane's base URL, without a trailing slash. */
  readonly url: string

  constructor(options: ChromaLeaseClientOptions) {
    let parsed: URL
    try {
      parsed = new URL(options.url)
    } catch {
      throw new TypeError(`chroma-lease client: url ${JSON.stringify(options.url)} is not a URL`)
    }
    this.url = parsed.toString().replace(/\/+$/, '')
    this.api = createClient<paths>({
      baseUrl: this.url,
      headers: options.apiKey ? { 'x-api-key': options.apiKey } : {},
      fetch: retryingFetch(options),
    })
  }

  /**
   * Acquires a lease and waits until its session is READY: reuses the running session of
   * the snapshot or starts one. Throws a ChromaLeaseError with the problem's `code` and
   * `status`; a lease made on the way is released before it throws (or is cancelled).
   */
  async acquire(options: AcquireOptions): Promise<Lease> {
    const { waitSeconds = 600, idempotencyKey = crypto.randomUUID(), keepAlive = true, signal, ...body } = options
    signal?.throwIfAborted()
    const deadline = Date.now() + waitSeconds * 1000
    const pollSeconds = () => Math.max(0, Math.min(LONG_POLL_LIMIT_SECONDS, Math.ceil((deadline - Date.now()) / 1000)))
    let data: LeaseData
    try {
      // No long-poll on the acquire itself: its lease would be kept alive by nobody until the
      // answer came, and a session may take longer to start than the lease's TTL. The
      // long-polls below run while the keep-alive renews.
      data = await unwrap(this.api.POST('/v1/leases', { body: { ...body, waitSeconds: 0 }, params: { header: { 'idempotency-key': idempotencyKey } }, signal }))
    } catch (err) {
      // Cancelled while the request was out: the server may have made the lease. The same key
      // answers with it (or makes it now), so it can be released rather than left to expire.
      if (signal?.aborted) await this.releaseByKey(body, idempotencyKey)
      throw err
    }
    // The keep-alive starts now, not at READY.
    const lease = new Lease(this, data, data.token!, { keepAlive })
    try {
      while (STARTING.has(data.session.status) && data.status === 'active') {
        if (Date.now() >= deadline) {
          throw new ChromaLeaseError(null, 'not_ready', `session ${data.session.id} is still ${data.session.status} after ${waitSeconds}s; the lease was released`)
        }
        data = await unwrap(this.api.GET('/v1/leases/{id}', { params: { path: { id: data.id }, query: { waitSeconds: pollSeconds() } }, signal }))
        lease[updateLease](data)
      }
      if (data.session.status === 'FAILED') {
        throw new ChromaLeaseError(502, 'session_failed', `session ${data.session.id} failed: ${data.session.error ?? 'no reason given'}`)
      }
      if (data.status !== 'active' || data.session.status !== 'READY') {
        throw new ChromaLeaseError(null, 'lease_ended', `lease ${data.id} is ${data.status} on a ${data.session.status} session`)
      }
    } catch (err) {
      await lease.release().catch(() => {})
      throw err
    }
    return lease
  }

  /** Reads a lease and its session (`waitSeconds` long-polls while it starts, at most 50). */
  async getLease(id: string, options: { waitSeconds?: number; signal?: AbortSignal } = {}): Promise<LeaseData> {
    return unwrap(this.api.GET('/v1/leases/{id}', { params: { path: { id }, query: { waitSeconds: options.waitSeconds ?? 0 } }, signal: options.signal }))
  }

  /** Releases a lease by id (idempotent). A Lease object's own release() also stops its keep-alive. */
  async release(id: string): Promise<LeaseData> {
    return unwrap(this.api.DELETE('/v1/leases/{id}', { params: { path: { id } } }))
  }

  private async releaseByKey(body: Omit<AcquireBody, 'waitSeconds'>, idempotencyKey: string): Promise<void> {
    try {
      const signal = AbortSignal.timeout(5000)
      const { data } = await this.api.POST('/v1/leases', { body: { ...body, waitSeconds: 0 }, params: { header: { 'idempotency-key': idempotencyKey } }, signal })
      if (data) await this.api.DELETE('/v1/leases/{id}', { params: { path: { id: data.id } }, signal })
    } catch {
      // Unreachable now: the lease, if any, expires after its TTL.
    }
  }
}

/**
 * The answer's data, or a ChromaLeaseError: the problem of an error answer, `unreachable`
 * when none came. A cancelled call rejects with its signal's reason.
 */
export async function unwrap<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  let result: { data?: T; error?: unknown; response: Response }
  try {
    result = await call
  } catch (err) {
    if (err instanceof ChromaLeaseError || (err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError'))) throw err
    if (!(err instanceof TypeError)) throw err
    const cause = (err as { cause?: { code?: string; message?: string } }).cause
    throw new ChromaLeaseError(null, 'unreachable', `cannot reach the control plane: ${cause?.code ?? cause?.message ?? err.message}`, { cause: err })
  }
  if (!result.response.ok) throw ChromaLeaseError.fromResponse(result.response, result.error)
  return result.data as T
}
