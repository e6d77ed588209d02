-- When the launcher first reported the session's compute running (for the process
-- launcher: the agent has restored the snapshot and started Chroma). Splits the time
-- to READY into phases (README, Metrics). A value older than launched_at belongs to an
-- earlier launch attempt and counts as unset.
ALTER TABLE "sessions" ADD COLUMN "running_at" TIMESTAMPTZ(3);
