import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { problems } from '../schemas/common.ts'
import { WarmPool, WarmPoolQuery } from '../schemas/warm-pool.ts'
import type { Services } from '../services/index.ts'

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
}

export default warmPoolRoutes
