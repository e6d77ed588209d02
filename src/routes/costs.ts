import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { problems } from '../schemas/common.ts'
import { CostQuery, WorkflowCosts } from '../schemas/cost.ts'
import type { Services } from '../services/index.ts'
import { dateParam } from './date-param.ts'

const costRoutes: FastifyPluginAsyncTypebox<{ services: Services }> = async (app, { services }) => {
  app.get('/v1/costs', {
    preHandler: app.requireRole('client'),
    schema: {
      tags: ['sessions'],
      summary: 'Cost per workflow: each session\'s cost split among its leases by the time each held it, summed per holder (a client sees its own leases, an operator all)',
      querystring: CostQuery,
      response: { 200: WorkflowCosts, ...problems(400, 401) },
    },
  }, async (request) => {
    const { since, holder, limit } = request.query
    const from = dateParam('since', since)
    const operator = request.principal.role === 'operator'
    const [workflows, warmPool, pins] = await Promise.all([
      services.costs.byWorkflow(request.principal, { since: from, holder, limit }),
      operator ? services.costs.idleBeforeClaim('warm_pool', from) : null,
      operator ? services.costs.idleBeforeClaim('pins', from) : null,
    ])
    return { workflows, warmPool, pins }
  })
}

export default costRoutes
