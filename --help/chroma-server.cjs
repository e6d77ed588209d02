'use strict'
/**
 * Runs the Rust Chroma server in this process: `node chroma-server.cjs --path DIR
 * --host HOST --port PORT` is `chroma run` with the same arguments. It blocks this
 * process's main thread until the server stops, so it always runs as a child process
 * of its own (the session agent's, or a test fixture's).
 *
 * Stop it with SIGINT (graceful: the server drains and closes its sqlite database).
 * SIGKILL is the last resort. SIGTERM is deliberately ignored, see below.
 */
const { Worker } = require('node:worker_threads')

// The top-level, pinned binding (1.0.5): chromadb's own nested 1.3.x binding needs a
// newer glibc than Debian 12 or Amazon Linux 2023 have. Resolving from this file
// finds the top-level node_modules, never node_modules/chromadb/node_modules.
const platformPackage =
  process.platform === 'linux'
    ? `chromadb-js-bindings-linux-${process.arch}-gnu`
    : `chromadb-js-bindings-${process.platform}-${process.arch}`
const binding = require(platformPackage)

// The server registers its SIGINT handler through signal-hook, which chains to the
// handler installed before it. Node's default one (SignalExit) re-raises the signal,
// which lands back in signal-hook: the main thread then spins at full CPU forever and
// the server never stops. A JavaScript listener replaces Node's default with libuv's,
// which only queues the signal for an event loop that never runs here.
process.on('SIGINT', () => {})
// The server does not handle SIGTERM at all, so Node's default would kill it
// abruptly. The launcher sends SIGTERM to the agent's whole process group; ignoring
// it here leaves the graceful SIGINT to the agent.
process.on('SIGTERM', () => {})

// If our parent dies without stopping us (SIGKILL), we are re-parented; stop
// gracefully instead of serving an orphaned copy of the snapshot forever. A worker
// thread does the watching because the main thread is blocked in the server.
const watcher = new Worker(
  `const parent = process.ppid
   setInterval(() => {
     if (process.ppid !== parent) {
       console.error('chroma-server: parent process ' + parent + ' is gone; stopping')
       process.kill(process.pid, 'SIGINT')
     }
   }, 500)`,
  { eval: true },
)
watcher.unref()

binding.cli(['chroma', 'run', ...process.argv.slice(2)])
// The server returned: it was stopped, or it gave up (e.g. "Address ... is not
// available", which returns normally). Exit at once rather than wait for the worker.
process.exit(0)
