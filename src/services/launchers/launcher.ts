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
  /** `file:///abs/path` (a tar archive or a directory) or `s3://bucket/key-or-prefix`; '' for a warm agent. */
  snapshot: string
  /** A warm pool agent: started with no snapshot (WARM=1), assigned one when an acquire claims it (POST /_agent/assign). */
  warm?: boolean
  collection: string | null
  /**
   * The secret the session requires on every request (the agent passes only requests
   * bearing it to Chroma). Derived from the session id and generation by
   * LeaseTokens.sessionToken, so it is never stored and every replica knows it.
   */
  authToken: string
  /** What the agent requires on its control endpoints (confirm, save, revoke): LeaseTokens.controlToken, never given to lease holders. */
  controlToken: string
  /**
   * base64url of the key that signs the session's direct-access lease tokens (LeaseTokens.leaseKey).
   * These three are secrets: launchers hand them over out of band (a 0600 file, a
   * per-session Secrets Manager secret), never in argv, the environment or RunTask's input.
   */
  leaseKey: string
  /** The agent's dead man's switch (DEAD_MAN_SECONDS): it stops itself when not confirmed for this long. Default 900. */
  deadManSeconds?: number
  /** Save the directory back before a SIGTERM stop (SAVE_ON_STOP): sessions acquired with saveOnRelease. */
  saveOnStop?: boolean
}

/** Restore or save progress, as the agent reports it. */
export interface ComputeProgress {
  phase: string
  bytes?: number
  totalBytes?: number
  percent?: number
}

/** Names one launched thing (a pid, a task ARN) together with its launch attempt. */
export interface LaunchTarget {
  sessionId: string
  generation: number
  ref: string
  /** When the launch was claimed (the session's launched_at), for backends that are slow to list a new launch. */
  launchedAt?: Date
}

export type ObservedCompute =
  /**
   * Launched, not serving yet (provisioning, restoring the snapshot, Chroma booting).
   * `host`/`port` when the agent is already reachable (for the dead man's switch confirmation).
   * `stopUnderway`: see below.
   */
  | { state: 'starting'; detail?: string; progress?: ComputeProgress; host?: string; port?: number; stopUnderway?: boolean }
  /**
   * Running and addressable; Chroma may still be warming up (the reconciler checks it).
   * `stopping`: the compute was told to stop by someone other than the control plane
   * (scale-in, a Spot interruption notice) and is shutting down.
   * `size`: what it runs on, when the backend says (a Fargate task), for its cost.
   * `stopUnderway`: the backend has accepted a stop (whoever asked) and finishes it on its
   * own (ECS escalates to SIGKILL itself), so stop() again would add nothing. Backends
   * whose stop() escalates on repeated calls (the process launcher) never set it.
   */
  | { state: 'running'; host: string; port: number; detail?: string; progress?: ComputeProgress; stopping?: boolean; size?: ComputeSize; stopUnderway?: boolean }
  /**
   * Gone: exited, stopped, or never existed. `reason` says why, for the session's error.
   * `clean`: it stopped as asked (a signal, its dead man's switch), not by failing.
   * `saved`: the version it saved on its way out.
   */
  | { state: 'stopped'; reason: string; clean?: boolean; saved?: SavedVersion }

/** The size of a launched compute, as its backend reports it (src/services/cost.ts prices it). */
export interface ComputeSize {
  /** 1024 = 1 vCPU. */
  cpuUnits: number
  memoryMiB: number
  /** null when the backend could not tell (priced as x86, the dearer). */
  architecture: 'x86_64' | 'arm64' | null
  /** FARGATE, FARGATE_SPOT; null when the backend has no such notion. */
  capacityProvider: string | null
}

/** A snapshot version a session agent saved (container/agent/save.ts SaveResult). */
export interface SavedVersion {
  snapshot: string
  version: string
  sha256: string
  bytes: number
  savedAt: string
}

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
  /**
   * Observes many launches in as few calls as the backend allows. Keys are refs; a target
   * left out could not be observed this time (the backend did not answer for it).
   */
  describe(targets: LaunchTarget[]): Promise<Map<string, ObservedCompute>>
  /** Asks the compute to stop; safe to repeat; escalates (e.g. SIGKILL) on later calls after a grace period. */
  stop(target: LaunchTarget, reason: string): Promise<void>
  /** Everything this control plane launched that still runs, for the orphan sweeper. */
  listRunning(): Promise<RunningCompute[]>
  /** Per-launch secrets kept outside the compute (Fargate: Secrets Manager), for the orphan sweeper; none: the launcher keeps none. */
  listSecrets?(): Promise<Array<{ sessionId: string; generation: number }>>
  /** Deletes one launch attempt's secret; done when it is gone already. */
  deleteSecret?(sessionId: string, generation: number): Promise<void>
  /** Checks that what launching needs exists (cluster, task definition, network), naming every problem. */
  preflight(): Promise<PreflightCheck[]>
  close?(): Promise<void>
}

export interface PreflightCheck {
  name: string
  ok: boolean
  detail: string
}
