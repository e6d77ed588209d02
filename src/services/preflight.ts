import type { Launcher, PreflightCheck } from './launchers/launcher.ts'

export interface PreflightReport {
  ok: boolean
  launcher: Launcher['kind']
  checks: PreflightCheck[]
}

/**
 * Whether this control plane can launch sessions: what the launcher needs exists and is
 * usable (for Fargate: the cluster, the task definition and its Chroma port, subnets,
 * security groups). Run at start (problems are logged, the service still starts: AWS
 * may be briefly unreachable) and on demand at GET /v1/preflight.
 */
export class PreflightService {
  constructor(private readonly launcher: Launcher) {}

  async run(): Promise<PreflightReport> {
    const checks = await this.launcher.preflight()
    return { ok: checks.every((c) => c.ok), launcher: this.launcher.kind, checks }
  }
}
