import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { ApiKeyList, CreatedKey, CreateKeyBody } from '../schemas/key.ts'
import type { ApiKeyView } from '../services/auth.ts'
import type { Services } from '../services/index.ts'

const ApiKey = { $ref: 'ApiKey' } as const

const view = (k: ApiKeyView) => ({ ...k, createdAt: k.createdAt.toISOString(), revokedAt: k.revokedAt?.toISOString() ?? null })

/**
 * Operators manage API keys. On a server with no key yet (the API-key check is off and
 * it listens on loopback only) the first key must be an operator key; it turns the
 * check on.
 */
const keyRoutes: FastifyPluginAsyncTypebox<{ services: Services }> = async (app, { services }) => {
  const { apiKeys } = services
  app.addHook('preHandler', app.requireRole('operator'))

  app.post('/v1/keys', {
    schema: {
      tags: ['keys'],
      summary: 'Create an API key; the key is in this response only',
      description: 'On a server without keys the first key must have role operator (409 operator_key_required otherwise); it turns the API-key check on.',
      body: CreateKeyBody,
      response: { 201: CreatedKey, ...problems(400, 401, 403, 409) },
    },
  }, async (request, reply) => {
    const created = await apiKeys.create(request.body.name, request.body.role ?? 'client')
    request.log.info({ keyId: created.id, role: created.role, by: request.principal.id, enabledNow: created.enabledNow }, 'API key created')
    return reply.code(201).send({ ...view(created), revokedAt: null, key: created.key, enabledNow: created.enabledNow })
  })

  app.get('/v1/keys', {
    schema: { tags: ['keys'], summary: 'List API keys (never the keys themselves)', response: { 200: ApiKeyList, ...problems(401, 403) } },
  }, async () => ({ keys: (await apiKeys.list()).map(view) }))

  app.delete('/v1/keys/:id', {
    schema: {
      tags: ['keys'],
      summary: 'Revoke an API key (idempotent); every replica refuses it within 5 s',
      description: 'The last active operator key cannot be revoked (409 last_operator_key): create another one first.',
      params: IdParams,
      response: { 200: ApiKey, ...problems(400, 401, 403, 404, 409) },
    },
  }, async (request) => {
    const revoked = await apiKeys.revoke(request.params.id)
    request.log.info({ keyId: revoked.id, by: request.principal.id }, 'API key revoked')
    return view(revoked)
  })
}

export default keyRoutes
