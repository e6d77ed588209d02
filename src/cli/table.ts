/** Plain-text tables for the CLI: left-aligned columns two spaces apart, a header row, no borders. */
export function formatTable(headers: string[], rows: string[][]): string {
  if (rows.length === 0) return '(none)\n'
  const clean = rows.map((r) => r.map((cell) => cell.replace(/\s+/g, ' ')))
  const widths = headers.map((h, i) => Math.max(h.length, ...clean.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd()
  return [line(headers), ...clean.map(line)].join('\n') + '\n'
}

/** `text` cut to `max` characters with an ellipsis, keeping its end (`start`: the start is dropped) or its start. */
export function shorten(text: string, max: number, drop: 'start' | 'end' = 'end'): string {
  if (text.length <= max) return text
  return drop === 'start' ? `…${text.slice(text.length - max + 1)}` : `${text.slice(0, max - 1)}…`
}

/**
 * `text` cut to `max` characters in its middle: a URI keeps its scheme and bucket or root
 * on the left and its file name on the right (s3://bucket/rec…/2026-11-02.tar.gz).
 */
export function shortenMiddle(text: string, max: number): string {
  if (text.length <= max) return text
  const right = Math.floor((max - 1) / 2)
  return `${text.slice(0, max - 1 - right)}…${text.slice(text.length - right)}`
}

/** How long ago an ISO time was, in its largest unit: 42s, 5m, 3h, 2d. */
export function age(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000))
  if (seconds < 120) return `${seconds}s`
  if (seconds < 120 * 60) return `${Math.floor(seconds / 60)}m`
  if (seconds < 48 * 3600) return `${Math.floor(seconds / 3600)}h`
  return `${Math.floor(seconds / 86400)}d`
}

/** A JSON value on one line without quotes around keys, for table cells; empty for null. */
export function compactJson(value: unknown): string {
  if (value === null || value === undefined) return ''
  return JSON.stringify(value).replace(/"([A-Za-z_][A-Za-z0-9_]*)":/g, '$1:')
}
