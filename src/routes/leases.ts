import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { AcquireBody, GetLeaseQuery, IdempotencyHeaders, LeaseList, LeaseListQuery, RenewBody } from '../schemas/lease.ts'
import type { Services } from '../services/index.ts'
import { baseUrlOf } from './base-url.ts'
import { clientGone } from './client-gone.ts'

const Lease = { $ref: 'Lease' } as const

const leaseRoutes: FastifyPluginAsyncTypebox<{ services: Services; publicUrl?: string }> = async (app, { services, publicUrl }) => {
  const { leases } = services
  app.addHook('preHandler', app.requireRole('client'))

  app.post('/v1/leases', {
    schema: {
      tags: ['leases'],
      summary: 'Acquire a lease: reuse the running session for the snapshot, or start one',
      body: AcquireBody,
      headers: IdempotencyHeaders,
      response: { 200: Lease, 201: Lease, ...problems(400, 401, 403, 404, 409, 422, 502) },
    },
  }, async (request, reply) => {
    const { lease, created } = await leases.acquire(request.principal, request.body, request.headers['idempotency-key'], baseUrlOf(request, publicUrl), request.body.waitSeconds ? clientGone(reply) : undefined)
    return reply.code(created ? 201 : 200).send(lease)
  })

  app.get('/v1/leases', {
    schema: { tags: ['leases'], summary: "List leases (a client sees its own)", querystring: LeaseListQuery, response: { 200: LeaseList, ...problems(400, 401) } },
  }, async (request) => ({ leases: await leases.list(request.principal, request.query, baseUrlOf(request, publicUrl)) }))

  app.get('/v1/leases/:id', {
    schema: {
      tags: ['leases'],
      summary: 'Read a lease and its session; waitSeconds long-polls until READY or FAILED',
      params: IdParams,
      querystring: GetLeaseQuery,
      response: { 200: Lease, ...problems(400, 401, 404, 422, 502) },
    },
  }, async (request, reply) => leases.get(request.principal, request.params.id, request.query.waitSeconds, baseUrlOf(request, publicUrl), request.query.waitSeconds ? clientGone(reply) : undefined))

  app.post('/v1/leases/:id/renew', {
    schema: {
      tags: ['leases'],
      summary: "Extend an active lease's TTL",
      params: IdParams,
      body: RenewBody,
      response: { 200: Lease, ...problems(400, 401, 404, 410) },
    },
  }, async (request) => leases.renew(request.principal, request.params.id, request.body?.ttlSeconds, baseUrlOf(request, publicUrl)))

  app.delete('/v1/leases/:id', {
    schema: { tags: ['leases'], summary: 'Release a lease (idempotent)', params: IdParams, response: { 200: Lease, ...problems(400, 401, 404) } },
  }, async (request) => leases.release(request.principal, request.params.id, baseUrlOf(request, publicUrl)))
}

export default leaseRoutes
