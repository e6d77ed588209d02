// Writes openapi.yaml from the route schemas, and the client package's types from it
// (`npm run openapi`). test/openapi.test.ts fails when the committed file and the routes
// drift apart; test/client-package.test.ts when the types and the file do.
import { writeFile } from 'node:fs/promises'
import { buildApp } from '../src/app.ts'
import { openapiYaml } from './openapi-yaml.ts'
import { writeClientTypes } from './client-types.ts'
import { noChanges } from '../src/database/change-feed.ts'
import { openDatabase } from '../src/database/client.ts'
import { systemClock } from '../src/services/clock.ts'
import { createServices } from '../src/services/index.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { PreflightService } from '../src/services/preflight.ts'

// The spec needs the routes, not a database: this client never connects.
const { db, sql } = openDatabase('postgresql://openapi@127.0.0.1:1/none')
const services = createServices({
  db,
  sql,
  clock: systemClock,
  changes: noChanges,
  tokenSecret: Buffer.alloc(32),
  snapshotRoot: '/nonexistent',
  limits: { leaseTtlSeconds: 300, maxLeaseTtlSeconds: 86400, idleTtlSeconds: 300, maxIdleTtlSeconds: 3600, launcher: 'process' },
})
const preflight = new PreflightService(new ProcessLauncher({ rootDir: '/nonexistent' }))
const app = await buildApp({ db, clock: systemClock, services, preflight })
await app.ready()
await writeFile(new URL('../openapi.yaml', import.meta.url), openapiYaml(app.swagger()))
await app.close()
// The client package's types follow the spec (packages/client/src/openapi.ts).
await writeClientTypes()
console.log('wrote openapi.yaml and packages/client/src/openapi.ts')
