import type { FastifyReply } from 'fastify'

/**
 * Aborts when the client hangs up before its answer was sent: a request held for a
 * starting session (RequestHold) or a lease's long-poll (waitSeconds) stops waiting for a
 * socket that is gone.
 */
export function clientGone(reply: FastifyReply): AbortSignal {
  const gone = new AbortController()
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) gone.abort()
  })
  return gone.signal
}
