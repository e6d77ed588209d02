-- The session image (issue 4).
-- progress: what the session's agent last reported while restoring or saving
--   ({phase, bytes, totalBytes, percent}); shown on the lease and session as "restoring 45%".
-- save_on_release: an exclusive session acquired with saveOnRelease saves its directory
--   back as a new snapshot version once its lease ends, then stops.
-- saved_snapshot / saved_at: the newest version this session saved (s3:// URI), and when.
ALTER TABLE "sessions" ADD COLUMN "progress" JSONB;
ALTER TABLE "sessions" ADD COLUMN "save_on_release" BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE "sessions" ADD COLUMN "saved_snapshot" TEXT;
ALTER TABLE "sessions" ADD COLUMN "saved_at" TIMESTAMPTZ(3);
