import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { problems } from '../schemas/common.ts'
import { PreflightReport } from '../schemas/preflight.ts'
import type { PreflightService } from '../services/preflight.ts'

const preflightRoutes: FastifyPluginAsyncTypebox<{ preflight: PreflightService }> = async (app, { preflight }) => {
  app.get('/v1/preflight', {
    preHandler: app.requireRole('operator'),
    schema: {
      tags: ['health'],
      summary: 'Check that sessions can be launched: the cluster, task definition, subnets and security groups exist',
      description: 'Always 200: `ok` is false, and the failing checks say why, when something is missing.',
      response: { 200: PreflightReport, ...problems(401, 403) },
    },
  }, async () => preflight.run())
}

export default preflightRoutes
