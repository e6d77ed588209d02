-- Token buckets every replica shares (src/database/shared-token-bucket.ts): ECS's RunTask
-- rate applies to the account, not to one control plane process, so N replicas must not
-- send N times the rate. `tokens` is what was left at `updated_at` (database time).
CREATE TABLE "rate_buckets" (
    "name" TEXT NOT NULL,
    "tokens" DOUBLE PRECISION NOT NULL,
    "updated_at" TIMESTAMPTZ(3) NOT NULL,
    CONSTRAINT "rate_buckets_pkey" PRIMARY KEY ("name")
);
