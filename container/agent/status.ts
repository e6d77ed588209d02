import { rename, writeFile } from 'node:fs/promises'

import type { SaveResult } from './save.ts'
import type { SessionUsage } from './usage.ts'

export type AgentPhase = 'warm' | 'restoring' | 'starting' | 'ready' | 'saving' | 'stopping' | 'exited' | 'failed'

/**
 * The agent's status: its STATUS_FILE (read by the process launcher's describe()) and
 * the answer of GET /_agent/status and POST /_agent/confirm (read by the control plane
 * wherever it cannot read files, e.g. on Fargate).
 */
export interface AgentStatus {
  phase: AgentPhase
  /** Progress of the restore (bytes read from the snapshot) or the save (bytes packed). */
  bytes?: number
  /** The snapshot's size, when the source tells it. */
  totalBytes?: number
  percent?: number
  error?: string
  pid: number
  chromaPid?: number
  /** The snapshot restored (a series' `latest` resolved to its version). */
  restored?: string
  /** The last successful save-back. */
  lastSave?: SaveResult
  /** Why the last save-back failed, when it did (the data it would have replaced is intact). */
  saveError?: string
  /** Why the agent is stopping: a signal, or the dead man's switch. */
  stopReason?: string
  /** ISO time of this write. */
  at: string
  /** Memory and CPU, in the answers to GET /_agent/status and POST /_agent/confirm only (not the file). */
  usage?: SessionUsage
}

export type StatusUpdate = Omit<AgentStatus, 'pid' | 'at' | StickyField>

/** Facts that stay true until replaced, whatever the phase. */
const STICKY = ['restored', 'lastSave', 'saveError', 'stopReason'] as const
type StickyField = (typeof STICKY)[number]
export type StickyUpdate = Partial<Pick<AgentStatus, StickyField>>

const PROGRESS_INTERVAL_MS = 250

/**
 * Writes the status file atomically (write a temporary file, rename it over the old
 * one), so a reader never sees half a document. Writes are serialised in call order;
 * without a path it writes nothing. A failed write is reported through `onError` and
 * does not stop the agent: the status file is for observers, Chroma can serve without it.
 */
export class StatusFile {
  private chain: Promise<void> = Promise.resolve()
  private lastProgressAt = 0
  private sticky: StickyUpdate = {}
  private latest: AgentStatus = { phase: 'restoring', pid: process.pid, at: new Date().toISOString() }

  constructor(
    private readonly path: string | undefined,
    private readonly onError: (err: Error) => void,
    /** Milliseconds for the progress throttle; tests pass their own. */
    private readonly now: () => number = Date.now,
  ) {}

  write(update: StatusUpdate, sticky: StickyUpdate = {}): Promise<void> {
    this.sticky = { ...this.sticky, ...sticky }
    const status: AgentStatus = { ...this.sticky, ...update, pid: process.pid, at: new Date().toISOString() }
    this.latest = status
    this.chain = this.chain.then(() => this.replace(status))
    return this.chain
  }

  /** What was last written (or would have been, without a path). */
  current(): AgentStatus {
    return this.latest
  }

  /**
   * A progress write, skipped when the previous one is under 250 ms old: progress
   * arrives with every chunk read, far more often than anyone looks.
   */
  progress(bytes: number, totalBytes: number | undefined, phase: 'restoring' | 'saving' = 'restoring'): Promise<void> {
    const now = this.now()
    if (now - this.lastProgressAt < PROGRESS_INTERVAL_MS) return this.chain
    this.lastProgressAt = now
    const percent = totalBytes ? Math.min(100, Math.floor((bytes / totalBytes) * 100)) : undefined
    return this.write({ phase, bytes, totalBytes, percent })
  }

  private async replace(status: AgentStatus): Promise<void> {
    if (!this.path) return
    const tmp = `${this.path}.${process.pid}.tmp`
    try {
      await writeFile(tmp, JSON.stringify(status) + '\n')
      await rename(tmp, this.path)
    } catch (err) {
      this.onError(err as Error)
    }
  }
}
