/**
 * A launcher runs the compute behind a session: a local child process running the
 * session agent (ProcessLauncher) or an ECS Fargate task (FargateLauncher).
 *
 * Every method is idempotent and keeps no memory the control plane relies on: the
 * reconciler may call any of them again after a crash, from any replica.
 */

/**
 * Thrown by launch() when the backend asks to be called later (throttling that outlasts
 * the retries): the session keeps its claim and the reconciler tries again on a later
 * pass, until its start deadline, instead of failing it.
 */
export class LaunchDeferred extends Error {
  override name = 'LaunchDeferred'
}

/** What to launch, and the key that makes launching it idempotent. */
export interface LaunchSpec {
  sessionId: string
  /** The session's launch generation; (sessionId, generation) names one launch attempt. */
  generation: number
  /** `file:///abs/path` (a tar archive or a directory) or `s3://bucket/key-or-prefix`. */
  snapshot: string
  collection: string | null
  /**
   * The secret the session requires on every request (the agent passes only requests
   * bearing it to Chroma). Derived from the session id and generation by
   * LeaseTokens.sessionToken, so it is never stored and every replica knows it.
   */
  authToken: string
}

/** Names one launched thing (a pid, a task ARN) together with its launch attempt. */
export interface LaunchTarget {
  sessionId: string
  generation: number
  ref: string
}

export type ObservedCompute =
  /** Launched, not addressable yet (provisioning, restoring the snapshot, Chroma booting). */
  | { state: 'starting'; detail?: string }
  /** Running and addressable; Chroma may still be warming up (the reconciler checks it). */
  | { state: 'running'; host: string; port: number; detail?: string }
  /** Gone: exited, stopped, or never existed. `reason` says why, for the session's error. */
  | { state: 'stopped'; reason: string }

/** Something this control plane launched that is still running. */
export interface RunningCompute {
  ref: string
  sessionId: string
  generation: number
}

export interface Launcher {
  readonly kind: 'process' | 'fargate'
  /** Starts the compute for one launch attempt, or returns the one already started for it. */
  launch(spec: LaunchSpec): Promise<{ ref: string }>
  /** Observes many launches in as few calls as the backend allows. Keys are refs. */
  describe(targets: LaunchTarget[]): Promise<Map<string, ObservedCompute>>
  /** Asks the compute to stop; safe to repeat; escalates (e.g. SIGKILL) on later calls after a grace period. */
  stop(target: LaunchTarget, reason: string): Promise<void>
  /** Everything this control plane launched that still runs, for the orphan sweeper. */
  listRunning(): Promise<RunningCompute[]>
  /** Checks that what launching needs exists (cluster, task definition, network), naming every problem. */
  preflight(): Promise<PreflightCheck[]>
  close?(): Promise<void>
}

export interface PreflightCheck {
  name: string
  ok: boolean
  detail: string
}
