-- Warm pool hints (src/services/warm-pool-hints.ts): a workflow about to fan out says how
-- many acquires are coming, and the pool adds that many agents to its target until the hint
-- expires or as many warm claims have come since. `key_id`: the API key that made it (the
-- principal's id; 'anonymous' with no key configured), which may end it early, as may an
-- operator. Expired rows are deleted by the warm pool pass a day later.
CREATE TABLE "warm_pool_hints" (
    "id" UUID NOT NULL,
    "count" INTEGER NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,
    "key_id" TEXT NOT NULL,
    CONSTRAINT "warm_pool_hints_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "warm_pool_hints_expires_at_idx" ON "warm_pool_hints" ("expires_at");

-- A hint is used up by the warm claims since it was made: counted by claimed_at.
CREATE INDEX "sessions_claimed_at" ON "sessions" ("claimed_at") WHERE "claimed_at" IS NOT NULL;
