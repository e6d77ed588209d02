/**
 * Every `code` the API can answer in a problem (application/problem+json), with its
 * status(es) and what it means. The Problem schema lists these codes (openapi.yaml), the
 * README's error table documents them, and test/problem-codes.test.ts checks both against
 * the codes thrown in src/: a new code goes here first.
 */
export const PROBLEM_CODES = {
  validation_failed: { status: [400], meaning: 'the request does not match the route schema; the detail names the field' },
  invalid_json: { status: [400], meaning: 'the body is not JSON (the detail says where it broke) or is empty' },
  invalid_content_length: { status: [400], meaning: 'Content-Length does not match the body' },
  bad_url: { status: [400], meaning: 'the URL cannot be decoded' },
  uri_too_long: { status: [414], meaning: 'a path parameter longer than the router accepts' },
  bad_request: { status: [400], meaning: 'any other malformed request (Fastify may give it another 4xx status)' },
  ttl_out_of_range: { status: [400], meaning: "ttlSeconds or idleTtlSeconds above this server's maximum" },
  save_needs_exclusive: { status: [400], meaning: 'saveOnRelease with a shared session' },
  invalid_query: { status: [400], meaning: 'Chroma refused the JSON query (e.g. a wrong embedding dimension)' },
  bad_proxy_path: { status: [400], meaning: 'a proxy path outside /api/v2/, or with dot, empty or encoded-slash segments' },
  api_key_required: { status: [401], meaning: 'no API key (x-api-key or Authorization: Bearer) on a server with keys' },
  invalid_api_key: { status: [401], meaning: 'unknown or revoked API key' },
  lease_token_required: { status: [401], meaning: 'the proxy or query route without a lease token' },
  invalid_lease_token: { status: [401], meaning: 'unknown lease token' },
  lease_ended: { status: [401, 410], meaning: '401 on the proxy and query routes, 410 on renew: the lease was released or expired; acquire a new one' },
  operator_role_required: { status: [403], meaning: 'an operator route called with a client key' },
  wrong_session: { status: [403], meaning: 'the lease token belongs to another session' },
  lease_not_found: { status: [404], meaning: "no such lease (or another client's)" },
  session_not_found: { status: [404], meaning: 'no such session' },
  api_key_not_found: { status: [404], meaning: 'no such API key' },
  collection_not_found: { status: [404], meaning: 'the collection is not in the snapshot (acquire, lease long-poll, JSON query)' },
  route_not_found: { status: [404], meaning: 'no such route' },
  session_not_ready: { status: [409], meaning: 'the session is not serving (starting, draining, stopped); sessionStatus says which' },
  session_not_serving: { status: [409], meaning: 'drain: the session is PENDING or STARTING (sessionStatus says which); force stop it instead' },
  session_stopping: { status: [409], meaning: 'save: the session is stopping' },
  agent_error: { status: [409], meaning: 'save: the session agent refused without a code of its own' },
  save_unsupported: { status: [409, 422], meaning: 'save-back needs an s3:// snapshot (422 on acquire, 409 on save)' },
  pool_contended: { status: [409], meaning: 'the pool kept changing under an acquire; retry' },
  operator_key_required: { status: [409], meaning: 'the first API key must be an operator key' },
  last_operator_key: { status: [409], meaning: 'the last operator key cannot be revoked' },
  payload_too_large: { status: [413], meaning: 'the body exceeds BODY_LIMIT_BYTES (API) or PROXY_BODY_LIMIT_BYTES (proxy)' },
  unsupported_media_type: { status: [415], meaning: 'a body that is not content-type: application/json' },
  invalid_snapshot: { status: [422], meaning: 'not a snapshot URI, not a directory or archive, not a Chroma persist directory, or it does not match its manifest' },
  snapshot_not_found: { status: [422], meaning: 'nothing at the snapshot URI, or a file:// path outside SNAPSHOT_ROOT (the detail names its value)' },
  snapshot_forbidden: { status: [422], meaning: 'the control plane may not read the s3:// snapshot' },
  idempotency_key_reused: { status: [422], meaning: 'the Idempotency-Key was used for an acquire with other parameters' },
  internal_error: { status: [500], meaning: 'a fault of the control plane; its log has the request id' },
  session_failed: { status: [502], meaning: 'the session failed to start: sessionError has its reason; the lease is ended' },
  session_unreachable: { status: [502], meaning: 'the proxy could not reach the session' },
  chroma_error: { status: [502], meaning: 'Chroma failed a JSON query' },
  save_failed: { status: [502], meaning: "the save-back failed; the snapshot's latest version is unchanged" },
  snapshot_store_unavailable: { status: [502], meaning: 'the snapshot store (S3) could not be asked' },
  database_unavailable: { status: [503], meaning: 'Postgres cannot be reached right now: retry after Retry-After; proxied requests on lease routes already known keep flowing meanwhile' },
  session_timeout: { status: [504], meaning: 'the proxy: the session did not start answering within PROXY_TIMEOUT_SECONDS' },
} as const satisfies Record<string, { status: readonly number[]; meaning: string }>

export type ProblemCode = keyof typeof PROBLEM_CODES
