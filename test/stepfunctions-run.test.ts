import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import {
  httpTaskHandlers,
  MAX_PAYLOAD_BYTES,
  polyfillPromiseWithResolvers,
  StatesError,
  type HttpExchange,
  type LocalConnection,
} from '../deploy/stepfunctions/local-http-task.ts'
import { renderTemplate, type TemplateName } from '../deploy/stepfunctions/templates.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'
import { buildTestApp } from './helpers/app.ts'

// The Step Functions templates, executed locally by aws-local-stepfunctions against
// the real control plane (real Postgres, real Chroma sessions started by the process
// launcher). Each HTTP Task state is answered by a local handler that makes the very
// request an HTTP Task makes (method, endpoint, headers with the connection's API key,
// JSON body) and returns the HTTP Task's result shape; see
// deploy/stepfunctions/local-http-task.ts for what is and is not emulated.

polyfillPromiseWithResolvers() // aws-local-stepfunctions 3 needs it; Node 20 lacks it
const { StateMachine } = await import('aws-local-stepfunctions')

const REGION = 'eu-west-1'
const ACCOUNT = '123456789012'
const CLIENT_KEY = 'clk_step-functions-connection-key'
const OPERATOR_KEY = 'opk_test-operator-key'
const connection: LocalConnection = {
  arn: `arn:aws:events:${REGION}:${ACCOUNT}:connection/chroma-lease/5d1c2b9e-7a55-4d51-9e0f-3c2f1f8a0b11`,
  apiKeyName: 'x-api-key',
  apiKeyValue: CLIENT_KEY,
}

// ---- the control plane ------------------------------------------------------------
const root = await mkdtemp(join(tmpdir(), 'sfn-snapshots-'))
const fixture = await buildSnapshotFixture(join(root, 'receipts'))
const broken = join(root, 'broken.tar')
await writeFile(broken, 'this is not a tar archive\n'.repeat(64))

const cp = await buildTestApp(t, {
  listen: true,
  snapshotRoot: root,
  apiKeys: [
    { role: 'client', key: CLIENT_KEY },
    { role: 'operator', key: OPERATOR_KEY },
  ],
  startTimeoutSeconds: 60,
})
cp.workers.start() // the reconciler really starts the sessions while executions poll
t.teardown(() => cp.workers.stop())

async function api(method: 'GET' | 'DELETE', url: string, key = OPERATOR_KEY) {
  const res = await cp.app.inject({ method, url, headers: { 'x-api-key': key } })
  return { status: res.statusCode, body: res.json() as Record<string, any> }
}

// ---- running an execution -----------------------------------------------------------
interface Run {
  status: 'SUCCEEDED' | 'FAILED' | 'ABORTED'
  output: any
  error?: string
  cause?: string
  exchanges: HttpExchange[]
  /** The largest state input/output seen, in bytes (Step Functions' limit is 256 KiB). */
  maxStateBytes: number
  executionArn: string
}

interface RunOptions {
  /** Wraps a state's handler, e.g. to lose an answer. */
  wrap?: Record<string, (real: (input: unknown) => Promise<unknown>) => (input: unknown) => Promise<unknown>>
  /** Stops the execution from outside (as StopExecution does) when it enters this state. */
  stopAt?: string
}

let executions = 0
async function execute(template: TemplateName, input: unknown, opts: RunOptions = {}): Promise<Run> {
  const definition = renderTemplate(template, { ControlPlaneUrl: cp.url.replace(/\/$/, ''), ConnectionArn: connection.arn }, { allowHttp: true })
  const exchanges: HttpExchange[] = []
  const handlers = httpTaskHandlers(definition, { connection, region: REGION, log: exchanges })
  for (const [state, wrap] of Object.entries(opts.wrap ?? {})) handlers[state] = wrap(handlers[state]!) as (typeof handlers)[string]
  const name = `${template}-${process.pid}-${++executions}`
  const executionArn = `arn:aws:states:${REGION}:${ACCOUNT}:execution:${template}:${name}`
  const machine = new StateMachine(definition as any, { validationOptions: { checkPaths: true, checkArn: true } })
  const fast = 50
  const retryStates = ['Acquire', 'Poll', 'Release', 'ReleaseAfterFailure', 'QueryPrimary', 'QuerySecondary', 'QueryOne']
  let stop = () => {}
  if (opts.stopAt) {
    // Stop, then fail the interrupted task uncatchably so that the runner settles and
    // clears its timers (a stopped execution runs no further state).
    handlers[opts.stopAt] = async () => {
      stop()
      await new Promise((r) => setTimeout(r, 20))
      throw new StatesError('States.Runtime', 'the execution was stopped', { catchable: false })
    }
  }
  const execution = machine.run(input as any, {
    context: {
      Execution: { Id: executionArn, Name: name, Input: input as any, StartTime: new Date().toISOString(), RoleArn: `arn:aws:iam::${ACCOUNT}:role/sfn` },
      StateMachine: { Id: `arn:aws:states:${REGION}:${ACCOUNT}:stateMachine:${template}`, Name: template },
    },
    overrides: {
      taskResourceLocalHandlers: handlers as any,
      waitTimeOverrides: { WaitForSession: 100 },
      retryIntervalOverrides: Object.fromEntries(retryStates.map((s) => [s, fast])),
    },
  })
  stop = execution.abort
  let maxStateBytes = 0
  let failed: { Error: string; Cause: unknown } | undefined
  const logs = (async () => {
    for await (const ev of execution.eventLogs) {
      if (ev.type === 'StateEntered' || ev.type === 'StateExited') {
        maxStateBytes = Math.max(maxStateBytes, Buffer.byteLength(JSON.stringify(ev.type === 'StateExited' ? ev.state.output ?? null : ev.state.input)))
      }
      if (ev.type === 'ExecutionFailed') failed = { Error: ev.Error, Cause: ev.Cause }
    }
  })()
  let output: unknown
  try {
    output = await execution.result
  } catch (err) {
    await logs
    return {
      status: (err as Error).name === 'ExecutionAbortedError' ? 'ABORTED' : 'FAILED',
      output: undefined,
      error: failed?.Error ?? (err as Error).name,
      cause: String(failed?.Cause ?? (err as Error).message),
      exchanges,
      maxStateBytes,
      executionArn,
    }
  }
  await logs
  return { status: 'SUCCEEDED', output, exchanges, maxStateBytes, executionArn }
}

const calls = (run: Run, state: string) => run.exchanges.filter((e) => e.state === state)
const leaseIdOf = (run: Run) => {
  const acquire = calls(run, 'Acquire').find((e) => e.status === 201 || e.status === 200)
  return (acquire?.responseBody as { id: string } | undefined)?.id
}

// ---- the tests ----------------------------------------------------------------------
const snapshot = `file://${fixture.tarPath}`

t.test('happy path: acquire, wait for READY, two queries in parallel, release', async (t) => {
  const run = await execute('lease-query', {
    lease: { snapshot, collection: fixture.collection, ttlSeconds: 120 },
    queries: {
      primary: { queryEmbeddings: [fixture.vector(3)], nResults: 3 },
      secondary: { queryEmbeddings: [fixture.vector(7), fixture.vector(11)], nResults: 2, include: ['distances'] },
    },
  })
  t.equal(run.status, 'SUCCEEDED', run.cause ?? '')
  const { results, release, leaseId, sessionId } = run.output
  t.equal(results.primary.ids[0][0], 'r-3', 'the nearest neighbour of vector 3 is r-3')
  t.equal(results.primary.ids[0].length, 3)
  t.ok(results.primary.documents[0][0].startsWith('receipt 3:'))
  t.same(results.secondary.ids.map((row: string[]) => row[0]), ['r-7', 'r-11'])
  t.notOk(results.secondary.documents, 'include is passed through')
  t.equal(results.primary.truncated, false)
  t.same(release, { status: 'released' })
  t.notOk('token' in run.output, 'the lease token does not leave the execution')

  const lease = await api('GET', `/v1/leases/${leaseId}`)
  t.equal(lease.body.status, 'released')
  t.equal(lease.body.session.id, sessionId)
  t.equal(lease.body.holder, run.executionArn, 'holder defaults to the execution ARN')

  // The requests were the ones an HTTP Task makes.
  const [acquire] = calls(run, 'Acquire')
  t.equal(acquire!.method, 'POST')
  t.equal(acquire!.url, `${cp.url}/v1/leases`)
  t.equal(acquire!.requestHeaders['x-api-key'], CLIENT_KEY, "the connection's API key")
  t.equal(acquire!.requestHeaders['idempotency-key'], `lease-query/${run.executionArn.split(':').pop()}`, 'Idempotency-Key: state machine / execution name')
  t.equal(acquire!.requestHeaders['content-type'], 'application/json; charset=UTF-8')
  t.equal(acquire!.requestHeaders.range, 'bytes=0-262144')
  t.match(acquire!.requestHeaders['user-agent'], /^Amazon\|StepFunctions\|HttpInvoke\|/)
  t.same(acquire!.requestBody, { mode: 'shared', ttlSeconds: 120, holder: run.executionArn, snapshot, collection: fixture.collection, waitSeconds: 50 })
  for (const q of [...calls(run, 'QueryPrimary'), ...calls(run, 'QuerySecondary')]) {
    t.equal(q.url, `${cp.url}/v1/sessions/${sessionId}/query`)
    t.match(q.requestHeaders['x-chroma-token'], /\S/, 'the lease token as x-chroma-token')
    t.notOk('authorization' in q.requestHeaders)
  }
  t.same(calls(run, 'QueryPrimary')[0]!.requestBody, { collection: fixture.collection, maxResultBytes: 98304, queryEmbeddings: [fixture.vector(3)], nResults: 3 })
  for (const p of calls(run, 'Poll')) t.match(p.url, /\?waitSeconds=50$/)
  t.equal(calls(run, 'Release').length, 1)
  t.equal(calls(run, 'Release')[0]!.method, 'DELETE')
  t.ok(run.maxStateBytes < MAX_PAYLOAD_BYTES, `state data peaked at ${run.maxStateBytes} bytes`)
})

t.test('a failing query fails the execution and still releases the lease', async (t) => {
  const run = await execute('lease-query', {
    lease: { snapshot, collection: fixture.collection, ttlSeconds: 120 },
    queries: {
      primary: { queryEmbeddings: [fixture.vector(1)], nResults: 1 },
      secondary: { collection: 'no-such-collection', queryEmbeddings: [fixture.vector(2)], nResults: 1 },
    },
  })
  t.equal(run.status, 'FAILED')
  t.equal(run.error, 'States.Http.StatusCode.404', "the query's error is the execution's error")
  t.match(run.cause, /no-such-collection|collection/)
  t.equal(calls(run, 'Release').length, 0)
  t.equal(calls(run, 'ReleaseAfterFailure').length, 1, 'released through the Catch')
  t.equal(calls(run, 'ReleaseAfterFailure')[0]!.status, 200)
  const lease = await api('GET', `/v1/leases/${leaseIdOf(run)}`)
  t.equal(lease.body.status, 'released')
})

t.test('a session that fails to start fails the acquire with a problem, through the Catch; the lease is ended', async (t) => {
  const run = await execute('lease-query', {
    lease: { snapshot: `file://${broken}`, collection: fixture.collection, ttlSeconds: 120 },
    queries: {
      primary: { queryEmbeddings: [fixture.vector(1)] },
      secondary: { queryEmbeddings: [fixture.vector(2)] },
    },
  })
  t.equal(run.status, 'FAILED')
  t.equal(run.error, 'States.Http.StatusCode.502', "the acquire's problem is the execution's error")
  const acquires = calls(run, 'Acquire')
  t.ok(acquires.length >= 1)
  const problems = acquires.map((a) => a.responseBody as Record<string, any>)
  t.same(new Set(acquires.map((a) => a.status)), new Set([502]), 'every try (the retries replay the Idempotency-Key) answered 502')
  t.equal(new Set(problems.map((p) => p.leaseId)).size, 1, 'one lease, one session, whatever the retries')
  t.equal(problems[0]!.code, 'session_failed')
  const lease = await api('GET', `/v1/leases/${problems[0]!.leaseId}`)
  t.equal(lease.body.session.status, 'FAILED')
  t.match(lease.body, { status: 'ended', endReason: 'session_failed' }, 'ended by its session, not released by the workflow')
  t.equal(problems[0]!.sessionError, lease.body.session.error, "the problem carries the session's reason")
  t.match(run.cause, lease.body.session.error, "the execution's cause includes it")
  t.equal(calls(run, 'Poll').length + calls(run, 'QueryPrimary').length + calls(run, 'QuerySecondary').length, 0, 'no poll, no query')
  t.equal(calls(run, 'ReleaseAfterFailure').length, 0, 'nothing to give back')
})

t.test('a collection the snapshot does not hold: 404 from the acquire, not retried', async (t) => {
  const run = await execute('lease-map-query', {
    lease: { snapshot: `file://${fixture.dir}`, collection: 'invoices', ttlSeconds: 120 },
    queries: [{ queryEmbeddings: [fixture.vector(1)] }],
  })
  t.equal(run.status, 'FAILED')
  t.equal(run.error, 'States.Http.StatusCode.404')
  t.equal(calls(run, 'Acquire').length, 1, 'a 4xx is not retried')
  t.equal((calls(run, 'Acquire')[0]!.responseBody as Record<string, any>).code, 'collection_not_found')
  t.match(run.cause, /invoices.*is not in snapshot/, "the cause (the HTTP result, JSON) holds the problem")
})

t.test('two executions at once share one session; each releases its own lease', async (t) => {
  // A pool of its own (the .tar.gz of the same data): both executions find no session
  // running, and both wait on the one that the first acquire starts.
  const shared = `file://${fixture.tarGzPath}`
  const [a, b] = await Promise.all([
    execute('lease-query', {
      lease: { snapshot: shared, collection: fixture.collection, ttlSeconds: 120 },
      queries: { primary: { queryEmbeddings: [fixture.vector(20)], nResults: 1 }, secondary: { queryEmbeddings: [fixture.vector(21)], nResults: 1 } },
    }),
    execute('lease-map-query', {
      lease: { snapshot: shared, collection: fixture.collection, ttlSeconds: 120 },
      queries: [30, 31, 32, 33, 34].map((i) => ({ queryEmbeddings: [fixture.vector(i)], nResults: 2 })),
    }),
  ])
  t.equal(a.status, 'SUCCEEDED', a.cause ?? '')
  t.equal(b.status, 'SUCCEEDED', b.cause ?? '')
  t.equal(a.output.sessionId, b.output.sessionId, 'one session')
  t.not(a.output.leaseId, b.output.leaseId, 'two leases')
  t.same(b.output.results.map((r: { ids: string[][] }) => r.ids[0]![0]), ['r-30', 'r-31', 'r-32', 'r-33', 'r-34'], 'Map answers keep the order of the queries')
  t.equal(a.output.results.primary.ids[0][0], 'r-20')
  const acquired = [a, b].map((r) => calls(r, 'Acquire')[0]!.responseBody as { session: { leaseCount: number } })
  t.equal(Math.max(...acquired.map((l) => l.session.leaseCount)), 2, 'the later acquire saw both leases on the one session')
  for (const r of [a, b]) t.equal((await api('GET', `/v1/leases/${r.output.leaseId}`)).body.status, 'released')
  const session = await api('GET', `/v1/sessions/${a.output.sessionId}`)
  t.equal(session.body.leaseCount, 0, 'no lease left on the session')
  t.equal(session.body.status, 'READY', 'the session stays up for its idle TTL')
})

t.test('Map fan-out: defaults per item without leaking between items, a lost acquire answer is retried idempotently', async (t) => {
  let lost = 0
  const run = await execute(
    'lease-map-query',
    {
      lease: { snapshot, collection: fixture.collection, ttlSeconds: 120 },
      queries: [
        { queryEmbeddings: [fixture.vector(40)], nResults: 2, where: { n: { $gte: 0 } } },
        { queryEmbeddings: [fixture.vector(41)], nResults: 2 },
        { queryEmbeddings: [fixture.vector(42)], nResults: 2, include: ['distances'] },
      ],
    },
    {
      wrap: {
        // The first acquire reaches the control plane but its answer is lost; Step
        // Functions retries, and the Idempotency-Key returns the same lease.
        Acquire: (real) => async (input) => {
          const answer = await real(input)
          if (lost++ === 0) throw new StatesError('States.Http.Socket', 'connection reset after the request was sent')
          return answer
        },
      },
    },
  )
  t.equal(run.status, 'SUCCEEDED', run.cause ?? '')
  const acquires = calls(run, 'Acquire')
  t.equal(acquires.length, 2, 'acquire was retried')
  t.equal(acquires[0]!.status, 201)
  t.equal(acquires[1]!.status, 200, 'the retry is an idempotent replay')
  t.equal((acquires[1]!.responseBody as { id: string }).id, (acquires[0]!.responseBody as { id: string }).id, 'same lease')
  t.equal(run.output.leaseId, (acquires[0]!.responseBody as { id: string }).id)
  const bodies = calls(run, 'QueryOne').map((e) => e.requestBody as Record<string, unknown>).sort((x, y) => String(x.queryEmbeddings).localeCompare(String(y.queryEmbeddings)))
  t.equal(bodies.length, 3)
  t.equal(bodies.filter((b) => 'where' in b).length, 1, 'one item had a where; no other item got it')
  t.equal(bodies.filter((b) => 'include' in b).length, 1)
  for (const b of bodies) t.equal(b.collection, fixture.collection, 'collection defaults from the lease')
  t.same(run.output.results.map((r: { ids: string[][] }) => r.ids[0]![0]), ['r-40', 'r-41', 'r-42'])
  t.same(run.output.release, { status: 'released' })
  const lease = await api('GET', `/v1/leases/${run.output.leaseId}`)
  t.equal(lease.body.status, 'released')
  t.ok(run.maxStateBytes < MAX_PAYLOAD_BYTES)
})

t.test('bad input fails before any lease exists', async (t) => {
  const tooMany = await execute('lease-map-query', {
    lease: { snapshot, collection: fixture.collection },
    queries: Array.from({ length: 49 }, (_, i) => ({ queryEmbeddings: [fixture.vector(i)] })),
  })
  t.equal(tooMany.status, 'FAILED')
  t.equal(tooMany.error, 'ChromaLease.InvalidInput')
  t.equal(tooMany.exchanges.length, 0, 'no request was made')

  const noCollection = await execute('lease-query', {
    lease: { snapshot },
    queries: { primary: { queryEmbeddings: [[0]] }, secondary: { queryEmbeddings: [[0]] } },
  })
  t.equal(noCollection.status, 'FAILED', 'lease.collection is required by the templates')
  t.equal(noCollection.exchanges.length, 0)
})

t.test('an execution stopped from outside runs no Catch: its lease ends by its TTL', async (t) => {
  // Last in this file: it moves the control plane's clock.
  const ttlSeconds = 60
  const run = await execute(
    'lease-map-query',
    { lease: { snapshot, collection: fixture.collection, ttlSeconds }, queries: [{ queryEmbeddings: [fixture.vector(50)] }] },
    { stopAt: 'QueryOne' },
  )
  t.equal(run.status, 'ABORTED')
  t.equal(calls(run, 'Release').length + calls(run, 'ReleaseAfterFailure').length, 0, 'nothing released it')
  const leaseId = leaseIdOf(run)!
  const held = await api('GET', `/v1/leases/${leaseId}`)
  t.equal(held.body.status, 'active', 'the lease is still held...')
  t.ok(Date.parse(held.body.expiresAt) - cp.clock.now().getTime() <= ttlSeconds * 1000, '...for at most its TTL')
  ;(cp.clock as unknown as { advance(seconds: number): void }).advance(ttlSeconds + 1)
  await cp.workers.reaper.reapOnce()
  const after = await api('GET', `/v1/leases/${leaseId}`)
  t.equal(after.body.status, 'expired', 'the TTL ended it')
  t.equal(after.body.session.leaseCount, 0)
})
