import { badGateway, notFound, ProblemError, unprocessable } from './errors.ts'

/**
 * The problem an acquire (or a lease's long-poll) answers when the session it waited
 * for ended FAILED. The cause decides the status: the caller's input (a collection the
 * snapshot does not hold, a snapshot that is not a Chroma persist directory or does not
 * match its manifest) is a 4xx that a retry cannot fix; anything else is the session's
 * own failure, 502 `session_failed`. The session agent (container/agent) words these
 * failures; its messages are matched here, in one place.
 */
export function sessionFailedProblem(session: { id: string; error: string | null }, leaseId: string): ProblemError {
  const reason = session.error ?? 'the session failed without a recorded reason'
  const problem = causeOf(reason)
  Object.assign(problem.extra, { leaseId, sessionId: session.id, sessionError: reason })
  return problem
}

function causeOf(reason: string): ProblemError {
  if (/collection ".*" is not in snapshot/.test(reason)) {
    return notFound('collection_not_found', `${reason}; name a collection the snapshot holds, or none`)
  }
  if (/is not a Chroma persist directory|does not match its manifest/.test(reason)) {
    return unprocessable('invalid_snapshot', reason)
  }
  return badGateway('session_failed', `the session failed to start: ${reason}`)
}
