-- The warm pool claim's candidates: READY warm agents of one launcher, oldest ready first.
-- A migration of its own: an enum value cannot be used in the transaction that adds it.
CREATE INDEX "sessions_warm_ready" ON "sessions" ("launcher", "ready_at") WHERE "mode" = 'warm' AND "status" = 'READY';
