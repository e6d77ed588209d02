import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ECSClient } from '@aws-sdk/client-ecs'
import { EC2Client } from '@aws-sdk/client-ec2'
import { freeLoopbackPort } from '../../src/free-port.ts'
import { projectPath } from '../../src/paths.ts'

/**
 * A protocol-level fake of ECS (awsJson1_1) and the few EC2 calls we make (query
 * protocol), served over HTTP so the real AWS SDK talks to it: serialisation, retries
 * and error mapping are the SDK's own. With `runAgents`, RunTask starts the real
 * session agent as a local process on its own loopback address (127.0.0.N, one shared
 * port), so a RUNNING task means a real Chroma answers there.
 *
 * Faults are scripted: throttling, capacity failures, per-task behaviours (stops
 * during start, never gets an address, turns UNHEALTHY), and Spot interruptions.
 * A stopping task stays DEACTIVATING until its container exits, as in ECS: SIGTERM
 * (at the first DescribeTasks after the stop), SIGKILL after the stop timeout.
 */
/** `neverListed`: DescribeTasks answers MISSING for it (ECS's eventual consistency, forever). */
export type TaskBehaviour = 'normal' | 'stopDuringStart' | 'noAddress' | 'unhealthy' | 'neverListed'

interface FakeTask {
  arn: string
  /** The RunTask request that started it, as the SDK serialised it. */
  runTaskInput: Record<string, any>
  cluster: string
  startedBy?: string
  taskDefinition: string
  /** The first provider of RunTask's capacity provider strategy (FARGATE when none). */
  capacityProvider: string
  tags: Array<{ key: string; value: string }>
  env: Record<string, string>
  behaviour: TaskBehaviour
  describes: number
  ip: string
  eniId: string
  lastStatus: string
  desiredStatus: string
  stopCode?: string
  stoppedReason?: string
  exitCode?: number
  /** DescribeTasks calls left before an agent-less stopping task is STOPPED (EcsFakeOptions.stopDescribes). */
  stopDescribesLeft?: number
  /** Its agent has had SIGTERM. */
  signalled?: boolean
  agent?: ChildProcess
  /** With `stubAgents`: the server answering for it at its address. */
  stub?: Server
  dataDir?: string
}

export interface EcsFakeOptions {
  cluster?: string
  /** Run the real session agent for each task (needs snapshotRoot for file:// snapshots). */
  runAgents?: boolean
  /**
   * Instead, answer at each task's address as an agent whose Chroma is ready (heartbeat,
   * healthcheck, confirm, status; the task's tokens required), without a process: for
   * tests with hundreds of tasks that need them READY, not serving data.
   */
  stubAgents?: boolean
  snapshotRoot?: string
  /** More environment for every agent: what a task role and VPC endpoints give a real task (S3_ENDPOINT and credentials for s3rver). */
  agentEnv?: Record<string, string>
  /** RunTask calls per second beyond which the fake answers ThrottlingException (after `runTaskBurst`). */
  runTaskRate?: number
  runTaskBurst?: number
  /** What exists, for preflight: task definitions by family:revision, subnets, security groups. */
  taskDefinitions?: Record<string, { containerName: string; containerPort: number | 'chroma' }>
  subnets?: string[]
  securityGroups?: string[]
  /** How long a stopping container gets between SIGTERM and SIGKILL (ECS's stopTimeout). Default 30 s. */
  stopTimeoutMs?: number
  /**
   * How many DescribeTasks calls a stop takes for a task without an agent (DEACTIVATING,
   * STOPPING, then STOPPED), as ECS takes a while to deprovision. Default 0: STOPPED at once.
   */
  stopDescribes?: number
  /** The task definitions' runtimePlatform.cpuArchitecture (default ARM64). */
  cpuArchitecture?: 'X86_64' | 'ARM64'
  /** false: tasks lack the `ecs.cpu-architecture` attribute ECS reports, so only their task definition says. */
  architectureAttribute?: boolean
}

/** The n-th loopback address (127.0.0.2, …, 127.0.1.1, …): Linux routes all of 127/8 to lo. */
function loopbackAddress(n: number): string {
  // Skip the .0 and .255 of every /24 so that no address looks like a network or broadcast one.
  const index = Math.floor(n / 254) * 256 + (n % 254) + 1
  return `127.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}`
}

export class EcsFake {
  readonly calls = new Map<string, number>()
  readonly tasks = new Map<string, FakeTask>()
  readonly runTaskTimes: number[] = []
  /** DescribeTasks calls that asked for tags (the orphan sweep's; the reconciler's do not), among calls.get('DescribeTasks'). */
  taggedDescribes = 0
  readonly cluster: string
  port = 0
  chromaPort = 0
  private server!: Server
  private readonly tokens = new Map<string, { params: string; arn: string | null; failure?: string }>()
  private readonly behaviours: TaskBehaviour[] = []
  /** Requests left to answer ThrottlingException, for every action (key '*') or one. */
  private readonly throttled = new Map<string, number>()
  private repliesToLose = 0
  /** Tasks ListTasks leaves out for this many more calls (ECS's eventual consistency). */
  private readonly unlisted = new Map<string, number>()
  private capacityFailuresRemaining = 0
  private nextIp = 1
  private bucket: { tokens: number; at: number }

  constructor(private readonly opts: EcsFakeOptions = {}) {
    this.cluster = opts.cluster ?? 'sessions'
    this.bucket = { tokens: opts.runTaskBurst ?? Infinity, at: Date.now() }
  }

  static async start(opts: EcsFakeOptions = {}): Promise<EcsFake> {
    const fake = new EcsFake(opts)
    fake.chromaPort = await freeLoopbackPort()
    fake.server = createServer((req, res) => {
      void fake.handle(req).then(
        ({ status, body, type }) => {
          if (fake.repliesToLose > 0 && req.headers['x-amz-target']?.toString().endsWith('.RunTask')) {
            fake.repliesToLose--
            res.socket?.destroy() // done, but the caller never hears of it
            return
          }
          res.writeHead(status, { 'content-type': type })
          res.end(body)
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'application/x-amz-json-1.1' })
          res.end(JSON.stringify({ __type: 'ServerException', message: err.message }))
        },
      )
    })
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve))
    fake.port = (fake.server.address() as { port: number }).port
    return fake
  }

  get endpoint() {
    return `http://127.0.0.1:${this.port}`
  }

  /** Real SDK clients pointed at the fake. */
  clients(): { ecs: ECSClient; ec2: EC2Client } {
    const common = { endpoint: this.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } }
    return { ecs: new ECSClient({ ...common, maxAttempts: 3 }), ec2: new EC2Client(common) }
  }

  /** The next tasks RunTask starts behave like this, in order. */
  nextTasks(...behaviours: TaskBehaviour[]) {
    this.behaviours.push(...behaviours)
  }

  /** The next `n` requests of any action, or of `action` only, answer ThrottlingException. */
  throttle(n: number, action = '*') {
    this.throttled.set(action, n)
  }

  /** The next `n` RunTask calls do their work but their replies are lost (the connection drops). */
  loseRunTaskReplies(n: number) {
    this.repliesToLose = n
  }

  /** The next `n` ListTasks calls leave the task out, as ListTasks may right after RunTask. */
  notListedFor(arn: string, n: number) {
    this.unlisted.set(arn, n)
  }

  /** The next `n` RunTask calls start nothing and report a capacity failure. */
  capacityFailures(n: number) {
    this.capacityFailuresRemaining = n
  }

  /**
   * What Fargate Spot does on an interruption: the task is marked for stopping
   * (stopCode SpotInterruption) and its container gets SIGTERM, then SIGKILL.
   */
  interrupt(arn: string) {
    const task = this.tasks.get(arn)
    if (!task) throw new Error(`no task ${arn}`)
    this.stopTask(task, 'SpotInterruption', 'Your Spot Task was interrupted.')
  }

  /**
   * ECS stopping a task on its own account (an infrastructure problem, a stop code
   * introduced after this code was written). A task without an agent exits with `exitCode`.
   */
  stopAs(arn: string, stopCode: string, reason: string, exitCode?: number) {
    const task = this.tasks.get(arn)
    if (!task) throw new Error(`no task ${arn}`)
    this.stopTask(task, stopCode, reason, exitCode)
  }

  count(action: string) {
    return this.calls.get(action) ?? 0
  }

  resetCounts() {
    this.calls.clear()
    this.taggedDescribes = 0
  }

  async close() {
    for (const task of this.tasks.values()) this.kill(task, 'SIGKILL')
    await Promise.all([...this.tasks.values()].map((t) => t.stub && new Promise((resolve) => t.stub!.close(resolve))))
    await new Promise((resolve) => this.server.close(resolve))
    await Promise.all([...this.tasks.values()].map((t) => (t.dataDir ? rm(t.dataDir, { recursive: true, force: true }) : undefined)))
  }

  private async handle(req: IncomingMessage): Promise<{ status: number; body: string; type: string }> {
    let raw = ''
    for await (const chunk of req) raw += chunk
    const target = req.headers['x-amz-target']
    if (typeof target !== 'string') return this.ec2(new URLSearchParams(raw))
    const action = target.split('.').pop()!
    this.calls.set(action, this.count(action) + 1)
    const json = (status: number, body: unknown) => ({ status, body: JSON.stringify(body), type: 'application/x-amz-json-1.1' })
    const error = (type: string, message: string) => json(400, { __type: type, message })
    for (const key of [action, '*']) {
      const left = this.throttled.get(key) ?? 0
      if (left === 0) continue
      this.throttled.set(key, left - 1)
      return error('ThrottlingException', 'Rate exceeded')
    }
    const input = JSON.parse(raw || '{}')
    if (action === 'DescribeTasks' && input.include?.includes('TAGS')) this.taggedDescribes++
    if (input.cluster && input.cluster !== this.cluster) return error('ClusterNotFoundException', 'Cluster not found.')
    switch (action) {
      case 'RunTask':
        return this.runTask(input, json, error)
      case 'DescribeTasks':
        return json(200, this.describeTasks(input))
      case 'StopTask': {
        const task = this.tasks.get(input.task)
        if (!task) return error('InvalidParameterException', 'The referenced task was not found.')
        this.stopTask(task, 'UserInitiated', input.reason ?? 'Task stopped by user')
        return json(200, { task: this.view(task, false) })
      }
      case 'DescribeClusters':
        return json(200, input.clusters?.[0] === this.cluster
          ? { clusters: [{ clusterArn: `arn:aws:ecs:us-east-1:123456789012:cluster/${this.cluster}`, clusterName: this.cluster, status: 'ACTIVE' }], failures: [] }
          : { clusters: [], failures: [{ arn: input.clusters?.[0], reason: 'MISSING' }] })
      case 'DescribeTaskDefinition': {
        const name = String(input.taskDefinition).replace(/^arn:aws:ecs:[^:]+:\d+:task-definition\//, '')
        const td = (this.opts.taskDefinitions ?? { 'chroma-session:3': { containerName: 'chroma-session', containerPort: 'chroma' } })[name]
        if (!td) return error('ClientException', 'Unable to describe task definition.')
        return json(200, {
          taskDefinition: {
            taskDefinitionArn: `arn:aws:ecs:us-east-1:123456789012:task-definition/${name}`,
            requiresCompatibilities: ['FARGATE'],
            cpu: '1024',
            memory: '2048',
            runtimePlatform: { cpuArchitecture: this.opts.cpuArchitecture ?? 'ARM64', operatingSystemFamily: 'LINUX' },
            containerDefinitions: [{ name: td.containerName, portMappings: [{ containerPort: td.containerPort === 'chroma' ? this.chromaPort : td.containerPort }] }],
          },
        })
      }
      case 'ListTasks': {
        const matching = [...this.tasks.values()].filter(
          (t) => (!input.startedBy || t.startedBy === input.startedBy) && (input.desiredStatus ?? 'RUNNING') === t.desiredStatus && !this.unlisted.get(t.arn),
        )
        // One fewer call to miss for every lagging task (on the first page only: one call each).
        if (!input.nextToken) for (const [arn, n] of this.unlisted) this.unlisted.set(arn, Math.max(0, n - 1))
        const from = Number(input.nextToken ?? 0)
        const size = input.maxResults ?? 100
        const page = matching.slice(from, from + size)
        return json(200, { taskArns: page.map((t) => t.arn), ...(from + size < matching.length ? { nextToken: String(from + size) } : {}) })
      }
      default:
        return error('InvalidParameterException', `the fake does not implement ${action}`)
    }
  }

  private runTask(input: any, json: (s: number, b: unknown) => any, error: (t: string, m: string) => any) {
    this.runTaskTimes.push(Date.now())
    if (this.opts.runTaskRate) {
      const now = Date.now()
      this.bucket.tokens = Math.min(this.opts.runTaskBurst ?? 1, this.bucket.tokens + ((now - this.bucket.at) / 1000) * this.opts.runTaskRate)
      this.bucket.at = now
      if (this.bucket.tokens < 1) return error('ThrottlingException', 'Rate exceeded')
      this.bucket.tokens -= 1
    }
    if (typeof input.clientToken === 'string' && input.clientToken.length > 64) return error('InvalidParameterException', 'clientToken is longer than 64 characters')
    if (input.launchType && input.capacityProviderStrategy) return error('InvalidParameterException', 'Specifying both a launch type and capacity provider strategy is not supported.')
    const { clientToken, ...params } = input
    const paramsHash = createHash('sha256').update(JSON.stringify(params)).digest('hex')
    const seen = clientToken ? this.tokens.get(clientToken) : undefined
    if (seen) {
      if (seen.params !== paramsHash) return error('ConflictException', 'The clientToken was used with different parameters.')
      return json(200, seen.arn ? { tasks: [this.view(this.tasks.get(seen.arn)!, false)], failures: [] } : { tasks: [], failures: [{ reason: seen.failure }] })
    }
    if (this.capacityFailuresRemaining > 0) {
      this.capacityFailuresRemaining--
      const failure = 'Capacity is unavailable at this time. Please try again later or in a different availability zone'
      if (clientToken) this.tokens.set(clientToken, { params: paramsHash, arn: null, failure })
      return json(200, { tasks: [], failures: [{ reason: failure }] })
    }
    const id = randomUUID().replaceAll('-', '')
    const container = input.overrides?.containerOverrides?.[0]
    const task: FakeTask = {
      arn: `arn:aws:ecs:us-east-1:123456789012:task/${this.cluster}/${id}`,
      runTaskInput: input,
      cluster: this.cluster,
      startedBy: input.startedBy,
      taskDefinition: input.taskDefinition,
      capacityProvider: input.capacityProviderStrategy?.[0]?.capacityProvider ?? 'FARGATE',
      tags: input.tags ?? [],
      env: Object.fromEntries((container?.environment ?? []).map((e: { name: string; value: string }) => [e.name, e.value])),
      behaviour: this.behaviours.shift() ?? 'normal',
      describes: 0,
      ip: loopbackAddress(this.nextIp++),
      eniId: `eni-${id.slice(0, 17)}`,
      lastStatus: 'PROVISIONING',
      desiredStatus: 'RUNNING',
    }
    this.tasks.set(task.arn, task)
    if (clientToken) this.tokens.set(clientToken, { params: paramsHash, arn: task.arn })
    if (this.opts.runAgents && task.behaviour !== 'stopDuringStart') void this.startAgent(task)
    if (this.opts.stubAgents && task.behaviour !== 'stopDuringStart') this.startStubAgent(task)
    return json(200, { tasks: [this.view(task, false)], failures: [] })
  }

  private describeTasks(input: { tasks: string[]; include?: string[] }) {
    if (input.tasks.length > 100) throw new Error('DescribeTasks takes at most 100 tasks')
    const tasks = []
    const failures = []
    for (const arn of input.tasks) {
      const task = this.tasks.get(arn)
      if (!task || task.behaviour === 'neverListed') {
        failures.push({ arn, reason: 'MISSING' })
        continue
      }
      this.advance(task)
      tasks.push(this.view(task, input.include?.includes('TAGS') ?? false))
    }
    return { tasks, failures }
  }

  /** PROVISIONING on the first look, then RUNNING (or what the behaviour says); a stop moves on one step per look. */
  private advance(task: FakeTask) {
    task.describes++
    if (task.desiredStatus === 'STOPPED' && task.lastStatus !== 'STOPPED') return this.advanceStop(task)
    if (task.lastStatus !== 'PROVISIONING' || task.describes < 2) return
    if (task.behaviour === 'stopDuringStart') {
      this.stopTask(task, 'TaskFailedToStart', 'CannotPullContainerError: pull image manifest has been retried 5 time(s): not found')
      return
    }
    task.lastStatus = 'RUNNING'
  }

  private view(task: FakeTask, withTags: boolean) {
    const running = task.lastStatus === 'RUNNING'
    const details = [{ name: 'networkInterfaceId', value: task.eniId }]
    if (task.behaviour !== 'noAddress') details.push({ name: 'privateIPv4Address', value: task.ip })
    return {
      taskArn: task.arn,
      clusterArn: `arn:aws:ecs:us-east-1:123456789012:cluster/${task.cluster}`,
      lastStatus: task.lastStatus,
      desiredStatus: task.desiredStatus,
      taskDefinitionArn: `arn:aws:ecs:us-east-1:123456789012:task-definition/${task.taskDefinition}`,
      cpu: '1024',
      memory: '2048',
      capacityProviderName: task.capacityProvider,
      launchType: 'FARGATE',
      ...(this.opts.architectureAttribute === false ? {} : { attributes: [{ name: 'ecs.cpu-architecture', value: (this.opts.cpuArchitecture ?? 'ARM64').toLowerCase() }] }),
      startedBy: task.startedBy,
      healthStatus: running && task.behaviour === 'unhealthy' ? 'UNHEALTHY' : running ? 'HEALTHY' : 'UNKNOWN',
      stopCode: task.stopCode,
      stoppedReason: task.stoppedReason,
      attachments: task.lastStatus === 'PROVISIONING' ? [] : [{ type: 'ElasticNetworkInterface', status: 'ATTACHED', details }],
      containers: [{ name: 'chroma-session', lastStatus: task.lastStatus, exitCode: task.exitCode, healthStatus: running && task.behaviour === 'unhealthy' ? 'UNHEALTHY' : 'UNKNOWN' }],
      ...(withTags ? { tags: task.tags } : {}),
    }
  }

  private stopTask(task: FakeTask, stopCode: string, reason: string, exitCode?: number) {
    if (task.desiredStatus === 'STOPPED') return
    task.desiredStatus = 'STOPPED'
    task.stopCode = stopCode
    task.stoppedReason = reason
    if (task.agent && task.agent.exitCode === null && task.agent.signalCode === null) {
      // The container gets SIGTERM when ECS moves on from DEACTIVATING: here, at the next look.
      task.lastStatus = 'DEACTIVATING'
      return
    }
    if (exitCode !== undefined) task.exitCode = exitCode
    task.stub?.close()
    task.stopDescribesLeft = this.opts.stopDescribes ?? 0
    task.lastStatus = task.stopDescribesLeft > 0 ? 'DEACTIVATING' : 'STOPPED'
  }

  /** A stopping task's next step: SIGTERM to its agent (the task is STOPPED once it has exited), or one step nearer STOPPED. */
  private advanceStop(task: FakeTask) {
    if (task.agent) {
      if (task.signalled) return
      task.signalled = true
      this.kill(task, 'SIGTERM')
      setTimeout(() => this.kill(task, 'SIGKILL'), this.opts.stopTimeoutMs ?? 30_000).unref()
      return
    }
    task.stopDescribesLeft = (task.stopDescribesLeft ?? 1) - 1
    task.lastStatus = task.stopDescribesLeft > 0 ? 'STOPPING' : 'STOPPED'
  }

  private kill(task: FakeTask, signal: NodeJS.Signals) {
    const pid = task.agent?.pid
    if (pid && task.agent!.exitCode === null) {
      try {
        process.kill(-pid, signal)
      } catch {
        // already gone
      }
    }
  }

  private async startAgent(task: FakeTask) {
    task.dataDir = await mkdtemp(join(tmpdir(), 'ecs-fake-task-'))
    if (task.desiredStatus === 'STOPPED') return // stopped before its container started
    const child = spawn(process.execPath, ['--import', 'tsx', projectPath('container', 'agent', 'main.ts')], {
      detached: true,
      stdio: 'ignore',
      env: {
        PATH: process.env.PATH,
        ...task.env,
        CHROMA_HOST: task.ip,
        CHROMA_PORT: String(this.chromaPort),
        CHROMA_DATA_DIR: join(task.dataDir, 'data'),
        ...(this.opts.snapshotRoot ? { SNAPSHOT_ROOT: this.opts.snapshotRoot } : {}),
        ...this.opts.agentEnv,
      },
    })
    task.agent = child
    child.on('exit', (code, signal) => {
      // A container killed by a signal reports 128 + its number, as Docker does.
      task.exitCode = code ?? (signal === 'SIGKILL' ? 137 : 143)
      if (task.desiredStatus !== 'STOPPED') this.stopTask(task, 'EssentialContainerExited', 'Essential container in task exited')
      task.lastStatus = 'STOPPED'
    })
  }

  private startStubAgent(task: FakeTask) {
    task.stub = createServer((req, res) => {
      const send = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      const token = req.headers['x-chroma-token']
      const control = token === task.env.CONTROL_TOKEN
      if (!control && token !== task.env.SESSION_TOKEN) return send(401, { code: 'session_token_required' })
      const status = { phase: 'ready', pid: 0, at: new Date().toISOString() }
      if (req.url === '/api/v2/heartbeat') return send(200, { 'nanosecond heartbeat': Date.now() * 1e6 })
      if (req.url === '/api/v2/healthcheck') return send(200, { is_executor_ready: true })
      if (req.url === '/_agent/status') return send(200, status)
      if (req.url === '/_agent/confirm' && control) return send(200, status)
      send(404, { error: 'NotFound' })
    })
    task.stub.listen(this.chromaPort, task.ip)
  }

  /** EC2's query protocol, for DescribeNetworkInterfaces (public addresses). */
  private ec2(params: URLSearchParams) {
    const action = params.get('Action') ?? ''
    this.calls.set(action, this.count(action) + 1)
    const xml = (body: string) => ({ status: 200, type: 'text/xml', body: `<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">${body}</${action}Response>` })
    const notFound = (code: string, message: string) => ({
      status: 400,
      type: 'text/xml',
      body: `<Response><Errors><Error><Code>${code}</Code><Message>${message}</Message></Error></Errors><RequestID>fake</RequestID></Response>`,
    })
    const listed = (prefix: string) => [...params.entries()].filter(([k]) => k.startsWith(prefix)).map(([, v]) => v)
    if (action === 'DescribeSubnets') {
      const known = this.opts.subnets ?? ['subnet-a', 'subnet-b']
      const missing = listed('SubnetId.').filter((id) => !known.includes(id))
      if (missing.length) return notFound('InvalidSubnetID.NotFound', `The subnet ID '${missing.join("', '")}' does not exist`)
      return xml(`<subnetSet>${listed('SubnetId.').map((id) => `<item><subnetId>${id}</subnetId><vpcId>vpc-fake</vpcId></item>`).join('')}</subnetSet>`)
    }
    if (action === 'DescribeSecurityGroups') {
      const known = this.opts.securityGroups ?? ['sg-sessions']
      const missing = listed('GroupId.').filter((id) => !known.includes(id))
      if (missing.length) return notFound('InvalidGroup.NotFound', `The security group '${missing.join("', '")}' does not exist`)
      return xml(`<securityGroupInfo>${listed('GroupId.').map((id) => `<item><groupId>${id}</groupId><groupName>${id}-name</groupName></item>`).join('')}</securityGroupInfo>`)
    }
    if (action !== 'DescribeNetworkInterfaces') return notFound('InvalidAction', `the fake does not implement ${action}`)
    // What EC2 enforces: a listed ENI id that does not exist fails the whole call; a filter
    // just leaves it out, takes at most 200 values, and pages with MaxResults.
    const listedIds = listed('NetworkInterfaceId.')
    const filterName = params.get('Filter.1.Name')
    const filterIds = listed('Filter.1.Value.')
    if (listedIds.length && params.has('MaxResults')) return notFound('InvalidParameterCombination', 'The parameter NetworkInterfaceIds cannot be used with the parameter MaxResults')
    if (filterIds.length > 200) return notFound('FilterLimitExceeded', 'The maximum number of filter values specified on a single call is 200')
    if (filterName && filterName !== 'network-interface-id') return notFound('InvalidParameterValue', `the fake does not filter on ${filterName}`)
    const existing = new Map([...this.tasks.values()].filter((t) => t.lastStatus !== 'STOPPED').map((t) => [t.eniId, t]))
    const missing = listedIds.filter((id) => !existing.has(id))
    if (missing.length) return notFound('InvalidNetworkInterfaceID.NotFound', `The networkInterface ID '${missing.join("', '")}' does not exist`)
    const found = [...new Set([...listedIds, ...filterIds])].flatMap((id) => existing.get(id) ?? [])
    const from = Number(params.get('NextToken') ?? 0)
    const size = Number(params.get('MaxResults') ?? found.length)
    const page = found.slice(from, from + size)
    const next = from + size < found.length ? `<nextToken>${from + size}</nextToken>` : ''
    const items = page.map((t) => `<item><networkInterfaceId>${t.eniId}</networkInterfaceId><association><publicIp>${t.ip}</publicIp></association></item>`).join('')
    return xml(`<networkInterfaceSet>${items}</networkInterfaceSet>${next}`)
  }
}
