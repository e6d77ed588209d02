import './polyfill.ts'

export { ChromaLeaseClient, unwrap, type AcquireBody, type AcquireOptions, type ChromaLeaseClientOptions } from './client.ts'
export { ChromaLeaseError, type ClientErrorCode, type Problem } from './errors.ts'
export { Lease, type ChromaOptions, type LeaseData, type SessionData } from './lease.ts'
export type { RetryOptions } from './retry.ts'
export type { components, paths } from './openapi.ts'
