import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { CreatePinBody, PinList } from '../schemas/pin.ts'
import type { Services } from '../services/index.ts'

const Pin = { $ref: 'Pin' } as const

/** Operators pin snapshots: sessions kept restored and READY with no lease, so an acquire on them is one statement. */
const pinRoutes: FastifyPluginAsyncTypebox<{ services: Services }> = async (app, { services }) => {
  const { pins } = services
  app.addHook('preHandler', app.requireRole('operator'))

  app.post('/v1/pins', {
    schema: {
      tags: ['pins'],
      summary: 'Pin a snapshot: keep its shared session READY, or `sessions` exclusive standbys',
      description: 'The sessions start within a few seconds (the pins pass) and are kept until the pin is removed. One pin per snapshot, collection and mode: 409 pin_exists names the existing one.',
      body: CreatePinBody,
      response: { 201: Pin, ...problems(400, 401, 403, 409, 422, 502) },
    },
  }, async (request, reply) => {
    const pin = await pins.create(request.principal, request.body)
    request.log.info({ pinId: pin.id, snapshot: pin.snapshot, mode: pin.mode, sessions: pin.sessions, by: request.principal.id }, 'snapshot pinned')
    return reply.code(201).send(pin)
  })

  app.get('/v1/pins', {
    schema: { tags: ['pins'], summary: 'List pins with the sessions each keeps READY now', response: { 200: PinList, ...problems(401, 403) } },
  }, async () => ({ pins: await pins.list() }))

  app.delete('/v1/pins/:id', {
    schema: {
      tags: ['pins'],
      summary: 'Remove a pin: its unclaimed standbys stop, its shared session idles out like any other',
      params: IdParams,
      response: { 200: Pin, ...problems(400, 401, 403, 404) },
    },
  }, async (request) => {
    const pin = await pins.remove(request.params.id)
    request.log.info({ pinId: pin.id, by: request.principal.id }, 'pin removed')
    return pin
  })
}

export default pinRoutes
