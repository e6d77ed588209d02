import { badGateway, notFound, ProblemError } from './errors.ts'
import { ChromaError, type ChromaClient, type QueryRequest, type QueryResult } from './chroma.ts'
import type { LeaseRoute } from './lease-routes.ts'
import type { RequestHold } from './request-hold.ts'

/** Step Functions fails an execution whose state exceeds 256 KB; stay well under it. */
export const DEFAULT_MAX_RESULT_BYTES = 200 * 1024

export interface QueryAnswer extends QueryResult {
  collection: string
  truncated: boolean
  returned: number
  total: number
  note?: string
}

/**
 * Queries for callers without a Chroma client (Step Functions HTTP Tasks): one JSON
 * request, one JSON answer, trimmed to fit the caller's state size limit.
 */
export class QueryService {
  constructor(
    private readonly holds: RequestHold,
    private readonly chroma: ChromaClient,
  ) {}

  /**
   * `onRoute` learns which session (and in which status) the token opened, e.g. for
   * metrics. A session still starting holds the query (RequestHold) until it serves;
   * `signal` ends that wait (the client went away).
   */
  async query(
    token: string | undefined,
    sessionId: string,
    q: QueryRequest,
    maxBytes = DEFAULT_MAX_RESULT_BYTES,
    onRoute?: (route: LeaseRoute) => void,
    signal?: AbortSignal,
  ): Promise<QueryAnswer> {
    const route = await this.holds.route(token, sessionId, 'query', signal)
    onRoute?.(route)
    let result: QueryResult
    try {
      result = await this.chroma.query(route.base!, q, route.sessionToken)
    } catch (err) {
      if (err instanceof ChromaError) {
        if (err.status === 404) throw notFound('collection_not_found', err.message)
        if (err.status >= 400 && err.status < 500) throw new ProblemError(400, 'invalid_query', 'Bad Request', err.message)
        throw badGateway('chroma_error', err.message)
      }
      throw badGateway('session_unreachable', `session ${sessionId} did not answer: ${(err as Error).message}`)
    }
    return fitToBudget(q.collection, result, maxBytes)
  }
}

/**
 * Drops the farthest results, one rank at a time across all query rows, until the
 * JSON answer fits. The answer says how many results it kept and why.
 */
export function fitToBudget(collection: string, result: QueryResult, maxBytes: number): QueryAnswer {
  const total = result.ids.reduce((n, row) => n + row.length, 0)
  const fields = ['ids', 'documents', 'metadatas', 'distances', 'embeddings'] as const
  const answer: QueryAnswer = { collection, ...result, truncated: false, returned: total, total }
  let keep = Math.max(0, ...result.ids.map((r) => r.length))
  while (Buffer.byteLength(JSON.stringify(answer)) > maxBytes && keep > 0) {
    keep--
    for (const f of fields) {
      const rows = result[f]
      if (rows) (answer as unknown as Record<string, unknown[][]>)[f] = rows.map((r) => (r as unknown[]).slice(0, keep))
    }
    answer.truncated = true
    answer.returned = answer.ids.reduce((n, row) => n + row.length, 0)
    answer.note = `trimmed to ${answer.returned} of ${total} results to fit ${maxBytes} bytes; ask for fewer nResults or leave out embeddings`
  }
  return answer
}
