/**
 * `npm run bench:cli`: how long `chroma-lease --help` takes from spawn to exit, as the
 * installed command runs it (bin/chroma-lease.js → the esbuild bundle dist/cli.js on plain
 * Node) beside the same CLI source run through the tsx loader, as the command did before.
 * Interleaved runs on the same machine; writes the "Command start" section of BENCHMARKS.md.
 */
import { spawnSync } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'

const RUNS = Number(process.argv.find((a) => a.startsWith('--runs='))?.split('=')[1] ?? 20)
const variants = {
  bundle: ['bin/chroma-lease.js', '--help'],
  tsx: ['--import', 'tsx', 'src/cli/bin.ts', '--help'],
}
const times: Record<keyof typeof variants, number[]> = { bundle: [], tsx: [] }

spawnSync(process.execPath, variants.bundle) // builds the bundle if it is stale
for (let i = 0; i < RUNS; i++) {
  for (const [name, args] of Object.entries(variants) as Array<[keyof typeof variants, string[]]>) {
    const t = performance.now()
    const run = spawnSync(process.execPath, args, { encoding: 'utf8' })
    times[name].push(performance.now() - t)
    if (run.status !== 0 || !run.stdout.startsWith('Usage: chroma-lease')) throw new Error(`${name} failed: ${run.stderr}`)
  }
}
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!
const row = (name: keyof typeof variants, what: string) => `| ${what} | ${pct(times[name], 50).toFixed(0)} ms | ${pct(times[name], 90).toFixed(0)} ms |`
const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()
const section = [
  '## Command start',
  '',
  `\`chroma-lease --help\` from spawn to exit, ${RUNS} interleaved runs each, measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC at commit \`${commit}\` on ${cpus().length} × ${cpus()[0]?.model.trim()}, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} when it ended (\`npm run bench:cli\`): the machine is shared, so compare the two rows, not runs.`,
  '',
  '| how it runs | p50 | p90 |',
  '|---|---|---|',
  row('bundle', '`bin/chroma-lease.js`: the esbuild bundle `dist/cli.js` on plain Node (the command now)'),
  row('tsx', 'the same source through the tsx loader (the command before)'),
  '',
].join('\n')
console.log(section)
const path = new URL('../BENCHMARKS.md', import.meta.url)
const current = await readFile(path, 'utf8')
const start = current.indexOf('## Command start')
const next =
  start < 0
    ? current.trimEnd() + '\n\n' + section
    : current.slice(0, start) + section + (current.indexOf('\n## ', start + 1) < 0 ? '' : current.slice(current.indexOf('\n## ', start + 1)))
await writeFile(path, next)
