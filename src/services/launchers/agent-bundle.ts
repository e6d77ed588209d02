import { execFile } from 'node:child_process'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { projectPath } from '../../paths.ts'

/** Where `npm run build:agent` and `npm start`'s build put the session agent's bundle. */
export const AGENT_BUNDLE_DIR = projectPath('dist', 'agent')
export const AGENT_BUNDLE = join(AGENT_BUNDLE_DIR, 'agent.mjs')

let ready: Promise<string> | undefined

/**
 * The session agent's esbuild bundle, the program the session image runs, built on demand:
 * when it is missing or older than any source it was built from (dist/agent/inputs.json),
 * scripts/build-agent.mjs rebuilds it, in a child process so that esbuild never loads into
 * the control plane. Checked once per process; the build writes each file by rename, so
 * processes building at once (parallel tests) never start a half-written agent.
 */
export function agentBundle(): Promise<string> {
  ready ??= (async () => {
    if (!(await isFresh())) {
      await promisify(execFile)(process.execPath, [projectPath('scripts', 'build-agent.mjs'), AGENT_BUNDLE_DIR]).catch((err: Error & { stderr?: string }) => {
        throw new Error(`cannot build the session agent (scripts/build-agent.mjs): ${err.stderr?.trim() || err.message}`)
      })
    }
    return AGENT_BUNDLE
  })()
  // A failed build is tried again by the next launch.
  ready.catch(() => (ready = undefined))
  return ready
}

async function isFresh(): Promise<boolean> {
  try {
    const built = (await stat(AGENT_BUNDLE)).mtimeMs
    const inputs = JSON.parse(await readFile(join(AGENT_BUNDLE_DIR, 'inputs.json'), 'utf8')) as string[]
    // Dependencies change only with an install, which leaves the bundle's sources as they were: compare the project's own.
    const sources = inputs.filter((p) => !p.startsWith('node_modules/'))
    const times = await Promise.all(sources.map((p) => stat(projectPath(p)).then((s) => s.mtimeMs, () => Infinity)))
    return times.every((t) => t <= built)
  } catch {
    return false
  }
}
