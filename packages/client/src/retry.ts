import type { ChromaLeaseClientOptions } from './client.ts'
import { ChromaLeaseError } from './errors.ts'

export interface RetryOptions {
  /** Retries after the first attempt (default 5). 0 turns retrying off. */
  retries?: number
  /** The first retry's delay ceiling; each retry doubles it (default 250 ms). */
  baseDelayMs?: number
  /** The largest delay between two attempts (default 4000 ms; a longer Retry-After is cut to it). */
  maxDelayMs?: number
}

/**
 * A fetch that retries what is safe to retry when no answer came (the connection failed or
 * dropped) or the answer was 503: requests with an idempotent method, requests that carry an
 * Idempotency-Key (the acquire: every attempt sends the same key, so the server answers a
 * retry with the lease the first attempt made), and renewals (which set the same expiry
 * however often they arrive). Delays grow exponentially with full jitter and honour
 * Retry-After. An aborted signal stops at once, with its reason; no answer after the last
 * attempt is a ChromaLeaseError `unreachable`.
 */
export function retryingFetch(options: Pick<ChromaLeaseClientOptions, 'fetch' | 'retry'>): (request: Request) => Promise<Response> {
  const fetchImpl = options.fetch ?? globalThis.fetch
  const retries = options.retry?.retries ?? 5
  const base = options.retry?.baseDelayMs ?? 250
  const max = options.retry?.maxDelayMs ?? 4000
  return async (request) => {
    const retryable = isRetryable(request)
    // A retried request's body is read once and sent again from memory (cheaper than
    // Request.clone(), which tees the stream; the API's bodies are small JSON).
    const body = retryable && request.body ? await request.arrayBuffer() : undefined
    const attemptOf = () => (body === undefined ? request : new Request(request.url, { method: request.method, headers: request.headers, body, signal: request.signal }))
    for (let attempt = 0; ; attempt++) {
      const last = !retryable || attempt >= retries
      try {
        const response = await fetchImpl(retryable ? attemptOf() : request)
        if (response.status !== 503 || last) return response
        const retryAfter = retryAfterMs(response.headers.get('retry-after'))
        await response.body?.cancel()
        await delay(retryAfter ?? backoff(attempt, base, max), max, request.signal)
      } catch (err) {
        if (request.signal.aborted) throw request.signal.reason
        if (!isNetworkError(err)) throw err
        if (last) throw unreachable(request, err)
        await delay(backoff(attempt, base, max), max, request.signal)
      }
    }
  }
}

function isRetryable(request: Request): boolean {
  if (['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS'].includes(request.method)) return true
  if (request.headers.has('idempotency-key')) return true
  return request.method === 'POST' && /\/v1\/leases\/[^/]+\/renew$/.test(new URL(request.url).pathname)
}

/** fetch rejects with a TypeError when no answer came (refused, reset, closed mid-answer). */
function isNetworkError(err: unknown): boolean {
  return err instanceof TypeError
}

function unreachable(request: Request, err: unknown): ChromaLeaseError {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause
  const why = cause?.code ?? cause?.message ?? (err as Error).message
  return new ChromaLeaseError(null, 'unreachable', `cannot reach ${new URL(request.url).origin}: ${why}`, { cause: err })
}

const backoff = (attempt: number, base: number, max: number) => Math.random() * Math.min(max, base * 2 ** attempt)

function retryAfterMs(header: string | null): number | undefined {
  if (!header) return undefined
  const seconds = Number(header)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const at = Date.parse(header)
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now())
}

/** Waits ms (at most `max`), or until the signal aborts: then rejects with its reason. */
export function delay(ms: number, max: number, signal?: AbortSignal | null): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const timer = setTimeout(done, Math.min(ms, max))
    function done() {
      signal?.removeEventListener('abort', aborted)
      resolve()
    }
    function aborted() {
      clearTimeout(timer)
      reject(signal!.reason)
    }
    signal?.addEventListener('abort', aborted, { once: true })
  })
}
