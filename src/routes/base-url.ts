import type { FastifyRequest } from 'fastify'

/** The URL callers reach this control plane at: PUBLIC_URL, or what the request says. */
export function baseUrlOf(request: FastifyRequest, publicUrl: string | undefined): string {
  return publicUrl?.replace(/\/+$/, '') ?? `${request.protocol}://${request.host}`
}
