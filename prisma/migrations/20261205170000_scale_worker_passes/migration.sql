-- Fleet-wide worker passes (src/database/worker-pass-claim.ts): every replica runs the
-- reconciler and the orphan sweep on its own timer, but each pass describes every task in
-- ECS, so one pass per interval for the whole fleet is enough. A replica runs a pass only
-- once it has claimed it here: `next_at` is when the next pass is due (database time),
-- `running_until` bounds a claimed pass whose replica died before finishing it.
CREATE TABLE "worker_passes" (
    "name" TEXT NOT NULL,
    "next_at" TIMESTAMPTZ(3) NOT NULL,
    "running_until" TIMESTAMPTZ(3),
    "replica" TEXT NOT NULL,
    CONSTRAINT "worker_passes_pkey" PRIMARY KEY ("name")
);
