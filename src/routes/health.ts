import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import type { Database } from '../database/client.ts'
import type { Metrics } from '../services/metrics.ts'

const Status = Type.Object({ status: Type.String(), detail: Type.Optional(Type.String()) })

const healthRoutes: FastifyPluginAsyncTypebox<{ db: Database; metrics: Metrics; isShuttingDown: () => boolean }> = async (app, { db, metrics, isShuttingDown }) => {
  app.get('/healthz', {
    schema: { tags: ['health'], summary: 'Liveness: the process answers', response: { 200: Status } },
  }, async () => ({ status: 'ok' }))

  app.get('/readyz', {
    schema: { tags: ['health'], summary: 'Readiness: the database answers and the process is not shutting down', response: { 200: Status, 503: Status } },
  }, async (_request, reply) => {
    if (isShuttingDown()) return reply.code(503).send({ status: 'shutting_down' })
    try {
      await db.$queryRaw`SELECT 1`
      return { status: 'ready' }
    } catch (err) {
      return reply.code(503).send({ status: 'database_unavailable', detail: (err as Error).message })
    }
  })

  app.get('/metrics', {
    schema: { tags: ['health'], summary: 'Prometheus metrics', produces: ['text/plain'], response: { 200: Type.String() } },
  }, async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()))
}

export default healthRoutes
