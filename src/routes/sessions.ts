import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { SessionEvents, SessionEventsQuery, SessionList, SessionListQuery, StopQuery } from '../schemas/session.ts'
import type { Services } from '../services/index.ts'
import { baseUrlOf } from './base-url.ts'
import { dateParam } from './date-param.ts'

const Session = { $ref: 'Session' } as const

const sessionRoutes: FastifyPluginAsyncTypebox<{ services: Services; publicUrl?: string }> = async (app, { services, publicUrl }) => {
  const { sessions } = services
  app.addHook('preHandler', app.requireRole('operator'))

  app.get('/v1/sessions', {
    schema: { tags: ['sessions'], summary: 'List sessions with their live lease counts, newest first', querystring: SessionListQuery, response: { 200: SessionList, ...problems(400, 401, 403) } },
  }, async (request) => {
    const { status, limit, before } = request.query
    const rows = await sessions.list({ status, limit, before: dateParam('before', before) })
    return { sessions: rows.map((s) => sessions.view(s, baseUrlOf(request, publicUrl))) }
  })

  app.get('/v1/sessions/:id', {
    schema: { tags: ['sessions'], summary: 'Inspect a session', params: IdParams, response: { 200: Session, ...problems(400, 401, 403, 404) } },
  }, async (request) => sessions.view(await sessions.get(request.params.id), baseUrlOf(request, publicUrl)))

  app.get('/v1/sessions/:id/events', {
    schema: { tags: ['sessions'], summary: "The session's timeline, oldest first", params: IdParams, querystring: SessionEventsQuery, response: { 200: SessionEvents, ...problems(400, 401, 403, 404) } },
  }, async (request) => {
    const { after, limit } = request.query
    const events = await sessions.events(request.params.id, { afterId: after === undefined ? undefined : BigInt(after), limit })
    return {
      events: events.map((e) => ({
        id: e.id.toString(),
        at: e.at.toISOString(),
        type: e.type,
        status: e.status,
        reason: e.reason,
        leaseId: e.leaseId,
        detail: e.detail,
      })),
    }
  })

  app.post('/v1/sessions/:id/save', {
    schema: {
      tags: ['sessions'],
      summary: "Save the session's data back as a new version of its s3:// snapshot (Chroma pauses while it is packed); answers the session with savedSnapshot",
      params: IdParams,
      response: { 200: Session, ...problems(400, 401, 403, 404, 409, 502) },
    },
  }, async (request) => sessions.view(await services.saveBack.save(request.params.id, 'operator'), baseUrlOf(request, publicUrl)))

  app.delete('/v1/sessions/:id', {
    schema: {
      tags: ['sessions'],
      summary: 'Drain a session (no new leases; stops when its leases end), or force stop it now with ?force=true',
      description: 'Drain applies to a serving (READY) session; draining a PENDING or STARTING one answers 409 `session_not_serving` with its `sessionStatus` and changes nothing: force stop it instead. Draining a session that is already draining or stopping answers it as it is.',
      params: IdParams,
      querystring: StopQuery,
      response: { 200: Session, ...problems(400, 401, 403, 404, 409) },
    },
  }, async (request) => {
    const { force, reason } = request.query
    const why = reason ?? `operator ${request.principal.id}`
    const s = force ? await sessions.forceStop(request.params.id, why) : await sessions.drain(request.params.id, why)
    return sessions.view(s, baseUrlOf(request, publicUrl))
  })
}

export default sessionRoutes
