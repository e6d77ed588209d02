import { collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import type { Database } from '../database/client.ts'
import type { Clock } from './clock.ts'

/**
 * Prometheus metrics. Labels are bounded (statuses, routes, outcomes): never a session
 * or lease id. Gauges of database state are read at scrape time, so every replica
 * reports the same cluster-wide numbers.
 */
export class Metrics {
  readonly registry = new Registry()
  readonly httpDuration = new Histogram({
    name: 'chroma_lease_http_request_duration_seconds',
    help: 'HTTP request latency by route and status class',
    labelNames: ['method', 'route', 'status_class'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  })

  constructor(db: Database, clock: Clock) {
    collectDefaultMetrics({ register: this.registry, prefix: 'chroma_lease_' })
    new Gauge({
      name: 'chroma_lease_sessions',
      help: 'Sessions by status',
      labelNames: ['status'] as const,
      registers: [this.registry],
      async collect() {
        const rows = await db.session.groupBy({ by: ['status'], _count: { _all: true }, where: { status: { notIn: ['STOPPED'] } } })
        this.reset()
        for (const r of rows) this.set({ status: r.status }, r._count._all)
      },
    })
    new Gauge({
      name: 'chroma_lease_live_leases',
      help: 'Leases that are active and unexpired',
      registers: [this.registry],
      async collect() {
        this.set(await db.lease.count({ where: { endedAt: null, expiresAt: { gt: clock.now() } } }))
      },
    })
  }
}
