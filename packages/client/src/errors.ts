import type { components } from './openapi.ts'

/** An error answer of the API: RFC 9457 problem details with the stable `code`. */
export type Problem = components['schemas']['Problem']

/**
 * Codes this client gives to failures that have no problem answer of their own:
 * `unreachable` (no answer, after the retries), `http_error` (an error answer that is not
 * a problem), `not_ready` (the session was not READY within the acquire's wait),
 * `session_failed` (the session failed while the acquire waited), `lease_lost` (the
 * keep-alive could not renew the lease before its TTL ran out).
 */
export type ClientErrorCode = 'unreachable' | 'http_error' | 'not_ready' | 'session_failed' | 'lease_lost'

/**
 * What every call of this client throws: the problem's `code` and `status` when the API
 * refused (`status` is null when no answer came), and the problem itself.
 */
export class ChromaLeaseError extends Error {
  override readonly name = 'ChromaLeaseError'
  /** The problem's stable code (see the README's error table), or a ClientErrorCode. */
  readonly code: string
  /** The HTTP status of the answer; null when there was none. */
  readonly status: number | null
  /** The problem details as the API sent them, when it did. */
  readonly problem: Problem | undefined

  constructor(status: number | null, code: string, message: string, options: { problem?: Problem; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.status = status
    this.code = code
    this.problem = options.problem
  }

  /** The error for an error answer (a problem, or anything else the server or a proxy sent). */
  static fromResponse(response: Response, body: unknown): ChromaLeaseError {
    const problem = isProblem(body) ? body : undefined
    const text = typeof body === 'string' ? body.slice(0, 200) : ''
    const detail = problem ? (problem.detail ?? problem.title) : text || response.statusText || `HTTP ${response.status}`
    return new ChromaLeaseError(response.status, problem?.code ?? 'http_error', detail, { problem })
  }
}

function isProblem(body: unknown): body is Problem {
  return typeof body === 'object' && body !== null && typeof (body as { code?: unknown }).code === 'string'
}
