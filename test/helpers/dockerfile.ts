import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { cp, mkdir, readFile, stat } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join, relative } from 'node:path'

// Docker cannot build here, so a Dockerfile's stages are run as the build would run them,
// each stage in a directory of its own standing for its filesystem root: WORKDIR, ENV,
// COPY (from the build context minus .dockerignore, or --from another stage) and RUN,
// every RUN line taken from the Dockerfile itself. What cannot run outside Docker is
// named, with the reason, by the caller (`cannotRunHere`) and reported as skipped.

export interface Instruction {
  op: string
  args: string
}

export interface Stage {
  name: string
  /** The base image, as written after FROM (without AS). */
  from: string
  instructions: Instruction[]
}

/** A RUN line that cannot run outside Docker, and why (README "Build and push the images" says the same). */
export interface SkippedRun {
  run: string
  why: string
}

/**
 * The RUN lines of this repository's Dockerfiles that cannot run outside Docker, and why
 * (README "Build and push the images" names the same). Everything else runs.
 */
export function cannotRunHere(runs: string[]): SkippedRun[] {
  return runs.flatMap((run): SkippedRun[] => {
    if (run.startsWith('apt-get ')) return [{ run, why: "installs OS packages into the image's Debian; their programs must be on this machine instead" }]
    if (run === 'mkdir -p /data && chown node:node /data') return [{ run, why: "hands /data to the image's node user, which this machine lacks" }]
    return []
  })
}

export function parseDockerfile(text: string): Stage[] {
  const lines = text
    .replace(/\s*\\\n\s*/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
  const stages: Stage[] = []
  for (const line of lines) {
    const space = line.indexOf(' ')
    const op = line.slice(0, space).toUpperCase()
    const args = line.slice(space + 1).trim()
    if (op === 'FROM') {
      const alias = /\sAS\s+(\S+)$/i.exec(args)?.[1]
      stages.push({ name: alias ?? `stage-${stages.length}`, from: args.replace(/\s+AS\s+\S+$/i, ''), instructions: [] })
      continue
    }
    stages.at(-1)!.instructions.push({ op, args })
  }
  return stages
}

/** The final stage's image configuration. */
export function imageConfig(stages: Stage[]) {
  const last = stages.at(-1)!
  const config = { env: {} as Record<string, string>, entrypoint: [] as string[], cmd: [] as string[], healthcheck: [] as string[], user: '', workdir: '/' }
  for (const { op, args } of last.instructions) {
    if (op === 'ENV') for (const m of args.matchAll(/(\w+)=(\S+)/g)) config.env[m[1]!] = m[2]!
    if (op === 'ENTRYPOINT') config.entrypoint = JSON.parse(args) as string[]
    if (op === 'CMD') config.cmd = JSON.parse(args) as string[]
    if (op === 'USER') config.user = args
    if (op === 'WORKDIR') config.workdir = args
    if (op === 'HEALTHCHECK') config.healthcheck = JSON.parse(args.slice(args.indexOf('CMD ') + 4)) as string[]
  }
  return config
}

export function runLines(stages: Stage[]): string[] {
  return stages.flatMap((s) => s.instructions.filter((i) => i.op === 'RUN').map((i) => i.args))
}

export interface LocalBuild {
  /** Each stage's directory standing for its root. */
  rootOf(stage: string): string
  /** Rewrites the image's absolute paths (/app, /data, ...) to the final stage's directory. */
  inImage(value: string): string
  ran: string[]
  skipped: SkippedRun[]
}

/**
 * Runs every stage of `stages` under `root` (one directory per stage), with `context` as
 * the build context. RUN lines run with `sh -c` in the stage's WORKDIR, with the stage's
 * ENV, PATH and HOME (the npm cache only makes them faster). Throws on any failing step.
 */
export async function buildLocally(stages: Stage[], opts: { context: string; root: string; cannotRunHere: SkippedRun[] }): Promise<LocalBuild> {
  const ignore = await dockerignore(opts.context)
  const rootOf = (stage: string) => join(opts.root, stage)
  // The directories the Dockerfile makes its own (WORKDIR, COPY destinations, ENV paths:
  // /app, /src, /data), remapped into the stage's directory wherever they appear.
  const dirs = new Set<string>()
  for (const s of stages) {
    for (const i of s.instructions) {
      const paths = i.op === 'WORKDIR' ? [i.args] : i.op === 'COPY' ? [i.args.split(/\s+/).at(-1)!] : i.op === 'ENV' ? [...i.args.matchAll(/\w+=(\S+)/g)].map((m) => m[1]!) : []
      for (const path of paths) if (isAbsolute(path) && path !== '/') dirs.add(path.split('/')[1]!)
    }
  }
  const pattern = new RegExp(`(^|[\\s="'])/(${[...dirs].join('|')})(?=/|\\s|$|["'])`, 'g')
  const remap = (value: string, stageRoot: string) => value.replace(pattern, (_, before: string, dir: string) => `${before}${stageRoot}/${dir}`)
  const ran: string[] = []
  const skipped: SkippedRun[] = []

  for (const stage of stages) {
    const stageRoot = rootOf(stage.name)
    await mkdir(stageRoot, { recursive: true })
    let workdir = stageRoot
    const env: Record<string, string> = {}
    for (const { op, args } of stage.instructions) {
      if (op === 'WORKDIR') {
        workdir = join(stageRoot, args)
        await mkdir(workdir, { recursive: true })
      } else if (op === 'ENV') {
        for (const m of args.matchAll(/(\w+)=(\S+)/g)) env[m[1]!] = remap(m[2]!, stageRoot)
      } else if (op === 'COPY') {
        const words = args.split(/\s+/)
        const from = words[0]!.startsWith('--from=') ? words.shift()!.slice('--from='.length) : null
        const dest = words.pop()!
        const target = isAbsolute(dest) ? join(stageRoot, dest) : join(workdir, dest)
        const intoDir = dest.endsWith('/') || words.length > 1
        for (const src of words) {
          const source = from ? join(rootOf(from), src) : join(opts.context, src)
          const isDir = (await stat(source)).isDirectory()
          const to = isDir || !intoDir ? target : join(target, basename(src))
          if (from) await hardLinkCopy(source, to, isDir)
          else {
            await mkdir(isDir ? to : dirname(to), { recursive: true })
            await cp(source, to, { recursive: true, filter: (path) => !ignore(relative(opts.context, path)) })
          }
        }
      } else if (op === 'RUN') {
        const skip = opts.cannotRunHere.find((s) => s.run === args)
        if (skip) {
          skipped.push(skip)
          continue
        }
        const command = remap(args, stageRoot)
        const result = await sh(command, workdir, { PATH: process.env.PATH!, HOME: process.env.HOME ?? opts.root, ...env })
        if (result.status !== 0) throw new Error(`RUN ${args} (stage ${stage.name}) exited ${result.status}:\n${result.output.slice(-4000)}`)
        ran.push(args)
      }
    }
  }
  const finalRoot = rootOf(stages.at(-1)!.name)
  return { rootOf, inImage: (value) => remap(value, finalRoot), ran, skipped }
}

/** Copies like COPY --from, by hard links (same bytes, no time spent copying a node_modules). */
async function hardLinkCopy(source: string, to: string, isDir: boolean): Promise<void> {
  await mkdir(isDir ? to : dirname(to), { recursive: true })
  const result = isDir ? await sh(`cp -al "${source}/." "${to}/"`, '/', { PATH: process.env.PATH! }) : await sh(`cp -l "${source}" "${to}"`, '/', { PATH: process.env.PATH! })
  if (result.status !== 0) throw new Error(`copying ${source} to ${to}: ${result.output}`)
}

async function sh(command: string, cwd: string, env: Record<string, string>): Promise<{ status: number | null; output: string }> {
  const child = spawn('sh', ['-c', command], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (c: Buffer) => (output += c))
  child.stderr.on('data', (c: Buffer) => (output += c))
  const [status] = (await once(child, 'close')) as [number | null]
  return { status, output }
}

/** The context's .dockerignore as a predicate on paths relative to the context (Docker's patterns: `*`, `**`, a directory excludes what is under it). */
async function dockerignore(context: string): Promise<(path: string) => boolean> {
  const text = await readFile(join(context, '.dockerignore'), 'utf8').catch(() => '')
  const patterns = text
    .split('\n')
    .map((l) => l.trim().replace(/^\/+|\/+$/g, ''))
    .filter((l) => l && !l.startsWith('#'))
    .map((p) => new RegExp(`^${p.split('**/').map((part) => part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')).join('(?:.*/)?')}(?:/.*)?$`))
  return (path) => path !== '' && patterns.some((p) => p.test(path))
}
