import { readFileSync } from 'node:fs'
import t from 'tap'
import { EnvSchema, loadConfig } from '../src/config.ts'

t.test('defaults run everything locally on loopback', async (t) => {
  const c = loadConfig({})
  t.equal(c.databaseUrl, undefined, 'embedded Postgres')
  t.equal(c.launcher, 'process')
  t.equal(c.host, '127.0.0.1', 'no API keys: loopback only')
  t.equal(c.port, 8080)
  t.same(c.apiKeys, [])
  t.match(c.snapshotRoot, /\/\.data\/snapshots$/)
  t.equal(c.retentionDays, 30, 'ended sessions\' leases and events are kept 30 days')
  t.equal(loadConfig({ RETENTION_DAYS: '7' }).retentionDays, 7)
})

t.test('API keys switch the bind address to all interfaces unless HOST says otherwise', async (t) => {
  const c = loadConfig({ API_KEYS: 'client:aaaaaaaaaaaaaaaa, operator:bbbbbbbbbbbbbbbb' })
  t.same(c.apiKeys, [
    { role: 'client', key: 'aaaaaaaaaaaaaaaa' },
    { role: 'operator', key: 'bbbbbbbbbbbbbbbb' },
  ])
  t.equal(c.host, '0.0.0.0')
  t.equal(loadConfig({ API_KEYS: 'client:aaaaaaaaaaaaaaaa', HOST: '127.0.0.1' }).host, '127.0.0.1')
})

t.test('bad settings fail at start with a clear error', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ PORT: 'eighty' }, /PORT/],
    [{ LAUNCHER: 'kubernetes' }, /LAUNCHER/],
    [{ HOST: '0.0.0.0' }, /no API_KEYS are configured/],
    [{ API_KEYS: 'admin:aaaaaaaaaaaaaaaa' }, /role:key with role client or operator/],
    [{ API_KEYS: 'client:short' }, /^(?!.*short\b).*shorter than 16/],
    [{ IDLE_TTL_SECONDS: '7200' }, /IDLE_TTL_SECONDS exceeds MAX_IDLE_TTL_SECONDS/],
    [{ LAUNCHER: 'fargate' }, /needs ECS_CLUSTER, ECS_TASK_DEFINITION, ECS_SUBNETS/],
    [{ SWEEP_INTERVAL_SECONDS: '0' }, /SWEEP_INTERVAL_SECONDS/],
    [{ AGENT_CONFIRM_INTERVAL_SECONDS: '400' }, /AGENT_CONFIRM_INTERVAL_SECONDS must be at most a third of SESSION_DEAD_MAN_SECONDS/],
    [{ RECONCILE_INTERVAL_SECONDS: '90' }, /RECONCILE_INTERVAL_SECONDS must not exceed AGENT_CONFIRM_INTERVAL_SECONDS/],
    [{ RETENTION_DAYS: '0' }, /RETENTION_DAYS/],
    [{ RETENTION_DAYS: 'a month' }, /RETENTION_DAYS/],
  ]
  for (const [env, message] of cases) {
    t.throws(() => loadConfig(env), { name: 'ConfigError', message }, JSON.stringify(env))
  }
})

t.test('an out-of-range setting names its bounds or allowed values, and what it got', async (t) => {
  t.throws(() => loadConfig({ LAUNCHER: 'ecs' }), { message: /LAUNCHER must be one of process, fargate \(got "ecs"\)/ })
  t.throws(() => loadConfig({ LOG_LEVEL: 'verbose' }), { message: /LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent/ })
  t.throws(() => loadConfig({ LEASE_TTL_SECONDS: '2' }), { message: /LEASE_TTL_SECONDS must be >= 5 \(got "2"\)/ })
  t.throws(() => loadConfig({ DATABASE_URL: '' }), { message: /^(?!.*got).*DATABASE_URL/ }, 'a value that may hold a secret is not echoed')
})

t.test("README's configuration table names every setting and states its bounds", async (t) => {
  const readme = readFileSync('README.md', 'utf8')
  const table = readme.slice(readme.indexOf('| variable | default | meaning |'))
  const rows = table.slice(0, table.indexOf('\n\n')).split('\n')
  const properties = (EnvSchema as unknown as { properties: Record<string, Record<string, unknown>> }).properties
  for (const [name, schema] of Object.entries(properties)) {
    const row = rows.find((r) => r.split('|')[1]?.includes(`\`${name}\``))
    if (!t.ok(row, `${name} has a row`)) continue
    const says = (text: string, what: string) => t.ok(row!.includes(text), `${name}: the README states ${what} (${text})`)
    const { minimum, maximum, exclusiveMinimum, maxLength } = schema as { minimum?: number; maximum?: number; exclusiveMinimum?: number; maxLength?: number }
    if (minimum !== undefined && maximum !== undefined) says(`${minimum}–${maximum}`, 'its range')
    else if (minimum !== undefined) says(`≥ ${minimum}`, 'its minimum')
    if (exclusiveMinimum !== undefined) says(`> ${exclusiveMinimum}`, 'its exclusive minimum')
    if (maxLength !== undefined) says(`at most ${maxLength} characters`, 'its length')
    for (const value of (schema.enum as string[] | undefined) ?? []) says(`\`${value}\``, 'an allowed value')
    if (schema.type === 'boolean') says('`true`', 'that it is a boolean')
  }
})
