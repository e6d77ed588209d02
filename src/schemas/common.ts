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

/**
 * An id: a UUID in its canonical 8-4-4-4-12 hex form only. The `uuid` format alone also
 * admits `urn:uuid:…`, which Postgres refuses (a 500 on every `/{id}` route); the
 * pattern keeps such input a 400 at the schema, before it reaches SQL.
 */
export const Uuid = Type.String({ format: 'uuid', pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' })

export const IdParams = Type.Object({ id: Uuid })

/**
 * Free text that is stored or compared in Postgres: no NUL (Postgres text cannot hold
 * it) and no lone surrogate (neither JSON nor UTF-8 can carry one). Either was a 500;
 * the pattern (Unicode mode: a surrogate pair is one code point) makes it a 400.
 */
export function Text(options: { minLength?: number; maxLength?: number; description?: string } = {}) {
  return Type.String({ ...options, pattern: '^[^\\u0000\\uD800-\\uDFFF]*$' })
}

export const WaitSeconds = Type.Integer({
  minimum: 0,
  maximum: 50,
  description:
    'Hold the response until the session is READY or FAILED, up to this long (Step Functions HTTP Tasks cannot wait longer than 60 s). ' +
    'A session that ends FAILED answers a problem and ends the lease: 404 collection_not_found, 422 invalid_snapshot, or 502 session_failed (with leaseId, sessionId, sessionError)',
})
