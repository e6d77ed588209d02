import { rename, writeFile } from 'node:fs/promises'

export type AgentPhase = 'restoring' | 'starting' | 'ready' | 'stopping' | 'exited' | 'failed'

/** The agent's STATUS_FILE, read by the process launcher's describe(). */
export interface AgentStatus {
  phase: AgentPhase
  /** Restore progress: bytes read from the snapshot so far. */
  bytes?: number
  /** The snapshot's size, when the source tells it. */
  totalBytes?: number
  percent?: number
  error?: string
  pid: number
  chromaPid?: number
  /** ISO time of this write. */
  at: string
}

export type StatusUpdate = Omit<AgentStatus, 'pid' | 'at'>

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

  constructor(
    private readonly path: string | undefined,
    private readonly onError: (err: Error) => void,
  ) {}

  write(update: StatusUpdate): Promise<void> {
    const status: AgentStatus = { ...update, pid: process.pid, at: new Date().toISOString() }
    this.chain = this.chain.then(() => this.replace(status))
    return this.chain
  }

  /**
   * A restore progress write, skipped when the previous one is under 250 ms old:
   * progress arrives with every chunk read, far more often than anyone looks.
   */
  progress(bytes: number, totalBytes: number | undefined): Promise<void> {
    const now = Date.now()
    if (now - this.lastProgressAt < PROGRESS_INTERVAL_MS) return this.chain
    this.lastProgressAt = now
    const percent = totalBytes ? Math.min(100, Math.floor((bytes / totalBytes) * 100)) : undefined
    return this.write({ phase: 'restoring', bytes, totalBytes, percent })
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
