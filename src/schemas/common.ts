import { Type } from 'typebox'
import { PROBLEM_CODES } from '../services/problem-codes.ts'

export const Problem = Type.Object(
  {
    type: Type.String({ description: 'A URI naming the problem type' }),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String({ description: 'Stable machine-readable error code (README.md, "Errors", says what each means)', enum: Object.keys(PROBLEM_CODES) }),
    instance: Type.Optional(Type.String()),
  },
  { $id: 'Problem', additionalProperties: true, description: 'RFC 9457 problem details (application/problem+json)' },
)

export const ProblemRef = Type.Ref('Problem')

/** The problem responses a route can give, by status, as application/problem+json. */
export function problems(...statuses: number[]) {
  return Object.fromEntries(
    statuses.map((s) => [s, { description: 'Problem details (RFC 9457)', content: { 'application/problem+json': { schema: Type.Ref('Problem') } } }]),
  )
}

export const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })

export const WaitSeconds = Type.Integer({
  minimum: 0,
  maximum: 50,
  description:
    'Hold the response until the session is READY or FAILED, up to this long (Step Functions HTTP Tasks cannot wait longer than 60 s). ' +
    'A session that ends FAILED answers a problem and ends the lease: 404 collection_not_found, 422 invalid_snapshot, or 502 session_failed (with leaseId, sessionId, sessionError)',
})
