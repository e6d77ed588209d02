import type { Logger } from 'pino'
import type { LeaseTokens } from './auth.ts'
import { conflict, ProblemError } from './errors.ts'
import { SessionAgentError, type SessionAgentClient } from './session-agent.ts'
import { SessionService, type SessionRecord } from './sessions.ts'
import type { SavedVersion } from './launchers/launcher.ts'
import type { SnapshotService } from './snapshots/snapshot-service.ts'
import { parseSnapshotUri } from './snapshots/uri.ts'

/**
 * Save-back: asks a serving session's agent to quiesce Chroma, pack its directory and
 * upload it as a new version of the snapshot's series, then records the version's URI
 * on the session (shown on the session and on every lease of it). The agent moves the
 * series' `latest` only after a complete upload, so a save that fails or is cut short
 * changes nothing that was there before.
 *
 * Used by operators (POST /v1/sessions/{id}/save) and by the reconciler when the lease
 * of an exclusive session acquired with saveOnRelease ends.
 */
export class SaveBackService {
  /** One save per launch attempt at a time on this replica; a second request joins it (the agent does the same across replicas). */
  private readonly inFlight = new Map<string, Promise<SessionRecord>>()

  constructor(
    private readonly sessions: SessionService,
    private readonly agents: SessionAgentClient,
    private readonly tokens: LeaseTokens,
    private readonly snapshots: SnapshotService,
    private readonly opts: { saveTimeoutSeconds: number },
    private readonly logger?: Logger,
  ) {}

  /**
   * The version a session's agent saved on its way out (SIGTERM with SAVE_ON_STOP), found
   * after the compute is gone: its series' `latest`, when this session wrote it. Where a
   * launcher cannot read the agent's last status (Fargate), this is how the session learns it.
   */
  async savedOnStop(s: Pick<SessionRecord, 'id' | 'snapshot'>): Promise<SavedVersion | null> {
    const pointer = await this.snapshots.latestPointer(s.snapshot)
    if (!pointer || pointer.savedBy !== s.id) return null
    return { snapshot: pointer.snapshot, version: pointer.version, sha256: pointer.sha256, bytes: pointer.bytes, savedAt: pointer.savedAt }
  }

  isSaving(s: Pick<SessionRecord, 'id' | 'generation'>): boolean {
    return this.inFlight.has(`${s.id}:${s.generation}`)
  }

  /** Saves the session now and answers it with `savedSnapshot` set. 409 when it is not serving or its snapshot cannot be saved back; 502 when the save failed. */
  async save(sessionId: string, trigger: 'operator' | 'release'): Promise<SessionRecord> {
    const s = await this.sessions.get(sessionId)
    SessionService.assertServing(s)
    assertSavable(s.snapshot)
    const key = `${s.id}:${s.generation}`
    let saving = this.inFlight.get(key)
    if (!saving) {
      saving = this.run(s, trigger).finally(() => this.inFlight.delete(key))
      this.inFlight.set(key, saving)
    }
    return saving
  }

  private async run(s: SessionRecord, trigger: 'operator' | 'release'): Promise<SessionRecord> {
    await this.sessions.recordEvent(s.id, { type: 'saving', reason: trigger }, s.status)
    let saved
    try {
      saved = await this.agents.save(`http://${s.host}:${s.port}`, this.tokens.controlToken(s.id, s.generation), this.opts.saveTimeoutSeconds * 1000)
    } catch (err) {
      const message = err instanceof SessionAgentError ? err.message : `the session agent did not answer: ${(err as Error).message}`
      await this.sessions.recordEvent(s.id, { type: 'save_failed', reason: message }, s.status)
      this.logger?.warn({ sessionId: s.id, err }, 'save-back failed')
      if (err instanceof SessionAgentError && err.status === 409) throw conflict(err.code, message)
      throw new ProblemError(502, 'save_failed', 'Bad Gateway', `${message}; the snapshot's latest version is unchanged`)
    } finally {
      await this.sessions.setProgress(s, null)
    }
    await this.sessions.recordSave(s, saved, trigger)
    return this.sessions.get(s.id)
  }
}

/** Save-back writes new versions next to the snapshot in S3; a file:// snapshot has nowhere to put them. */
export function assertSavable(snapshot: string): void {
  if (parseSnapshotUri(snapshot).scheme !== 's3') {
    throw conflict('save_unsupported', `save-back needs an s3:// snapshot; ${snapshot} is not one`)
  }
}
