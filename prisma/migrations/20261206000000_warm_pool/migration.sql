-- The warm pool (src/services/warm-pool.ts): agents launched before anyone asks, with no
-- snapshot yet. A warm agent is a sessions row of mode 'warm' (snapshot '' until claimed),
-- so the reconciler, the agent confirmer (dead man's switch) and the orphan sweep treat it
-- like any session. An acquire claims a READY warm agent in one fenced statement, which
-- sets its mode, snapshot and pool key and records `claimed_at`: what it cost before that
-- moment is the pool's idle time, not the session's.
ALTER TYPE "SessionMode" ADD VALUE IF NOT EXISTS 'warm';

ALTER TABLE "sessions" ADD COLUMN "claimed_at" TIMESTAMPTZ(3);
