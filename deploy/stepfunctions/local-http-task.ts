import { httpTasks, type AslDefinition, type HttpTaskParameters } from './templates.ts'

/**
 * A stand-in for Step Functions' HTTP Task (arn:aws:states:::http:invoke), to run the
 * templates with aws-local-stepfunctions against a real control plane. Each handler
 * makes the request a real HTTP Task would make and answers in its result shape:
 *
 *   request:  Method to ApiEndpoint (+ QueryParameters), the task's Headers, the
 *             connection's API key header, Step Functions' own User-Agent and
 *             `Range: bytes=0-262144`, RequestBody as JSON
 *             (`Content-Type: application/json; charset=UTF-8`)
 *   result:   { Headers: { name: [values] }, ResponseBody, StatusCode, StatusText },
 *             ResponseBody parsed when the answer is JSON
 *   failures: a non-2xx answer throws `States.Http.StatusCode.<code>` (catchable);
 *             no answer within 60 s throws `States.Http.Socket`; an answer over 256 KiB
 *             throws `States.DataLimitExceeded`, which no Catch handles. Headers an HTTP
 *             Task may not set (Authorization, Host, x-amz-*, x-forwarded-*, ...) and a
 *             ConnectionArn other than the connection's fail the task the same way.
 *
 * The Cause of a failed request here is the JSON of that result shape; the real
 * service words its Cause differently, so the templates never parse a Cause.
 */

export interface LocalConnection {
  /** The EventBridge connection's ARN, as the templates reference it. */
  arn: string
  /** API_KEY authorization: the header name and its value. */
  apiKeyName: string
  apiKeyValue: string
}

export interface HttpTaskResult {
  Headers: Record<string, string[]>
  ResponseBody: unknown
  StatusCode: number
  StatusText: string
  [key: string]: unknown
}

export interface HttpExchange {
  state: string
  method: string
  url: string
  requestHeaders: Record<string, string>
  requestBody: unknown
  status: number | null
  responseBody: unknown
  startedAt: number
  ms: number
}

export interface LocalHttpTaskOptions {
  connection: LocalConnection
  /** Shown in the User-Agent, as Step Functions shows its region. */
  region?: string
  /** Per request; the HTTP Task quota is 60 s. */
  timeoutMs?: number
  /** Every request made, in order of completion. */
  log?: HttpExchange[]
}

export const HTTP_TASK_TIMEOUT_MS = 60_000
export const MAX_PAYLOAD_BYTES = 262_144
const METHODS = new Set(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'])
const FORBIDDEN_HEADERS = new Set([
  'a-im', 'accept-charset', 'accept-datetime', 'accept-encoding', 'authorization', 'cache-control', 'connection',
  'content-encoding', 'content-md5', 'date', 'expect', 'forwarded', 'from', 'host', 'http2-settings', 'if-match',
  'if-modified-since', 'if-none-match', 'if-range', 'if-unmodified-since', 'max-forwards', 'origin', 'pragma',
  'proxy-authorization', 'referer', 'server', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'via', 'warning',
])

/** True for a header that an HTTP Task definition may not set. */
export function isForbiddenHttpTaskHeader(name: string): boolean {
  const h = name.toLowerCase()
  return FORBIDDEN_HEADERS.has(h) || h.startsWith('x-amz-') || h.startsWith('x-amzn-') || h.startsWith('x-forwarded-')
}

/** An error named as Step Functions names it; `catchable: false` is one that Catch cannot handle. */
export class StatesError extends Error {
  readonly isCatchable: boolean
  readonly isRetryable: boolean
  constructor(name: string, cause: string, opts: { catchable?: boolean; retryable?: boolean } = {}) {
    super(cause)
    this.name = name
    this.isCatchable = opts.catchable ?? true
    this.isRetryable = opts.retryable ?? opts.catchable ?? true
  }
}

/** Performs one HTTP Task with the task's resolved Parameters as input. */
export async function invokeHttpTask(state: string, input: unknown, opts: LocalHttpTaskOptions): Promise<HttpTaskResult> {
  const p = (input ?? {}) as HttpTaskParameters
  const runtime = (msg: string) => new StatesError('States.Runtime', `${state}: ${msg}`, { catchable: false })
  if (typeof p.ApiEndpoint !== 'string') throw runtime('ApiEndpoint must be a string')
  let url: URL
  try {
    url = new URL(p.ApiEndpoint)
  } catch {
    throw runtime(`ApiEndpoint is not a URL: ${p.ApiEndpoint}`)
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && isLoopback(url.hostname))) {
    throw runtime(`ApiEndpoint must be https (http only to loopback in local runs): ${p.ApiEndpoint}`)
  }
  const method = p.Method
  if (typeof method !== 'string' || !METHODS.has(method)) throw runtime(`Method must be one of ${[...METHODS].join(', ')}`)
  // `Authentication` is the documented field; newer definitions may say `InvocationConfig`.
  const connectionArn = p.Authentication?.ConnectionArn ?? p.InvocationConfig?.ConnectionArn
  if (connectionArn !== opts.connection.arn) {
    throw new StatesError('Events.ConnectionResource.ResourceNotFound', `${state}: no connection ${String(connectionArn)}`, { catchable: false })
  }
  if (p.Transform !== undefined) throw runtime('Transform is not emulated here: the templates send JSON')

  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(p.Headers ?? {})) {
    if (isForbiddenHttpTaskHeader(k)) throw runtime(`an HTTP Task cannot set the ${k} header`)
    headers[k.toLowerCase()] = Array.isArray(v) ? v.map(String).join(',') : String(v)
  }
  for (const [k, v] of Object.entries(p.QueryParameters ?? {})) {
    for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(item))
  }
  let body: string | undefined
  if (p.RequestBody !== undefined) {
    body = typeof p.RequestBody === 'string' ? p.RequestBody : JSON.stringify(p.RequestBody)
    headers['content-type'] ??= 'application/json; charset=UTF-8'
  }
  // What the service adds itself; the connection's API key wins over any task header.
  headers['user-agent'] = `Amazon|StepFunctions|HttpInvoke|${opts.region ?? 'us-east-1'}`
  headers.range = `bytes=0-${MAX_PAYLOAD_BYTES}`
  headers[opts.connection.apiKeyName.toLowerCase()] = opts.connection.apiKeyValue

  const startedAt = Date.now()
  const exchange: HttpExchange = {
    state,
    method,
    url: url.toString(),
    requestHeaders: headers,
    requestBody: p.RequestBody,
    status: null,
    responseBody: undefined,
    startedAt,
    ms: 0,
  }
  let res: Response
  let text: string
  try {
    res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(opts.timeoutMs ?? HTTP_TASK_TIMEOUT_MS) })
    text = await res.text()
  } catch (err) {
    exchange.ms = Date.now() - startedAt
    opts.log?.push(exchange)
    const e = err as Error
    if (e.name === 'TimeoutError') throw new StatesError('States.Http.Socket', `${state}: no answer within ${(opts.timeoutMs ?? HTTP_TASK_TIMEOUT_MS) / 1000} s`)
    throw new StatesError('States.Http.Socket', `${state}: ${e.message}`)
  }
  exchange.ms = Date.now() - startedAt
  exchange.status = res.status
  if (Buffer.byteLength(text) > MAX_PAYLOAD_BYTES) {
    opts.log?.push(exchange)
    throw new StatesError('States.DataLimitExceeded', `${state}: the answer is over ${MAX_PAYLOAD_BYTES} bytes`, { catchable: false })
  }
  const responseHeaders: Record<string, string[]> = {}
  res.headers.forEach((v, k) => {
    ;(responseHeaders[k] ??= []).push(v)
  })
  let responseBody: unknown = text
  const type = (res.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase()
  if ((type === 'application/json' || type.endsWith('+json')) && text !== '') {
    try {
      responseBody = JSON.parse(text)
    } catch {
      // left as text, as the service leaves a body that does not parse
    }
  }
  exchange.responseBody = responseBody
  opts.log?.push(exchange)
  const result: HttpTaskResult = { Headers: responseHeaders, ResponseBody: responseBody, StatusCode: res.status, StatusText: res.statusText }
  if (res.status < 200 || res.status > 299) {
    throw new StatesError(`States.Http.StatusCode.${res.status}`, JSON.stringify(result))
  }
  return result
}

/**
 * taskResourceLocalHandlers for aws-local-stepfunctions: one handler per HTTP Task
 * state of the definition, nested ones (Parallel branches, Map iterations) included.
 */
export function httpTaskHandlers(definition: AslDefinition, opts: LocalHttpTaskOptions): Record<string, (input: unknown) => Promise<HttpTaskResult>> {
  return Object.fromEntries(httpTasks(definition).map(({ name }) => [name, (input: unknown) => invokeHttpTask(name, input, opts)]))
}

/** aws-local-stepfunctions 3 uses Promise.withResolvers, which Node 20 lacks. */
export function polyfillPromiseWithResolvers(): void {
  const P = Promise as unknown as { withResolvers?: () => unknown }
  if (typeof P.withResolvers === 'function') return
  P.withResolvers = function withResolvers<T>() {
    let resolve!: (value: T | PromiseLike<T>) => void
    let reject!: (reason?: unknown) => void
    const promise = new Promise<T>((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host)
}
