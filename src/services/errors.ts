/**
 * Domain errors that map to RFC 9457 problem details. Services throw them; the one
 * error handler in src/plugins/problem-details.ts renders them. `code` is the stable,
 * documented identifier clients branch on; `detail` is for humans.
 */
export class ProblemError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly title: string,
    detail: string,
    readonly extra: Record<string, unknown> = {},
    /** Sent as the Retry-After header: when a retry may succeed (503s that are worth retrying). */
    readonly retryAfterSeconds?: number,
  ) {
    super(detail)
  }
}

export const badRequest = (code: string, detail: string) => new ProblemError(400, code, 'Bad Request', detail)
export const unauthorized = (code: string, detail: string) => new ProblemError(401, code, 'Unauthorized', detail)
export const forbidden = (code: string, detail: string) => new ProblemError(403, code, 'Forbidden', detail)
export const notFound = (code: string, detail: string, extra?: Record<string, unknown>) => new ProblemError(404, code, 'Not Found', detail, extra)
export const conflict = (code: string, detail: string, extra?: Record<string, unknown>) =>
  new ProblemError(409, code, 'Conflict', detail, extra)
export const gone = (code: string, detail: string) => new ProblemError(410, code, 'Gone', detail)
export const unprocessable = (code: string, detail: string) => new ProblemError(422, code, 'Unprocessable Content', detail)
export const badGateway = (code: string, detail: string) => new ProblemError(502, code, 'Bad Gateway', detail)
