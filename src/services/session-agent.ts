import { request } from 'undici'
import { requestOnce } from './session-http.ts'
import type { AgentStatus } from '../../container/agent/status.ts'
import type { SaveResult } from '../../container/agent/save.ts'
import { CONTROL_PLANE_TIME_HEADER } from '../../container/agent/front.ts'

export type { AgentStatus, SaveResult }

export class SessionAgentError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/**
 * The control plane's calls to a session's agent (container/agent), on the session's
 * own address under /_agent/, with the session's control token: the dead man's switch
 * confirmation, the agent's status, and save-back.
 */
export class SessionAgentClient {
  constructor(private readonly timeoutMs = 5_000) {}

  /**
   * Resets the session's dead man's switch; answers the agent's status (restore progress
   * included). `now`: the control plane's time, on which the agent judges lease expiries.
   * Once a minute per session, of thousands: on a connection of its own, closed with the
   * answer, so no connection nor undici pool is left behind per session (session-http.ts).
   */
  confirm(base: string, token: string, now?: Date): Promise<AgentStatus> {
    return this.call('POST', `${base}/_agent/confirm`, token, this.timeoutMs, undefined, now, true) as Promise<AgentStatus>
  }

  /** Tells the agent to refuse these leases' direct-access tokens (they ended before expiring). */
  revoke(base: string, token: string, leases: Array<{ id: string; expiresAt: Date }>, now?: Date): Promise<{ revoked: number }> {
    const body = JSON.stringify({ leases: leases.map((l) => ({ id: l.id, expiresAt: l.expiresAt.toISOString() })) })
    return this.call('POST', `${base}/_agent/revoke`, token, this.timeoutMs, body, now) as Promise<{ revoked: number }>
  }

  /** Names a warm agent's snapshot; repeating the same assignment is harmless (the reconciler does until the restore shows). */
  assign(base: string, token: string, assignment: { snapshot: string; collection: string | null; saveOnStop: boolean }): Promise<AgentStatus> {
    return this.call('POST', `${base}/_agent/assign`, token, this.timeoutMs, JSON.stringify(assignment), undefined, true) as Promise<AgentStatus>
  }

  status(base: string, token: string): Promise<AgentStatus> {
    return this.call('GET', `${base}/_agent/status`, token, this.timeoutMs, undefined, undefined, true) as Promise<AgentStatus>
  }

  /** Quiesces Chroma, uploads the directory as a new snapshot version, and answers where it went. Takes as long as the upload. */
  save(base: string, token: string, timeoutMs: number): Promise<SaveResult> {
    return this.call('POST', `${base}/_agent/save`, token, timeoutMs) as Promise<SaveResult>
  }

  private async call(method: 'GET' | 'POST', url: string, token: string, timeoutMs: number, body?: string, now?: Date, closeAfter = false): Promise<unknown> {
    const headers: Record<string, string> = { 'x-chroma-token': token }
    if (body !== undefined) headers['content-type'] = 'application/json'
    if (now) headers[CONTROL_PLANE_TIME_HEADER] = String(now.getTime())
    let res: { statusCode: number; text: string }
    if (closeAfter) res = await requestOnce(url, { method, headers, body, timeoutMs })
    else {
      const answer = await request(url, { method, headers, body, headersTimeout: timeoutMs, bodyTimeout: timeoutMs })
      res = { statusCode: answer.statusCode, text: await answer.body.text() }
    }
    const text = res.text
    let answer = null as { detail?: string; code?: string } | null
    try {
      answer = text ? (JSON.parse(text) as typeof answer) : null
    } catch {
      // a non-JSON answer is not the agent's
    }
    if (res.statusCode !== 200) {
      throw new SessionAgentError(res.statusCode, answer?.code ?? 'agent_error', `the session agent answered ${res.statusCode}${answer?.detail ? `: ${answer.detail}` : ''}`)
    }
    return answer
  }
}
