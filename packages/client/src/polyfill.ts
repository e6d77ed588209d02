// Node 20.4+ has Symbol.asyncDispose; an older runtime gets the well-known name that
// TypeScript's and esbuild's `await using` lowering look up, so Lease stays disposable there.
;(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for('Symbol.asyncDispose')
export {}
