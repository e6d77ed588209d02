import {
  CreateSecretCommand,
  DeleteSecretCommand,
  DescribeSecretCommand,
  ListSecretsCommand,
  PutSecretValueCommand,
  TagResourceCommand,
  type SecretsManagerClient,
} from '@aws-sdk/client-secrets-manager'
import type { SessionSecretDocument } from '../../../container/agent/lease-token.ts'
import type { LaunchSpec } from './launcher.ts'

export interface SessionSecretSettings {
  /** Secret names are `<prefix>/<sessionId>/g<generation>`; the session task role may read under it only (deploy/policies.ts). */
  prefix: string
  /**
   * The unique id (AROA…) of the session task role. A task's credentials carry
   * `aws:userid` = `<role id>:<task id>` (ECS names the role session after the task), and the
   * task role may read a secret only when its `chroma-lease:reader` tag equals that.
   */
  taskRoleId: string
}

/** The tag naming the one task that may read a session's secret. */
export const READER_TAG = 'chroma-lease:reader'

/**
 * Per-session secrets for Fargate tasks, in Secrets Manager: written before RunTask (the
 * task gets only the secret's name), granted to the task RunTask started (a tag the task
 * role's policy matches against its own identity), deleted when the session's task is
 * stopped, and swept when left over (OrphanSweeper). Nothing secret travels in RunTask's
 * input, so neither DescribeTasks nor CloudTrail's record of RunTask shows one.
 */
export class SessionSecretStore {
  constructor(
    private readonly client: SecretsManagerClient,
    private readonly settings: SessionSecretSettings,
  ) {}

  name(sessionId: string, generation: number): string {
    return `${this.settings.prefix}/${sessionId}/g${generation}`
  }

  /** Writes the launch attempt's secret (idempotent: the values derive from session and generation). Answers its name. */
  async write(spec: LaunchSpec): Promise<string> {
    const name = this.name(spec.sessionId, spec.generation)
    const document: SessionSecretDocument = { sessionToken: spec.authToken, controlToken: spec.controlToken, leaseKey: spec.leaseKey }
    const SecretString = JSON.stringify(document)
    try {
      await this.client.send(
        new CreateSecretCommand({
          Name: name,
          SecretString,
          Description: `chroma-lease session ${spec.sessionId} generation ${spec.generation}: its agent's tokens`,
          Tags: [
            { Key: 'chroma-lease:session', Value: spec.sessionId },
            { Key: 'chroma-lease:generation', Value: String(spec.generation) },
          ],
        }),
      )
    } catch (err) {
      if ((err as Error).name !== 'ResourceExistsException') throw err
      await this.client.send(new PutSecretValueCommand({ SecretId: name, SecretString }))
    }
    return name
  }

  /** Lets the task `taskArn` (and only it) read the secret. */
  async grant(name: string, taskArn: string): Promise<void> {
    const taskId = taskArn.split('/').pop()!
    await this.client.send(new TagResourceCommand({ SecretId: name, Tags: [{ Key: READER_TAG, Value: `${this.settings.taskRoleId}:${taskId}` }] }))
  }

  /** Deletes a launch attempt's secret at once (no recovery window: the name can be written again); done when it is gone already. */
  async delete(sessionId: string, generation: number): Promise<void> {
    try {
      await this.client.send(new DeleteSecretCommand({ SecretId: this.name(sessionId, generation), ForceDeleteWithoutRecovery: true }))
    } catch (err) {
      if ((err as Error).name !== 'ResourceNotFoundException') throw err
    }
  }

  /** Deletes the secret unless its reader tag names a task other than `taskArn` (a duplicate's stop must not take the recorded task's secret). */
  async deleteUnlessGrantedElsewhere(sessionId: string, generation: number, taskArn: string): Promise<void> {
    let reader: string | undefined
    try {
      const secret = await this.client.send(new DescribeSecretCommand({ SecretId: this.name(sessionId, generation) }))
      reader = secret.Tags?.find((t) => t.Key === READER_TAG)?.Value
    } catch (err) {
      if ((err as Error).name === 'ResourceNotFoundException') return
      throw err
    }
    if (reader !== undefined && !reader.endsWith(`:${taskArn.split('/').pop()}`)) return
    await this.delete(sessionId, generation)
  }

  /** Every session secret under the prefix, by the launch attempt its name says. */
  async list(): Promise<Array<{ sessionId: string; generation: number }>> {
    const found: Array<{ sessionId: string; generation: number }> = []
    let NextToken: string | undefined
    do {
      const page = await this.client.send(new ListSecretsCommand({ Filters: [{ Key: 'name', Values: [`${this.settings.prefix}/`] }], MaxResults: 100, NextToken }))
      for (const s of page.SecretList ?? []) {
        const m = /\/([0-9a-f-]{36})\/g(\d+)$/.exec(s.Name ?? '')
        if (m && s.Name === this.name(m[1]!, Number(m[2]))) found.push({ sessionId: m[1]!, generation: Number(m[2]) })
      }
      NextToken = page.NextToken
    } while (NextToken)
    return found
  }
}
