import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { optionalDefaults } from './openapi-defaults.ts'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Database } from './database/client.ts'
import authPlugin from './plugins/auth.ts'
import problemDetails, { frameworkProblem } from './plugins/problem-details.ts'
import jsonBody from './plugins/json-body.ts'
import healthRoutes from './routes/health.ts'
import keyRoutes from './routes/keys.ts'
import leaseRoutes from './routes/leases.ts'
import proxyRoutes from './routes/proxy.ts'
import queryRoutes from './routes/query.ts'
import sessionRoutes from './routes/sessions.ts'
import costRoutes from './routes/costs.ts'
import warmPoolRoutes from './routes/warm-pool.ts'
import pinRoutes from './routes/pins.ts'
import { Problem, problems } from './schemas/common.ts'
import { ApiKey } from './schemas/key.ts'
import { Pin } from './schemas/pin.ts'
import { WarmPoolHint } from './schemas/warm-pool.ts'
import { Lease } from './schemas/lease.ts'
import { Session, SessionEvent } from './schemas/session.ts'
import type { Services } from './services/index.ts'
import type { PreflightService } from './services/preflight.ts'
import preflightRoutes from './routes/preflight.ts'
import type { Clock } from './services/clock.ts'

export interface AppDeps {
  db: Database
  clock: Clock
  services: Services
  preflight: PreflightService
  publicUrl?: string
  bodyLimitBytes?: number
  proxyBodyLimitBytes?: number
  /** How long the proxy waits for a session's answer (headers, then each part of the body); default 120 s. */
  proxyTimeoutSeconds?: number
  /** The process's pino logger; none: the app logs nothing (tests). */
  logger?: FastifyBaseLogger
  /** True once shutdown began: /readyz turns 503 so load balancers drain this replica. */
  isShuttingDown?: () => boolean
}

export const OPENAPI_INFO = {
  title: 'chroma-lease',
  version: '1.0.0',
  description:
    'Leases on-demand ChromaDB sessions to workflows. Acquire a lease on a snapshot, query it through the proxy with the lease token, release it; idle sessions stop by themselves.',
}

/** Secrets never reach the log, whatever logs the request. */
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers["x-chroma-token"]',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'token',
  '*.token',
  'key',
]

function validator(coerceTypes: false | 'array'): Ajv {
  const ajv = new Ajv({ coerceTypes, useDefaults: true, removeAdditional: false, allErrors: false, strict: false })
  addFormats.default(ajv)
  return ajv
}

/**
 * Builds the HTTP app from its dependencies with no side effects (no listening, no
 * workers, no migrations): the server and the tests build the same app.
 */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    ...(deps.logger ? { loggerInstance: deps.logger } : { logger: false }),
    bodyLimit: deps.bodyLimitBytes ?? 1024 * 1024,
    requestIdHeader: 'x-request-id',
    genReqId: () => crypto.randomUUID(),
    frameworkErrors: frameworkProblem,
  }).withTypeProvider<TypeBoxTypeProvider>()
  // Query strings, params and headers arrive as text and are coerced to their schema's
  // types; JSON bodies are not, so `{"ttlSeconds": "60"}` is an error, not a guess.
  const validators = { body: validator(false), other: validator('array') }
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? validators.body : validators.other).compile(schema))
  // One registry per process: the services and workers report to it too.
  const metrics = deps.services.metrics

  for (const schema of [Problem, Session, Lease, SessionEvent, ApiKey, Pin, WarmPoolHint]) app.addSchema(schema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: OPENAPI_INFO,
      tags: [
        { name: 'leases', description: 'Acquire, read, renew and release leases' },
        { name: 'sessions', description: 'Operators: inspect, drain and stop sessions' },
        { name: 'query', description: 'JSON queries for callers without a Chroma client' },
        { name: 'proxy', description: "Chroma's own HTTP API through the control plane" },
        { name: 'keys', description: 'Operators: create, list and revoke API keys' },
        { name: 'pins', description: 'Operators: keep sessions of a snapshot READY with no lease' },
        { name: 'warm-pool', description: 'Hints: tell the warm pool ahead about a burst of acquires' },
        { name: 'health', description: 'Liveness, readiness, metrics' },
      ],
      components: {
        securitySchemes: {
          apiKey: { type: 'apiKey', in: 'header', name: 'x-api-key' },
          bearer: { type: 'http', scheme: 'bearer', description: 'An API key, or a lease token on the proxy and query routes' },
          chromaToken: { type: 'apiKey', in: 'header', name: 'x-chroma-token', description: 'A lease token' },
        },
      },
      security: [{ apiKey: [] }, { bearer: [] }],
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
    transformObject: (document) => ('openapiObject' in document ? optionalDefaults(document.openapiObject) : document.swaggerObject),
  })
  // Swagger UI is the operators' console: Authorize with an operator key, then list,
  // inspect, drain and stop sessions, and manage keys (README, Operate it).
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    uiConfig: { persistAuthorization: true, tryItOutEnabled: true, displayRequestDuration: true, filter: true, defaultModelsExpandDepth: -1 },
  })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())

  // Any route may meet a database outage: each documents its 503 database_unavailable
  // (liveness reads no database).
  app.addHook('onRoute', (route) => {
    const response = route.schema?.response as Record<string, unknown> | undefined
    if (response && !(503 in response) && route.url !== '/healthz') route.schema!.response = { ...response, ...problems(503) }
  })
  await app.register(problemDetails)
  await app.register(jsonBody)
  await app.register(authPlugin, { apiKeys: deps.services.apiKeys })
  // A connection busy when shutdown began is not idle when Fastify closes idle ones, and
  // keep-alive would hold the close open for its timeout: ask the client to close it.
  let closing = false
  app.addHook('onSend', async (_request, reply) => {
    if (closing || deps.isShuttingDown?.()) reply.header('connection', 'close')
  })
  // Requests held for a starting session would keep close() waiting for up to
  // PROXY_HOLD_SECONDS: they are let go first, with a 503 that says to retry.
  app.addHook('preClose', async () => {
    closing = true
    deps.services.holds.close()
  })
  app.addHook('onResponse', async (request, reply) => {
    metrics.httpDuration.observe(
      { method: request.method, route: request.routeOptions.url ?? 'unmatched', status_class: `${Math.floor(reply.statusCode / 100)}xx` },
      reply.elapsedTime / 1000,
    )
  })

  await app.register(healthRoutes, { db: deps.db, metrics, isShuttingDown: deps.isShuttingDown ?? (() => false) })
  await app.register(leaseRoutes, { services: deps.services, publicUrl: deps.publicUrl })
  await app.register(sessionRoutes, { services: deps.services, publicUrl: deps.publicUrl })
  await app.register(costRoutes, { services: deps.services })
  await app.register(warmPoolRoutes, { services: deps.services })
  await app.register(pinRoutes, { services: deps.services })
  await app.register(keyRoutes, { services: deps.services })
  await app.register(preflightRoutes, { preflight: deps.preflight })
  await app.register(queryRoutes, { services: deps.services })
  await app.register(proxyRoutes, {
    services: deps.services,
    bodyLimit: deps.proxyBodyLimitBytes ?? 32 * 1024 * 1024,
    timeoutMs: (deps.proxyTimeoutSeconds ?? 120) * 1000,
  })
  return app
}
