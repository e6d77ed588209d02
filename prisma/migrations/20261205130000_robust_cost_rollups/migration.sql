-- What GET /v1/costs reports for leases the retention worker purged (src/workers/retention.ts):
-- their shares of their sessions' costs, summed per UTC day of acquisition, principal and
-- holder. Rows are only ever added (one per group per purge batch); the report sums them
-- with the live leases. session_ids keeps the sessions distinct across rows and days.
CREATE TABLE "cost_rollups" (
    "id" BIGSERIAL NOT NULL,
    "day" DATE NOT NULL,
    "principal" TEXT NOT NULL,
    "holder" TEXT,
    "leases" INTEGER NOT NULL,
    "session_ids" UUID[],
    "usd" DOUBLE PRECISION,
    "unpriced" INTEGER NOT NULL,
    "first_lease_at" TIMESTAMPTZ(3) NOT NULL,
    "last_lease_at" TIMESTAMPTZ(3) NOT NULL,
    CONSTRAINT "cost_rollups_pkey" PRIMARY KEY ("id")
);

CREATE INDEX "cost_rollups_holder_idx" ON "cost_rollups"("holder");
