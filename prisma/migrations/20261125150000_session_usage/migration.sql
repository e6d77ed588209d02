-- Session usage (issue 6): what the session agent last reported with its dead man's
-- switch confirmation (about once a minute): resident memory of the agent and Chroma
-- together, the CPU cores they kept busy on average since the previous report, and when.
-- Null until the first confirmation. No trigger fires on these: nothing waits on them.
ALTER TABLE "sessions" ADD COLUMN "memory_bytes" BIGINT;
ALTER TABLE "sessions" ADD COLUMN "cpu_cores" DOUBLE PRECISION;
ALTER TABLE "sessions" ADD COLUMN "usage_at" TIMESTAMPTZ(3);
