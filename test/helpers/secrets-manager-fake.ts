import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager'

/**
 * A protocol-level fake of Secrets Manager (awsJson1_1, `X-Amz-Target: secretsmanager.*`),
 * so the real SDK is exercised: the calls the Fargate launcher and the session agent make
 * (CreateSecret, PutSecretValue, GetSecretValue, DescribeSecret, TagResource, DeleteSecret,
 * ListSecrets), with Secrets Manager's error names.
 *
 * It also enforces what deploy/policies.ts grants, so a test can show a task reading only
 * its own session's secret: a caller whose session token (x-amz-security-token) is
 * `task-<taskId>` is a session task, whose `aws:userid` is `<taskRoleId>:<taskId>` (ECS
 * names a task role's session after the task); it may GetSecretValue a secret only when
 * the secret's `chroma-lease:reader` tag equals that, and nothing else. Any other caller
 * is the control plane: everything but GetSecretValue.
 */
interface FakeSecret {
  arn: string
  name: string
  value: string
  versions: number
  tags: Map<string, string>
  createdAt: number
}

export class SecretsManagerFake {
  readonly secrets = new Map<string, FakeSecret>()
  readonly calls: Array<{ action: string; caller: string; input: Record<string, unknown> }> = []
  port = 0
  private server!: Server

  constructor(readonly taskRoleId = 'AROAFAKESESSIONTASKROLE') {}

  static async start(taskRoleId?: string): Promise<SecretsManagerFake> {
    const fake = new SecretsManagerFake(taskRoleId)
    fake.server = createServer((req, res) => {
      void fake.handle(req).then(({ status, body }) => {
        res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1' })
        res.end(JSON.stringify(body))
      })
    })
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve))
    fake.port = (fake.server.address() as { port: number }).port
    return fake
  }

  get endpoint() {
    return `http://127.0.0.1:${this.port}`
  }

  /** The control plane's client. */
  client(): SecretsManagerClient {
    return new SecretsManagerClient({ endpoint: this.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'control-plane', secretAccessKey: 'test' }, maxAttempts: 3 })
  }

  /** The environment that gives a process the identity of task `taskId`'s role (what ECS's credentials endpoint gives a real task). */
  taskCredentialEnv(taskId: string): Record<string, string> {
    return { AWS_SESSION_TOKEN: `task-${taskId}`, SECRETS_MANAGER_ENDPOINT: this.endpoint }
  }

  /** A secret's current value, for fakes standing in for an agent. */
  valueOf(name: string): string | undefined {
    return this.secrets.get(name)?.value
  }

  count(action: string) {
    return this.calls.filter((c) => c.action === action).length
  }

  async close() {
    await new Promise((resolve) => this.server.close(resolve))
  }

  private find(id: unknown): FakeSecret | undefined {
    const key = String(id)
    return this.secrets.get(key) ?? [...this.secrets.values()].find((s) => s.arn === key)
  }

  private async handle(req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    let raw = ''
    for await (const chunk of req) raw += chunk
    const action = String(req.headers['x-amz-target'] ?? '').replace(/^secretsmanager\./, '')
    const input = JSON.parse(raw || '{}') as Record<string, any>
    const token = req.headers['x-amz-security-token']
    const taskId = typeof token === 'string' && token.startsWith('task-') ? token.slice(5) : null
    this.calls.push({ action, caller: taskId ? `task ${taskId}` : 'control-plane', input })
    const error = (type: string, message: string) => ({ status: 400, body: { __type: type, message } })
    const denied = () => error('AccessDeniedException', `User is not authorized to perform: secretsmanager:${action} on resource: ${input.SecretId ?? input.Name ?? '*'}`)
    if (taskId !== null && action !== 'GetSecretValue') return denied()

    switch (action) {
      case 'CreateSecret': {
        if (this.secrets.has(input.Name)) return error('ResourceExistsException', `The operation failed because the secret ${input.Name} already exists.`)
        const arn = `arn:aws:secretsmanager:us-east-1:123456789012:secret:${input.Name}-${randomBytes(3).toString('hex')}`
        const tags = new Map<string, string>((input.Tags ?? []).map((t: { Key: string; Value: string }) => [t.Key, t.Value]))
        this.secrets.set(input.Name, { arn, name: input.Name, value: input.SecretString, versions: 1, tags, createdAt: Date.now() })
        return { status: 200, body: { ARN: arn, Name: input.Name, VersionId: 'v1' } }
      }
      case 'PutSecretValue': {
        const secret = this.find(input.SecretId)
        if (!secret) return error('ResourceNotFoundException', "Secrets Manager can't find the specified secret.")
        secret.value = input.SecretString
        secret.versions++
        return { status: 200, body: { ARN: secret.arn, Name: secret.name, VersionId: `v${secret.versions}` } }
      }
      case 'GetSecretValue': {
        const secret = this.find(input.SecretId)
        if (taskId === null) return denied() // the control plane writes secrets, never reads them
        // A task role may read only what names it as reader; without that, IAM answers AccessDenied whether or not the secret exists.
        if (!secret || secret.tags.get('chroma-lease:reader') !== `${this.taskRoleId}:${taskId}`) return denied()
        return { status: 200, body: { ARN: secret.arn, Name: secret.name, SecretString: secret.value, VersionId: `v${secret.versions}`, CreatedDate: secret.createdAt / 1000 } }
      }
      case 'DescribeSecret': {
        const secret = this.find(input.SecretId)
        if (!secret) return error('ResourceNotFoundException', "Secrets Manager can't find the specified secret.")
        return { status: 200, body: { ARN: secret.arn, Name: secret.name, Tags: [...secret.tags].map(([Key, Value]) => ({ Key, Value })), CreatedDate: secret.createdAt / 1000 } }
      }
      case 'TagResource': {
        const secret = this.find(input.SecretId)
        if (!secret) return error('ResourceNotFoundException', "Secrets Manager can't find the specified secret.")
        for (const t of input.Tags ?? []) secret.tags.set(t.Key, t.Value)
        return { status: 200, body: {} }
      }
      case 'DeleteSecret': {
        const secret = this.find(input.SecretId)
        if (!secret) return error('ResourceNotFoundException', "Secrets Manager can't find the specified secret.")
        if (!input.ForceDeleteWithoutRecovery) return error('InvalidParameterException', 'the fake deletes without recovery only (the launcher asks for that)')
        this.secrets.delete(secret.name)
        return { status: 200, body: { ARN: secret.arn, Name: secret.name, DeletionDate: Date.now() / 1000 } }
      }
      case 'ListSecrets': {
        const prefixes: string[] = (input.Filters ?? []).filter((f: { Key: string }) => f.Key === 'name').flatMap((f: { Values: string[] }) => f.Values)
        const all = [...this.secrets.values()].filter((s) => prefixes.length === 0 || prefixes.some((p) => s.name.startsWith(p)))
        const from = Number(input.NextToken ?? 0)
        const size = Math.min(input.MaxResults ?? 100, 100)
        const page = all.slice(from, from + size)
        return {
          status: 200,
          body: {
            SecretList: page.map((s) => ({ ARN: s.arn, Name: s.name, Tags: [...s.tags].map(([Key, Value]) => ({ Key, Value })) })),
            ...(from + size < all.length ? { NextToken: String(from + size) } : {}),
          },
        }
      }
      default:
        return error('InvalidRequestException', `the fake does not implement ${action}`)
    }
  }
}
