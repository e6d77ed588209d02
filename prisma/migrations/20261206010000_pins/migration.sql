-- Pinned snapshots (src/services/pins.ts): an operator keeps sessions of a snapshot restored
-- and READY with no lease. A shared pin keeps the snapshot's shared session (the reaper does
-- not idle-stop it); an exclusive pin keeps `sessions` standby sessions, which an exclusive
-- acquire takes in one statement. `pin_id` on a session: the pin it was started for (kept
-- after an acquire took it, for its history; `claimed_at` says when).
CREATE TABLE "pins" (
    "id" UUID NOT NULL,
    "snapshot" TEXT NOT NULL,
    "collection" TEXT,
    "mode" "SessionMode" NOT NULL,
    "sessions" INTEGER NOT NULL,
    "created_by" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    CONSTRAINT "pins_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "pins_one_per_target" ON "pins" ("snapshot", (coalesce("collection", '')), "mode");

ALTER TABLE "sessions" ADD COLUMN "pin_id" UUID;
CREATE INDEX "sessions_pin_standby" ON "sessions" ("pin_id") WHERE "pin_id" IS NOT NULL AND "claimed_at" IS NULL;
