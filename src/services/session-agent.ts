import { request } from 'undici'
import type { AgentStatus } from '../../container/agent/status.ts'
import type { SaveResult } from '../../container/agent/save.ts'

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
   * Resets the session's dead man's switch; answers the agent's status (restore progress included).
   * Once a minute per session, of thousands: the connection closes after the answer, so no
   * kept-alive connection (and undici pool, ~30 KB each) is left behind per session; a
   * replica confirming thousands of new sessions at once held them all (BENCHMARKS.md, At scale).
   */
  confirm(base: string, token: string): Promise<AgentStatus> {
    return this.call('POST', `${base}/_agent/confirm`, token, this.timeoutMs, true) as Promise<AgentStatus>
  }

  status(base: string, token: string): Promise<AgentStatus> {
    return this.call('GET', `${base}/_agent/status`, token, this.timeoutMs, true) as Promise<AgentStatus>
  }

  /** Quiesces Chroma, uploads the directory as a new snapshot version, and answers where it went. Takes as long as the upload. */
  save(base: string, token: string, timeoutMs: number): Promise<SaveResult> {
    return this.call('POST', `${base}/_agent/save`, token, timeoutMs) as Promise<SaveResult>
  }

  private async call(method: 'GET' | 'POST', url: string, token: string, timeoutMs: number, closeAfter = false): Promise<unknown> {
    const res = await request(url, { method, reset: closeAfter, headers: { 'x-chroma-token': token }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs })
    const text = await res.body.text()
    let body = null as { detail?: string; code?: string } | null
    try {
      body = text ? (JSON.parse(text) as typeof body) : null
    } catch {
      // a non-JSON answer is not the agent's
    }
    if (res.statusCode !== 200) {
      throw new SessionAgentError(res.statusCode, body?.code ?? 'agent_error', `the session agent answered ${res.statusCode}${body?.detail ? `: ${body.detail}` : ''}`)
    }
    return body
  }
}
