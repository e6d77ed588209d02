import { parseArgs } from 'node:util'
import { ChromaLeaseClient, ChromaLeaseError, unwrap, type components, type paths } from '@chroma-lease/client'
import { formatTable, age, shorten, shortenMiddle, compactJson } from './table.ts'

/**
 * `chroma-lease`: the operators' command line (bin/chroma-lease.js runs its esbuild bundle,
 * dist/cli.js). `serve` and `migrate` run the process and the migrations on this machine;
 * the other commands call the HTTP API of a running control plane with an API key, through
 * @chroma-lease/client. An id may be given as a unique prefix of at least 4 characters.
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
  warm-pool [--limit N]              the warm pool: its size, demand and idle cost, and its unclaimed agents
  warm-pool hint --count N [--seconds S]
                                     announce a burst: N more warm agents for S seconds (default 600)
  warm-pool hints                    active hints (a client key's own; all for an operator)
  warm-pool unhint ID                end a hint early
  pins list                          pinned snapshots, with the sessions each keeps READY
  pins create --snapshot URI [--collection NAME] [--mode shared|exclusive] [--sessions N]
                                     keep a snapshot's shared session READY, or N exclusive standbys
  pins remove ID                     unpin: unclaimed standbys stop, a shared session idles out

Options:
  --url URL          the control plane (env CHROMA_LEASE_URL; default http://127.0.0.1:8080)
  --api-key KEY      an API key (env CHROMA_LEASE_API_KEY): operator for keys, sessions, pins and
                     warm-pool; a client key sees its own leases, costs and hints
  --json             print the API's JSON instead of tables
  -h, --help         this help

An ID may be a unique prefix of the id (at least 4 characters), as git and docker take them.
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
  count: { type: 'string' },
  seconds: { type: 'string' },
  snapshot: { type: 'string' },
  collection: { type: 'string' },
  mode: { type: 'string' },
  sessions: { type: 'string' },
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
  count?: string
  seconds?: string
  snapshot?: string
  collection?: string
  mode?: string
  sessions?: string
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
  'warm-pool': ['limit'],
  'warm-pool hint': ['count', 'seconds'],
  'warm-pool hints': [],
  'warm-pool unhint': [],
  'pins list': [],
  'pins create': ['snapshot', 'collection', 'mode', 'sessions'],
  'pins remove': [],
}
const COMMON: Array<keyof Flags> = ['url', 'api-key', 'json', 'help']
const WITH_ID = new Set(['keys revoke', 'sessions show', 'sessions drain', 'sessions stop', 'leases release', 'warm-pool unhint', 'pins remove'])

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
    if (err instanceof ChromaLeaseError) {
      io.err(`chroma-lease: ${err.status === null ? '' : `${err.status} ${err.code}: `}${err.message}${err.status === 401 && !apiKeyGiven(argv, io) ? ' (set --api-key or CHROMA_LEASE_API_KEY)' : ''}\n`)
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
  const given = rest[0]
  if (WITH_ID.has(command) ? rest.length !== 1 : rest.length !== 0) {
    throw new UsageError(WITH_ID.has(command) ? `${command} takes one id` : `${command} takes no arguments, got ${rest.join(' ')}`)
  }
  const url = flags.url ?? io.env.CHROMA_LEASE_URL ?? 'http://127.0.0.1:8080'
  if (!URL.canParse(url)) throw new UsageError(`--url ${JSON.stringify(url)} is not a URL`)
  const client = new ChromaLeaseClient({
    url,
    apiKey: flags['api-key'] ?? io.env.CHROMA_LEASE_API_KEY,
    retry: { retries: 2, baseDelayMs: 200 },
    fetch: (request) => fetch(request, { signal: AbortSignal.timeout(60_000) }),
  })
  const { api } = client
  const print = (body: unknown, human: () => string) => io.out(flags.json ? JSON.stringify(body, null, 2) + '\n' : human())

  switch (command) {
    case 'keys create': {
      if (!flags.name) throw new UsageError('keys create needs --name')
      if (flags.role !== undefined && flags.role !== 'client' && flags.role !== 'operator') throw new UsageError('--role is client or operator')
      const key = await unwrap(api.POST('/v1/keys', { body: { name: flags.name, ...(flags.role ? { role: flags.role } : {}) } }))
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
      const { keys } = await unwrap(api.GET('/v1/keys'))
      print({ keys }, () => keysTable(keys))
      return 0
    }
    case 'keys revoke': {
      const id = await resolveId(client, 'key', given!)
      const key = await unwrap(api.DELETE('/v1/keys/{id}', { params: { path: { id } } }))
      print(key, () => keysTable([key]))
      return 0
    }
    case 'sessions list': {
      const status = (flags.status ?? []).flatMap((s) => s.split(',')).map((one) => one.trim().toUpperCase()) as SessionRow['status'][]
      const { sessions } = await unwrap(api.GET('/v1/sessions', { params: { query: { ...(flags.limit ? { limit: Number(flags.limit) } : {}), ...(status.length ? { status } : {}) } } }))
      print({ sessions }, () => sessionsTable(sessions))
      return 0
    }
    case 'sessions show': {
      const id = await resolveId(client, 'session', given!)
      const session = await unwrap(api.GET('/v1/sessions/{id}', { params: { path: { id } } }))
      const { events } = await unwrap(api.GET('/v1/sessions/{id}/events', { params: { path: { id }, query: { limit: 1000 } } }))
      print({ session, events }, () => sessionDetail(session) + '\nTimeline\n' + eventsTable(events))
      return 0
    }
    case 'sessions drain':
    case 'sessions stop': {
      const id = await resolveId(client, 'session', given!)
      const query = { force: command === 'sessions stop', ...(flags.reason ? { reason: flags.reason } : {}) }
      const session = await unwrap(api.DELETE('/v1/sessions/{id}', { params: { path: { id }, query } }))
      print(session, () => sessionsTable([session]))
      return 0
    }
    case 'leases list': {
      const query = { ...(flags.limit ? { limit: Number(flags.limit) } : {}), ...(flags.session ? { sessionId: await resolveId(client, 'session', flags.session) } : {}), ...(flags.active ? { active: true } : {}) }
      const { leases } = await unwrap(api.GET('/v1/leases', { params: { query } }))
      print({ leases }, () => leasesTable(leases))
      return 0
    }
    case 'leases release': {
      const lease = await client.release(await resolveId(client, 'lease', given!))
      print(lease, () => leasesTable([lease]))
      return 0
    }
    case 'costs': {
      const query = { ...(flags.limit ? { limit: Number(flags.limit) } : {}), ...(flags.holder !== undefined ? { holder: flags.holder } : {}), ...(flags.since ? { since: flags.since } : {}) }
      const { workflows } = await unwrap(api.GET('/v1/costs', { params: { query } }))
      print({ workflows }, () => costsTable(workflows))
      return 0
    }
    case 'warm-pool': {
      const pool = await unwrap(api.GET('/v1/warm-pool', { params: { query: { ...(flags.limit !== undefined ? { limit: wholeNumber('limit', flags.limit) } : {}) } } }))
      print(pool, () => warmPoolDetail(pool) + '\nUnclaimed agents\n' + warmAgentsTable(pool.agents))
      return 0
    }
    case 'warm-pool hint': {
      if (flags.count === undefined) throw new UsageError('warm-pool hint needs --count (the acquires coming)')
      const body = { count: wholeNumber('count', flags.count), ...(flags.seconds !== undefined ? { seconds: wholeNumber('seconds', flags.seconds) } : {}) }
      const hint = await unwrap(api.POST('/v1/warm-pool/hints', { body }))
      print(hint, () => hintsTable([hint]))
      return 0
    }
    case 'warm-pool hints': {
      const { hints } = await unwrap(api.GET('/v1/warm-pool/hints'))
      print({ hints }, () => hintsTable(hints))
      return 0
    }
    case 'warm-pool unhint': {
      const id = await resolveId(client, 'hint', given!)
      // The API answers 204; the hint as it was is read first so that the user sees what ended.
      const { hints } = await unwrap(api.GET('/v1/warm-pool/hints'))
      await unwrap(api.DELETE('/v1/warm-pool/hints/{id}', { params: { path: { id } } }))
      const hint = hints.find((h) => h.id === id) ?? { id }
      print(hint, () => ('count' in hint ? hintsTable([hint]) : '') + `Ended: the pool's target no longer counts hint ${id}.\n`)
      return 0
    }
    case 'pins list': {
      const { pins } = await unwrap(api.GET('/v1/pins'))
      print({ pins }, () => pinsTable(pins))
      return 0
    }
    case 'pins create': {
      if (!flags.snapshot) throw new UsageError('pins create needs --snapshot (s3://bucket/key or file:///path)')
      const mode = PIN_MODES.find((m) => m === flags.mode) // the flag typed as the API's union
      if (mode !== flags.mode) throw new UsageError('--mode is shared or exclusive')
      const body = {
        snapshot: flags.snapshot,
        ...(flags.collection !== undefined ? { collection: flags.collection } : {}),
        ...(mode ? { mode } : {}),
        ...(flags.sessions !== undefined ? { sessions: wholeNumber('sessions', flags.sessions) } : {}),
      }
      const pin = await unwrap(api.POST('/v1/pins', { body }))
      print(pin, () => pinsTable([pin]) + `Its sessions start within a few seconds; 'chroma-lease pins list' shows them READY.\n`)
      return 0
    }
    case 'pins remove': {
      const id = await resolveId(client, 'pin', given!)
      const pin = await unwrap(api.DELETE('/v1/pins/{id}', { params: { path: { id } } }))
      print(pin, () => pinsTable([pin]))
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

const PIN_MODES = ['shared', 'exclusive'] as const

/** A flag's value as an integer (its range is the API's to check, so its 400 names the bound). */
function wholeNumber(flag: keyof Flags, value: string): number {
  if (!/^-?\d+$/.test(value.trim())) throw new UsageError(`--${flag} takes a whole number, got ${JSON.stringify(value)}`)
  return Number(value)
}

async function serve(): Promise<null> {
  await import('../server.ts')
  return null
}

async function migrate(): Promise<number> {
  await import('./migrate.ts')
  return 0
}

/** The kinds of id a prefix may name, with the problem code the API gives an unknown one. */
const NOT_FOUND_CODE = { session: 'session_not_found', lease: 'lease_not_found', key: 'api_key_not_found', pin: 'pin_not_found', hint: 'warm_pool_hint_not_found' } as const

const FULL_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const MIN_PREFIX = 4
/** Sessions are paged through by creation time; this bounds a prefix lookup to 100 pages. */
const MAX_SESSION_PAGES = 100

/**
 * The full id for `given`: itself when it is a whole id, else the one id of that kind
 * starting with it (as git and docker take unique prefixes). None: exit 1; several: a
 * usage error (exit 2) that lists them.
 */
async function resolveId(client: ChromaLeaseClient, kind: keyof typeof NOT_FOUND_CODE, given: string): Promise<string> {
  if (FULL_ID.test(given)) return given
  const prefix = given.toLowerCase()
  if (!/^[0-9a-f-]+$/.test(prefix)) throw new UsageError(`${JSON.stringify(given)} is not a ${kind} id or id prefix (hex digits and dashes)`)
  if (prefix.length < MIN_PREFIX) throw new UsageError(`give at least ${MIN_PREFIX} characters of the ${kind} id, got ${JSON.stringify(given)}`)
  let matches: Array<{ id: string; what: string }>
  let scope = ''
  if (kind === 'key') {
    const { keys } = await unwrap(client.api.GET('/v1/keys'))
    matches = keys.filter((k) => k.id.startsWith(prefix)).map((k) => ({ id: k.id, what: `${k.name}, ${k.role}${k.revokedAt ? ', revoked' : ''}` }))
  } else if (kind === 'pin') {
    const { pins } = await unwrap(client.api.GET('/v1/pins'))
    matches = pins.filter((p) => p.id.startsWith(prefix)).map((p) => ({ id: p.id, what: `${p.mode}, ${p.snapshot}${p.collection ? ` (${p.collection})` : ''}` }))
  } else if (kind === 'hint') {
    // Active hints only (a client key's own): an ended or expired hint cannot be ended again.
    const { hints } = await unwrap(client.api.GET('/v1/warm-pool/hints'))
    matches = hints.filter((h) => h.id.startsWith(prefix)).map((h) => ({ id: h.id, what: `count ${h.count}, expires ${h.expiresAt}` }))
    scope = ' among the active hints'
  } else if (kind === 'lease') {
    // The lease list has no paging: the newest 1000 are what a prefix can name.
    const { leases } = await unwrap(client.api.GET('/v1/leases', { params: { query: { limit: 1000 } } }))
    matches = leases.filter((l) => l.id.startsWith(prefix)).map((l) => ({ id: l.id, what: `${l.status}, holder ${l.holder ?? '-'}` }))
    if (leases.length === 1000) scope = ' among the newest 1000 leases (give the whole id for an older one)'
  } else {
    matches = []
    let before: string | undefined
    for (let page = 0; page < MAX_SESSION_PAGES; page++) {
      const { sessions } = await unwrap(client.api.GET('/v1/sessions', { params: { query: { limit: 1000, ...(before ? { before } : {}) } } }))
      matches.push(...sessions.filter((s) => s.id.startsWith(prefix)).map((s) => ({ id: s.id, what: `${s.status}, ${s.snapshot}` })))
      if (sessions.length < 1000) break
      before = sessions.at(-1)!.createdAt
    }
  }
  if (matches.length === 1) return matches[0]!.id
  if (matches.length === 0) throw new ChromaLeaseError(null, NOT_FOUND_CODE[kind], `no ${kind} id starts with ${given}${scope}`)
  throw new UsageError(`${given} is ambiguous: ${matches.length} ${kind}s start with it:\n${matches.map((m) => `  ${m.id}  (${m.what})`).join('\n')}\ngive more of the id`)
}

/** True when the command line or the environment gives an API key (for the hint on a 401). */
function apiKeyGiven(argv: string[], io: Io): boolean {
  return Boolean(io.env.CHROMA_LEASE_API_KEY) || argv.some((a) => a === '--api-key' || a.startsWith('--api-key='))
}

type ApiKeyRow = components['schemas']['ApiKey']
type SessionRow = components['schemas']['Session']
type EventRow = components['schemas']['SessionEvent']
type LeaseRow = components['schemas']['Lease']
type WorkflowCostRow = paths['/v1/costs']['get']['responses'][200]['content']['application/json']['workflows'][number]
type WarmPoolState = paths['/v1/warm-pool']['get']['responses'][200]['content']['application/json']
type WarmAgentRow = WarmPoolState['agents'][number]
type HintRow = components['schemas']['WarmPoolHint']
type PinRow = components['schemas']['Pin']

function keysTable(keys: Array<Omit<ApiKeyRow, 'revokedAt'> & { revokedAt?: string | null }>): string {
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
      shortenMiddle(s.snapshot, 60),
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

function warmPoolDetail(p: WarmPoolState): string {
  const { idle } = p
  const rows: Array<[string, string]> = [
    ['enabled', p.enabled ? 'true' : 'false (WARM_POOL_MAX=0: acquires launch cold, hints are refused)'],
    ['min', String(p.min)],
    ['max', String(p.max)],
    ['target', String(p.target)],
    ['hinted', String(p.hinted)],
    ['unfilled', String(p.unfilled)],
    ['agents', `${p.counts.ready} READY, ${p.counts.starting} STARTING, ${p.counts.pending} PENDING (unclaimed)`],
    ['demand', `${p.demand.arrivals} acquires needed a new session in the last ${p.demand.windowSeconds}s; a refill takes ${p.demand.refillSeconds}s`],
    ['idle cost', `$${idle.costUsd.toFixed(6)} for ${idle.idleSeconds}s of ${idle.agents} agents before their claim${idle.unpricedAgents ? ` (${idle.unpricedAgents} unpriced: no size reported)` : ''}`],
  ]
  const width = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n') + '\n'
}

function warmAgentsTable(agents: WarmAgentRow[]): string {
  return formatTable(
    ['ID', 'STATUS', 'GENERATION', 'ENDPOINT', 'AGE', 'READY FOR'],
    agents.map((a) => [a.id, a.status, String(a.generation), a.host ? `${a.host}:${a.port ?? '-'}` : '-', age(a.createdAt), a.readyAt ? age(a.readyAt) : '-']),
  )
}

function hintsTable(hints: HintRow[]): string {
  return formatTable(
    ['ID', 'COUNT', 'AGE', 'EXPIRES'],
    hints.map((h) => [h.id, String(h.count), age(h.createdAt), h.expiresAt]),
  )
}

function pinsTable(pins: PinRow[]): string {
  return formatTable(
    ['ID', 'MODE', 'SESSIONS', 'READY', 'STARTING', 'SNAPSHOT', 'COLLECTION', 'AGE'],
    pins.map((p) => [p.id, p.mode, String(p.sessions), String(p.ready), String(p.starting), shortenMiddle(p.snapshot, 60), p.collection ?? '-', age(p.createdAt)]),
  )
}
