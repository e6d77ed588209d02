import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { QueryAnswer, QueryBody } from '../schemas/query.ts'
import type { Services } from '../services/index.ts'
import { leaseTokenFrom } from '../services/lease-routes.ts'
import { clientGone } from './client-gone.ts'
import { instrumentQueries, noteSessionStatus } from './query-metrics.ts'

const queryRoutes: FastifyPluginAsyncTypebox<{ services: Services }> = async (app, { services }) => {
  instrumentQueries(app, services.metrics, 'query')
  app.post('/v1/sessions/:id/query', {
    schema: {
      tags: ['query'],
      summary: 'Query a collection with JSON, for callers without a Chroma client (Step Functions); results trimmed to maxResultBytes',
      description: 'Authorised by the lease token (x-chroma-token or Authorization: Bearer), which opens only its own session.',
      security: [{ chromaToken: [] }, { bearer: [] }],
      params: IdParams,
      body: QueryBody,
      response: { 200: QueryAnswer, ...problems(400, 401, 403, 404, 409, 422, 502, 503) },
    },
  }, async (request, reply) => {
    const { maxResultBytes, ...q } = request.body
    return services.query.query(
      leaseTokenFrom(request.headers),
      request.params.id,
      q,
      maxResultBytes,
      (route) => noteSessionStatus(request, route.sessionStatus),
      clientGone(reply),
    )
  })
}

export default queryRoutes
