import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { CreateWarmPoolHintBody, WarmPool, WarmPoolHintList, WarmPoolQuery } from '../schemas/warm-pool.ts'
import type { Services } from '../services/index.ts'

const WarmPoolHint = { $ref: 'WarmPoolHint' } as const

const warmPoolRoutes: FastifyPluginAsyncTypebox<{ services: Services }> = async (app, { services }) => {
  app.get('/v1/warm-pool', {
    preHandler: app.requireRole('operator'),
    schema: {
      tags: ['sessions'],
      summary: 'The warm pool: its target, demand, unclaimed agents and what they cost idle (WARM_POOL_MIN/WARM_POOL_MAX)',
      querystring: WarmPoolQuery,
      response: { 200: WarmPool, ...problems(400, 401, 403) },
    },
  }, async (request) => {
    const { warmPool } = services
    const [state, agents, idle] = await Promise.all([warmPool.state(), warmPool.list(request.query.limit), services.costs.idleBeforeClaim('warm_pool')])
    return { ...state, idle, agents }
  })

  // Hints are a workflow's (client keys), like its leases: a client sees and ends its own.
  const { warmPoolHints } = services

  app.post('/v1/warm-pool/hints', {
    preHandler: app.requireRole('client'),
    schema: {
      tags: ['warm-pool'],
      summary: 'Announce a burst: the warm pool adds `count` agents to its target until the hint expires',
      description: 'For a workflow about to fan out (a Map state of exclusive acquires). Each warm claim after the hint uses one up; the target never exceeds WARM_POOL_MAX. 409 warm_pool_disabled when the pool is off.',
      body: CreateWarmPoolHintBody,
      response: { 201: WarmPoolHint, ...problems(400, 401, 409) },
    },
  }, async (request, reply) => {
    const hint = await warmPoolHints.create(request.principal, request.body)
    request.log.info({ warmPoolHint: hint, by: request.principal.id }, 'warm pool hint')
    return reply.code(201).send(hint)
  })

  app.get('/v1/warm-pool/hints', {
    preHandler: app.requireRole('client'),
    schema: { tags: ['warm-pool'], summary: 'Active warm pool hints (a client key\'s own; all for an operator)', response: { 200: WarmPoolHintList, ...problems(401) } },
  }, async (request) => ({ hints: await warmPoolHints.list(request.principal) }))

  app.delete('/v1/warm-pool/hints/:id', {
    preHandler: app.requireRole('client'),
    schema: {
      tags: ['warm-pool'],
      summary: 'End a warm pool hint early (the key that made it, or an operator)',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Ended: the target no longer counts it' }), ...problems(400, 401, 404) },
    },
  }, async (request, reply) => {
    await warmPoolHints.remove(request.principal, request.params.id)
    request.log.info({ warmPoolHintId: request.params.id, by: request.principal.id }, 'warm pool hint ended')
    return reply.code(204).send(null)
  })
}

export default warmPoolRoutes
