import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify'
import { ANONYMOUS, type ApiKeyService, type Principal, type Role } from '../services/auth.ts'
import { forbidden, unauthorized } from '../services/errors.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** A preHandler that admits callers with an API key of at least this role. */
    requireRole(role: Role): preHandlerAsyncHookHandler
  }
  interface FastifyRequest {
    principal: Principal
  }
}

/** The API key from `x-api-key` (what an EventBridge connection sends) or `Authorization: Bearer`. */
function apiKeyOf(request: FastifyRequest): string | undefined {
  const header = request.headers['x-api-key']
  if (typeof header === 'string' && header) return header
  const auth = request.headers.authorization
  if (typeof auth === 'string' && auth.toLowerCase().startsWith('bearer ')) return auth.slice(7).trim() || undefined
  return undefined
}

/**
 * API-key authentication with two roles: `client` (leases) and `operator` (everything).
 * With no key configured the check is off and every caller is an operator; the
 * server then listens on loopback only (src/config.ts).
 */
export default fp(async function auth(app: FastifyInstance, opts: { apiKeys: ApiKeyService }) {
  app.decorateRequest('principal', null as unknown as Principal)
  app.decorate('requireRole', (role: Role): preHandlerAsyncHookHandler => {
    return async function requireRole(request) {
      if (!(await opts.apiKeys.isEnabled())) {
        request.principal = ANONYMOUS
        return
      }
      const key = apiKeyOf(request)
      if (!key) throw unauthorized('api_key_required', 'send an API key as x-api-key or Authorization: Bearer')
      const principal = await opts.apiKeys.authenticate(key)
      if (!principal) throw unauthorized('invalid_api_key', 'unknown or revoked API key')
      if (role === 'operator' && principal.role !== 'operator') {
        throw forbidden('operator_role_required', 'this route needs an operator key')
      }
      request.principal = principal
    }
  })
})
