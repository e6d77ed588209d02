import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { query, type Settings } from '../deploy/examples/lambda-query/handler.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'
import { buildTestApp } from './helpers/app.ts'

// The example client of deploy/examples/lambda-query, run against the real control
// plane: the official chromadb client, pointed at the control plane's host and port
// with a lease token as x-chroma-token, queries a real session through the proxy.

const CLIENT_KEY = 'clk_example-lambda-key'
const root = await mkdtemp(join(tmpdir(), 'example-client-'))
const fixture = await buildSnapshotFixture(join(root, 'receipts'))
const cp = await buildTestApp(t, { listen: true, snapshotRoot: root, apiKeys: [{ role: 'client', key: CLIENT_KEY }] })
cp.workers.start()
t.teardown(() => cp.workers.stop())

const settings: Settings = { url: cp.url.replace(/\/$/, ''), apiKey: CLIENT_KEY }
const snapshot = `file://${fixture.tarPath}`
const leases = async () => (await cp.app.inject({ method: 'GET', url: '/v1/leases', headers: { 'x-api-key': CLIENT_KEY } })).json().leases as Array<{ id: string; status: string }>

t.test('takes a lease, queries through the proxy with the chromadb client, releases', async (t) => {
  const results = await query({ snapshot, collection: fixture.collection, queryEmbeddings: [fixture.vector(5), fixture.vector(9)], nResults: 3, where: { n: { $gte: 0 } } }, settings)
  t.equal(results.length, 2)
  t.equal(results[0]![0]!.id, 'r-5')
  t.equal(results[1]![0]!.id, 'r-9')
  t.match(results[0]![0]!.document, /^receipt 5:/)
  t.same(results[0]![0]!.metadata, { n: 5 })
  t.ok((await leases()).every((l) => l.status === 'released'), 'its lease is given back')
})

t.test('uses a lease the workflow already holds, and leaves it to the workflow', async (t) => {
  const res = await cp.app.inject({
    method: 'POST',
    url: '/v1/leases',
    headers: { 'x-api-key': CLIENT_KEY },
    payload: { snapshot, collection: fixture.collection, waitSeconds: 50 },
  })
  const lease = res.json()
  t.equal(lease.session.status, 'READY')
  const results = await query({ collection: fixture.collection, queryEmbeddings: [fixture.vector(12)], nResults: 1, lease: { token: lease.token } }, { url: settings.url })
  t.equal(results[0]![0]!.id, 'r-12')
  const after = (await leases()).find((l) => l.id === lease.id)
  t.equal(after?.status, 'active', "the workflow's lease is not released by the client")
})

t.test('a bad token is refused by the proxy', async (t) => {
  await t.rejects(query({ collection: fixture.collection, queryEmbeddings: [fixture.vector(1)], lease: { token: 'clt_not-a-real-token' } }, { url: settings.url }))
})
