/**
 * `node --import tsx bench/heap-summary.ts A.heapsnapshot [B.heapsnapshot]`: where a V8 heap
 * snapshot's memory is held, as Chrome DevTools' summary would say it, in a terminal.
 *
 * Objects are grouped by kind (V8's node type and, for objects, closures, arrays and native
 * nodes, their constructor or name). For each group: how many, their own size, and what
 * they retain (the size of their dominator subtrees, counting the group's top-level members
 * only, so members inside members are not counted twice), and which group most often
 * dominates them (what holds them). With two snapshots (say at 500 and at 5,000 sessions)
 * it prints what grew between them, which is what grows with N.
 *
 * A snapshot of a few hundred MB of heap does not fit in one JavaScript string, so its
 * numeric arrays are scanned from the bytes; only the header and the strings are parsed
 * as JSON.
 */
import { readFileSync } from 'node:fs'

interface Group {
  count: number
  selfBytes: number
  retainedBytes: number
  /** Dominating group of each top-level member, counted. */
  heldBy: Map<string, number>
}

interface Summary {
  totalBytes: number
  nodeCount: number
  groups: Map<string, Group>
}

/** Parses `[n,n,…]` starting at `from` (the `[`) into numbers. */
function numbers(buf: Buffer, from: number, expected: number): Float64Array {
  const out = new Float64Array(expected)
  let n = 0
  let value = 0
  let inNumber = false
  for (let i = from + 1; i < buf.length; i++) {
    const c = buf[i]!
    if (c >= 48 && c <= 57) {
      value = value * 10 + (c - 48)
      inNumber = true
    } else {
      if (inNumber) out[n++] = value
      value = 0
      inNumber = false
      if (c === 93) break // ]
    }
  }
  if (n !== expected) throw new Error(`expected ${expected} numbers, read ${n}`)
  return out
}

export function summarise(path: string): Summary {
  const buf = readFileSync(path)
  const nodesAt = buf.indexOf('"nodes":[')
  const edgesAt = buf.indexOf('"edges":[', nodesAt)
  const stringsAt = buf.lastIndexOf('"strings":[')
  const header = JSON.parse(buf.subarray(0, nodesAt).toString('utf8').replace(/,\s*$/, '') + '}').snapshot
  const meta = header.meta
  const nodeFields: string[] = meta.node_fields
  const edgeFields: string[] = meta.edge_fields
  const nodeTypes: string[] = meta.node_types[0]
  const edgeTypes: string[] = meta.edge_types[0]
  const NF = nodeFields.length
  const EF = edgeFields.length
  const N: number = header.node_count
  const nodes = numbers(buf, nodesAt + 8, N * NF)
  const edges = numbers(buf, edgesAt + 8, header.edge_count * EF)
  const strings: string[] = JSON.parse(buf.subarray(stringsAt + 10, buf.lastIndexOf(']') + 1).toString('utf8'))
  const [typeAt, nameAt, sizeAt, edgeCountAt] = ['type', 'name', 'self_size', 'edge_count'].map((f) => nodeFields.indexOf(f)) as [number, number, number, number]
  const [edgeTypeAt, edgeToAt] = ['type', 'to_node'].map((f) => edgeFields.indexOf(f)) as [number, number]
  const weak = edgeTypes.indexOf('weak')

  // Each node's first edge; edges are listed node after node.
  const firstEdge = new Uint32Array(N + 1)
  for (let i = 0, e = 0; i < N; i++) {
    firstEdge[i] = e
    e += nodes[i * NF + edgeCountAt]! * EF
  }
  firstEdge[N] = edges.length
  const target = (e: number) => edges[e + edgeToAt]! / NF
  const strong = (e: number) => edges[e + edgeTypeAt] !== weak

  // Depth-first postorder from the root (node 0) over strong edges.
  const UNSEEN = 0xffffffff
  const post = new Uint32Array(N).fill(UNSEEN)
  const order = new Uint32Array(N)
  let reached = 0
  {
    const stack = new Uint32Array(N)
    const nextEdge = new Uint32Array(N)
    const onStack = new Uint8Array(N)
    let top = 0
    stack[top++] = 0
    onStack[0] = 1
    nextEdge[0] = firstEdge[0]!
    while (top > 0) {
      const v = stack[top - 1]!
      let pushed = false
      for (let e = nextEdge[v]!; e < firstEdge[v + 1]!; e += EF) {
        const w = target(e)
        if (!strong(e) || onStack[w]) continue
        nextEdge[v] = e + EF
        onStack[w] = 1
        nextEdge[w] = firstEdge[w]!
        stack[top++] = w
        pushed = true
        break
      }
      if (!pushed) {
        top--
        post[v] = reached
        order[reached++] = v
      }
    }
  }

  // Retainers (reverse strong edges between reached nodes), as offsets into one array.
  const predStart = new Uint32Array(N + 1)
  for (let v = 0; v < N; v++) {
    if (post[v] === UNSEEN) continue
    for (let e = firstEdge[v]!; e < firstEdge[v + 1]!; e += EF) if (strong(e) && post[target(e)] !== UNSEEN) predStart[target(e) + 1]!++
  }
  for (let v = 0; v < N; v++) predStart[v + 1]! += predStart[v]!
  const preds = new Uint32Array(predStart[N]!)
  const fill = predStart.slice(0, N)
  for (let v = 0; v < N; v++) {
    if (post[v] === UNSEEN) continue
    for (let e = firstEdge[v]!; e < firstEdge[v + 1]!; e += EF) if (strong(e) && post[target(e)] !== UNSEEN) preds[fill[target(e)]!++] = v
  }

  // Immediate dominators (Cooper, Harvey and Kennedy), in postorder numbers.
  const idom = new Uint32Array(reached).fill(UNSEEN)
  const root = post[0]!
  idom[root] = root
  for (let changed = true; changed; ) {
    changed = false
    for (let p = reached - 1; p >= 0; p--) {
      if (p === root) continue
      const v = order[p]!
      let best = UNSEEN
      for (let i = predStart[v]!; i < predStart[v + 1]!; i++) {
        let a = post[preds[i]!]!
        if (idom[a] === UNSEEN) continue
        if (best === UNSEEN) {
          best = a
          continue
        }
        let b = best
        while (a !== b) {
          while (a < b) a = idom[a]!
          while (b < a) b = idom[b]!
        }
        best = a
      }
      if (best !== UNSEEN && idom[p] !== best) {
        idom[p] = best
        changed = true
      }
    }
  }

  const groupOf = (v: number) => {
    const type = nodeTypes[nodes[v * NF + typeAt]!]!
    const name = strings[nodes[v * NF + nameAt]!] ?? ''
    if (type === 'object' || type === 'closure' || type === 'native' || type === 'array' || type === 'hidden') return `${type}: ${name.slice(0, 60)}`
    return type
  }
  // A dominator precedes what it dominates in reverse postorder: sum children into parents in postorder.
  const retained = new Float64Array(reached)
  for (let p = 0; p < reached; p++) retained[p]! += nodes[order[p]! * NF + sizeAt]!
  for (let p = 0; p < reached; p++) if (p !== root) retained[idom[p]!]! += retained[p]!

  const groups = new Map<string, Group>()
  for (let p = 0; p < reached; p++) {
    const v = order[p]!
    const key = groupOf(v)
    const g = groups.get(key) ?? { count: 0, selfBytes: 0, retainedBytes: 0, heldBy: new Map() }
    g.count++
    g.selfBytes += nodes[v * NF + sizeAt]!
    const holder = p === root ? '(root)' : groupOf(order[idom[p]!]!)
    if (holder !== key) {
      g.retainedBytes += retained[p]!
      g.heldBy.set(holder, (g.heldBy.get(holder) ?? 0) + 1)
    }
    groups.set(key, g)
  }
  return { totalBytes: retained[root]!, nodeCount: reached, groups }
}

const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(2)
const cell = (s: string) => s.replaceAll('|', '\\|')
const holders = (g: Group) =>
  [...g.heldBy.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 2)
    .map(([k, n]) => `${cell(k)} (${n})`)
    .join(', ')

function print(title: string, s: Summary, top = 25) {
  console.log(`\n${title}: ${mb(s.totalBytes)} MB reachable in ${s.nodeCount} nodes\n`)
  console.log('| kind | count | self MB | retained MB | held mostly by (top-level members) |\n|---|---|---|---|---|')
  // The synthetic roots (GC roots, the global handles) dominate everything: not a kind of object.
  for (const [k, g] of [...s.groups.entries()].filter(([k]) => k !== 'synthetic').sort((a, b) => b[1].retainedBytes - a[1].retainedBytes).slice(0, top)) {
    console.log(`| ${cell(k)} | ${g.count} | ${mb(g.selfBytes)} | ${mb(g.retainedBytes)} | ${holders(g)} |`)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [a, b] = process.argv.slice(2)
  if (!a) throw new Error('usage: heap-summary.ts A.heapsnapshot [B.heapsnapshot]')
  const first = summarise(a)
  print(a, first)
  if (b) {
    const second = summarise(b)
    print(b, second)
    console.log(`\nWhat grew from the first to the second (by own size; count and retained beside it):\n`)
    console.log('| kind | count | self MB | retained MB |\n|---|---|---|---|')
    const empty: Group = { count: 0, selfBytes: 0, retainedBytes: 0, heldBy: new Map() }
    const grown = [...second.groups.entries()].map(([k, g]) => ({ k, g, was: first.groups.get(k) ?? empty })).sort((x, y) => y.g.selfBytes - y.was.selfBytes - (x.g.selfBytes - x.was.selfBytes))
    for (const { k, g, was } of grown.slice(0, 25)) {
      console.log(`| ${cell(k)} | ${was.count} → ${g.count} | ${mb(was.selfBytes)} → ${mb(g.selfBytes)} | ${mb(was.retainedBytes)} → ${mb(g.retainedBytes)} |`)
    }
  }
}
