import { parseArgs } from 'node:util'
import type { WorkflowCost } from '../services/cost-report.ts'
import type { SessionView } from '../services/sessions.ts'
import { formatTable, age, shorten, compactJson } from './table.ts'

/**
 * `chroma-lease`: the operators' command line (bin/chroma-lease.js runs it through tsx).
 * `serve` and `migrate` run the process and the migrations on this machine; the other
 * commands call the HTTP API of a running control plane with an API key.
 */

export const USAGE = `Usage: chroma-lease <command> [options]

Run it here:
  serve                              run the control plane (configured by environment: README, Configure it)
  migrate                            apply prisma/migrations to DATABASE_URL (or the embedded database)

Talk to a running control plane (--url, --api-key):
  keys create --name NAME [--role client|operator]
                                     make an API key and print it (shown once)
  keys list                          API keys (never the keys themselves)
  keys revoke ID                     revoke a key (not the last operator key)
  sessions list [--status S]... [--limit N]
                                     sessions with live lease counts, newest first
  sessions show ID                   one session and its timeline
  sessions drain ID [--reason TEXT]  take no new leases; stop once its leases end
  sessions stop ID [--reason TEXT]   force stop now, ending its leases
  leases list [--session ID] [--active] [--limit N]
                                     leases, newest first
  leases release ID                  release a lease (idempotent)
  costs [--holder H] [--since TIME] [--limit N]
                                     cost per workflow (lease holder) at Fargate prices

Options:
  --url URL          the control plane (env CHROMA_LEASE_URL; default http://127.0.0.1:8080)
  --api-key KEY      an API key, operator for keys and sessions (env CHROMA_LEASE_API_KEY)
  --json             print the API's JSON instead of tables
  -h, --help         this help
`

const OPTIONS = {
  url: { type: 'string' },
  'api-key': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  name: { type: 'string' },
  role: { type: 'string' },
  status: { type: 'string', multiple: true },
  limit: { type: 'string' },
  reason: { type: 'string' },
  session: { type: 'string' },
  active: { type: 'boolean' },
  holder: { type: 'string' },
  since: { type: 'string' },
} as const

type Flags = {
  url?: string
  'api-key'?: string
  json?: boolean
  help?: boolean
  name?: string
  role?: string
  status?: string[]
  limit?: string
  reason?: string
  session?: string
  active?: boolean
  holder?: string
  since?: string
}

/** Options each command takes besides the common ones. */
const COMMAND_OPTIONS: Record<string, Array<keyof Flags>> = {
  'keys create': ['name', 'role'],
  'keys list': [],
  'keys revoke': [],
  'sessions list': ['status', 'limit'],
  'sessions show': [],
  'sessions drain': ['reason'],
  'sessions stop': ['reason'],
  'leases list': ['session', 'active', 'limit'],
  'leases release': [],
  costs: ['holder', 'since', 'limit'],
}
const COMMON: Array<keyof Flags> = ['url', 'api-key', 'json', 'help']
const WITH_ID = new Set(['keys revoke', 'sessions show', 'sessions drain', 'sessions stop', 'leases release'])

export interface Io {
  env: Record<string, string | undefined>
  out: (text: string) => void
  err: (text: string) => void
}

const processIo: Io = {
  env: process.env,
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
}

class UsageError extends Error {}

/** An error answer from the API (RFC 9457 problem details), or no answer at all. */
export class ApiError extends Error {
  constructor(
    readonly status: number | null,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/**
 * Runs one command. Returns the exit code (0 ok, 1 the API refused or could not be
 * reached, 2 bad usage), or null for `serve`, which keeps running.
 */
export async function main(argv: string[], io: Io = processIo): Promise<number | null> {
  try {
    return await dispatch(argv, io)
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`chroma-lease: ${err.message}\nRun 'chroma-lease --help' for usage.\n`)
      return 2
    }
    if (err instanceof ApiError) {
      io.err(`chroma-lease: ${err.status === null ? '' : `${err.status} ${err.code}: `}${err.message}\n`)
      return 1
    }
    io.err(`chroma-lease: ${(err as Error).message}\n`)
    return 1
  }
}

async function dispatch(argv: string[], io: Io): Promise<number | null> {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const flags = parsed.values as Flags
  const [group, action, ...rest] = parsed.positionals
  if (flags.help || group === undefined || group === 'help') {
    io.out(USAGE)
    return group === undefined && !flags.help ? 2 : 0
  }
  if (group === 'serve' || group === 'migrate') {
    if (action !== undefined || Object.keys(flags).length) throw new UsageError(`${group} takes no arguments; it is configured by environment variables`)
    return group === 'serve' ? serve() : migrate()
  }
  const command = `${group} ${action ?? ''}`.trim()
  const allowed = COMMAND_OPTIONS[command]
  if (!allowed) throw new UsageError(action === undefined ? `${group}: which one? (${subcommands(group)})` : `unknown command: ${command}`)
  for (const flag of Object.keys(flags) as Array<keyof Flags>) {
    if (!COMMON.includes(flag) && !allowed.includes(flag)) throw new UsageError(`${command} does not take --${flag}`)
  }
  const id = rest[0]
  if (WITH_ID.has(command) ? rest.length !== 1 : rest.length !== 0) {
    throw new UsageError(WITH_ID.has(command) ? `${command} takes one id` : `${command} takes no arguments, got ${rest.join(' ')}`)
  }
  const api = new Api(flags.url ?? io.env.CHROMA_LEASE_URL ?? 'http://127.0.0.1:8080', flags['api-key'] ?? io.env.CHROMA_LEASE_API_KEY)
  const print = (body: unknown, human: () => string) => io.out(flags.json ? JSON.stringify(body, null, 2) + '\n' : human())

  switch (command) {
    case 'keys create': {
      if (!flags.name) throw new UsageError('keys create needs --name')
      if (flags.role !== undefined && flags.role !== 'client' && flags.role !== 'operator') throw new UsageError('--role is client or operator')
      const key = await api.call<CreatedKey>('POST', '/v1/keys', { name: flags.name, ...(flags.role ? { role: flags.role } : {}) })
      print(key, () => keysTable([key]) + `\nkey: ${key.key}\nThis is the only time the key is shown; it is stored as a hash.\n`)
      if (key.enabledNow) {
        io.err(
          'This was the first API key: the API-key check is on now, and every call needs a key.\n' +
            'The server still listens on loopback only; to serve other hosts, restart it with this key in API_KEYS (operator:KEY) and HOST set.\n',
        )
      }
      return 0
    }
    case 'keys list': {
      const { keys } = await api.call<{ keys: ApiKeyRow[] }>('GET', '/v1/keys')
      print({ keys }, () => keysTable(keys))
      return 0
    }
    case 'keys revoke': {
      const key = await api.call<ApiKeyRow>('DELETE', `/v1/keys/${seg(id!)}`)
      print(key, () => keysTable([key]))
      return 0
    }
    case 'sessions list': {
      const query = new URLSearchParams()
      for (const s of flags.status ?? []) for (const one of s.split(',')) query.append('status', one.trim().toUpperCase())
      if (flags.limit) query.set('limit', flags.limit)
      const { sessions } = await api.call<{ sessions: SessionRow[] }>('GET', `/v1/sessions${query.size ? `?${query}` : ''}`)
      print({ sessions }, () => sessionsTable(sessions))
      return 0
    }
    case 'sessions show': {
      const session = await api.call<SessionRow>('GET', `/v1/sessions/${seg(id!)}`)
      const { events } = await api.call<{ events: EventRow[] }>('GET', `/v1/sessions/${seg(id!)}/events?limit=1000`)
      print({ session, events }, () => sessionDetail(session) + '\nTimeline\n' + eventsTable(events))
      return 0
    }
    case 'sessions drain':
    case 'sessions stop': {
      const query = new URLSearchParams()
      if (command === 'sessions stop') query.set('force', 'true')
      if (flags.reason) query.set('reason', flags.reason)
      const session = await api.call<SessionRow>('DELETE', `/v1/sessions/${seg(id!)}${query.size ? `?${query}` : ''}`)
      print(session, () => sessionsTable([session]))
      return 0
    }
    case 'leases list': {
      const query = new URLSearchParams()
      if (flags.session) query.set('sessionId', flags.session)
      if (flags.active) query.set('active', 'true')
      if (flags.limit) query.set('limit', flags.limit)
      const { leases } = await api.call<{ leases: LeaseRow[] }>('GET', `/v1/leases${query.size ? `?${query}` : ''}`)
      print({ leases }, () => leasesTable(leases))
      return 0
    }
    case 'leases release': {
      const lease = await api.call<LeaseRow>('DELETE', `/v1/leases/${seg(id!)}`)
      print(lease, () => leasesTable([lease]))
      return 0
    }
    case 'costs': {
      const query = new URLSearchParams()
      if (flags.holder !== undefined) query.set('holder', flags.holder)
      if (flags.since) query.set('since', flags.since)
      if (flags.limit) query.set('limit', flags.limit)
      const { workflows } = await api.call<{ workflows: WorkflowCostRow[] }>('GET', `/v1/costs${query.size ? `?${query}` : ''}`)
      print({ workflows }, () => costsTable(workflows))
      return 0
    }
  }
  throw new UsageError(`unknown command: ${command}`)
}

function subcommands(group: string): string {
  return Object.keys(COMMAND_OPTIONS)
    .filter((c) => c.startsWith(`${group} `))
    .map((c) => c.slice(group.length + 1))
    .join(', ') || 'see --help'
}

const seg = (id: string) => encodeURIComponent(id)

async function serve(): Promise<null> {
  await import('../server.ts')
  return null
}

async function migrate(): Promise<number> {
  await import('./migrate.ts')
  return 0
}

/** The control plane's HTTP API, with the API key on every call. */
export class Api {
  private readonly base: string

  constructor(
    url: string,
    private readonly apiKey: string | undefined,
    private readonly timeoutMs = 60_000,
  ) {
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      throw new UsageError(`--url ${JSON.stringify(url)} is not a URL`)
    }
    this.base = parsed.toString().replace(/\/+$/, '')
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response
    try {
      res = await fetch(`${this.base}${path}`, {
        method,
        headers: {
          accept: 'application/json',
          ...(this.apiKey ? { 'x-api-key': this.apiKey } : {}),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      })
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause
      throw new ApiError(null, 'unreachable', `cannot reach ${this.base}: ${cause?.code ?? cause?.message ?? (err as Error).message}`)
    }
    const text = await res.text()
    let json: unknown
    try {
      json = text ? JSON.parse(text) : null
    } catch {
      json = null
    }
    if (!res.ok) {
      const problem = (json ?? {}) as { code?: string; detail?: string; title?: string }
      const hint = res.status === 401 && !this.apiKey ? ' (set --api-key or CHROMA_LEASE_API_KEY)' : ''
      throw new ApiError(res.status, problem.code ?? 'http_error', `${problem.detail ?? problem.title ?? (text.slice(0, 200) || res.statusText)}${hint}`)
    }
    return json as T
  }
}

interface ApiKeyRow {
  id: string
  name: string
  role: string
  fingerprint: string
  createdAt: string
  revokedAt: string | null
}
interface CreatedKey extends ApiKeyRow {
  key: string
  enabledNow: boolean
}
/** A session as the API's JSON shows it. */
type SessionRow = SessionView
interface EventRow {
  id: string
  at: string
  type: string
  status: string | null
  reason: string | null
  leaseId: string | null
  detail: unknown
}
interface LeaseRow {
  id: string
  status: string
  holder: string | null
  expiresAt: string
  createdAt: string
  endedAt: string | null
  session: SessionRow
}

/** A workflow's cost as the API's JSON shows it. */
type WorkflowCostRow = WorkflowCost

function keysTable(keys: ApiKeyRow[]): string {
  return formatTable(
    ['ID', 'NAME', 'ROLE', 'FINGERPRINT', 'CREATED', 'REVOKED'],
    keys.map((k) => [k.id, shorten(k.name, 40), k.role, k.fingerprint, age(k.createdAt), k.revokedAt ? age(k.revokedAt) : '-']),
  )
}

function sessionsTable(sessions: SessionRow[]): string {
  return formatTable(
    ['ID', 'STATUS', 'MODE', 'LEASES', 'SNAPSHOT', 'COLLECTION', 'AGE', 'ENDPOINT / WHY'],
    sessions.map((s) => [
      s.id,
      s.status,
      s.mode,
      String(s.leaseCount),
      shorten(s.snapshot, 48, 'start'),
      s.collection ?? '-',
      age(s.createdAt),
      s.error ? shorten(s.error, 60) : s.endpoint ? s.endpoint.url : (s.stopReason ?? '-'),
    ]),
  )
}

function sessionDetail(s: SessionRow): string {
  const rows: Array<[string, string]> = [
    ['id', s.id],
    ['status', s.status],
    ['mode', s.mode],
    ['snapshot', s.snapshot],
    ['collection', s.collection ?? '-'],
    ['live leases', String(s.leaseCount)],
    ['endpoint', s.endpoint?.url ?? '-'],
    ['proxy', s.proxyUrl],
    ['generation', String(s.generation)],
    ['idle TTL', `${s.idleTtlSeconds}s`],
    ['created', `${s.createdAt} (${age(s.createdAt)} ago)`],
    ['ready', s.readyAt ?? '-'],
    ['ended', s.endedAt ?? '-'],
    ...(s.stopReason ? ([['stop reason', s.stopReason]] as Array<[string, string]>) : []),
    ...(s.error ? ([['error', s.error]] as Array<[string, string]>) : []),
    ...(s.usage ? ([['usage', `${(s.usage.memoryBytes / 1e6).toFixed(0)} MB, ${s.usage.cpuCores} CPU cores (${s.usage.at})`]] as Array<[string, string]>) : []),
    ...(s.compute
      ? ([['compute', `${s.compute.vcpu} vCPU, ${s.compute.memoryGb} GB ${s.compute.architecture}, ${s.compute.capacityProvider ?? '-'}: $${s.compute.costUsd} for ${s.compute.runSeconds}s`]] as Array<[string, string]>)
      : []),
  ]
  const width = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n') + '\n'
}

function eventsTable(events: EventRow[]): string {
  return formatTable(
    ['AT', 'EVENT', 'STATUS', 'REASON', 'LEASE', 'DETAIL'],
    events.map((e) => [e.at, e.type, e.status ?? '', shorten(e.reason ?? '', 50), e.leaseId ? e.leaseId.slice(0, 8) : '', shorten(compactJson(e.detail), 70)]),
  )
}

function leasesTable(leases: LeaseRow[]): string {
  return formatTable(
    ['ID', 'STATUS', 'SESSION', 'SESSION STATUS', 'HOLDER', 'AGE', 'EXPIRES'],
    leases.map((l) => [l.id, l.status, l.session.id, l.session.status, shorten(l.holder ?? '-', 40), age(l.createdAt), l.endedAt ? `ended ${l.endedAt}` : l.expiresAt]),
  )
}

function costsTable(workflows: WorkflowCostRow[]): string {
  return formatTable(
    ['HOLDER', 'LEASES', 'SESSIONS', 'COST (USD)', 'UNPRICED', 'LAST LEASE'],
    workflows.map((w) => [shorten(w.holder ?? '-', 60, 'start'), String(w.leases), String(w.sessions), w.costUsd.toFixed(6), String(w.unpricedLeases), age(w.lastLeaseAt)]),
  )
}
