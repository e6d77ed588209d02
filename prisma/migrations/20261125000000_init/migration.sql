-- CreateEnum
CREATE TYPE "SessionStatus" AS ENUM ('PENDING', 'STARTING', 'READY', 'DRAINING', 'STOPPING', 'STOPPED', 'FAILED');

-- CreateEnum
CREATE TYPE "SessionMode" AS ENUM ('shared', 'exclusive');

-- CreateEnum
CREATE TYPE "ApiKeyRole" AS ENUM ('client', 'operator');

-- CreateTable
CREATE TABLE "sessions" (
    "id" UUID NOT NULL,
    "mode" "SessionMode" NOT NULL,
    "pool_key" TEXT,
    "snapshot" TEXT NOT NULL,
    "collection" TEXT,
    "status" "SessionStatus" NOT NULL DEFAULT 'PENDING',
    "generation" INTEGER NOT NULL DEFAULT 1,
    "launcher" TEXT NOT NULL,
    "launch_ref" TEXT,
    "host" TEXT,
    "port" INTEGER,
    "error" TEXT,
    "stop_reason" TEXT,
    "idle_ttl_seconds" INTEGER NOT NULL,
    "created_by" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    "updated_at" TIMESTAMPTZ(3) NOT NULL,
    "launched_at" TIMESTAMPTZ(3),
    "ready_at" TIMESTAMPTZ(3),
    "draining_at" TIMESTAMPTZ(3),
    "stopping_at" TIMESTAMPTZ(3),
    "ended_at" TIMESTAMPTZ(3),

    CONSTRAINT "sessions_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "leases" (
    "id" UUID NOT NULL,
    "session_id" UUID NOT NULL,
    "token_hash" TEXT NOT NULL,
    "holder" TEXT,
    "principal" TEXT NOT NULL,
    "idempotency_key" TEXT,
    "request_hash" TEXT NOT NULL,
    "ttl_seconds" INTEGER NOT NULL,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    "ended_at" TIMESTAMPTZ(3),
    "end_reason" TEXT,

    CONSTRAINT "leases_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "session_events" (
    "id" BIGSERIAL NOT NULL,
    "session_id" UUID NOT NULL,
    "at" TIMESTAMPTZ(3) NOT NULL,
    "type" TEXT NOT NULL,
    "status" "SessionStatus",
    "reason" TEXT,
    "lease_id" UUID,
    "detail" JSONB,

    CONSTRAINT "session_events_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "api_keys" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "role" "ApiKeyRole" NOT NULL,
    "key_hash" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    "revoked_at" TIMESTAMPTZ(3),

    CONSTRAINT "api_keys_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "settings" (
    "key" TEXT NOT NULL,
    "value" TEXT NOT NULL,

    CONSTRAINT "settings_pkey" PRIMARY KEY ("key")
);

-- CreateIndex
CREATE INDEX "sessions_status_idx" ON "sessions"("status");

-- CreateIndex
CREATE UNIQUE INDEX "leases_token_hash_key" ON "leases"("token_hash");

-- CreateIndex
CREATE INDEX "leases_session_id_idx" ON "leases"("session_id");

-- CreateIndex
CREATE UNIQUE INDEX "leases_principal_idempotency_key_key" ON "leases"("principal", "idempotency_key");

-- CreateIndex
CREATE INDEX "session_events_session_id_id_idx" ON "session_events"("session_id", "id");

-- CreateIndex
CREATE UNIQUE INDEX "api_keys_key_hash_key" ON "api_keys"("key_hash");

-- AddForeignKey
ALTER TABLE "leases" ADD CONSTRAINT "leases_session_id_fkey" FOREIGN KEY ("session_id") REFERENCES "sessions"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "session_events" ADD CONSTRAINT "session_events_session_id_fkey" FOREIGN KEY ("session_id") REFERENCES "sessions"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- Invariant 2, enforced by the database: at most one shared session per pool key is
-- PENDING, STARTING or READY. Prisma's schema language cannot express a partial index.
CREATE UNIQUE INDEX "sessions_one_live_per_pool" ON "sessions"("pool_key")
    WHERE "status" IN ('PENDING', 'STARTING', 'READY');

-- Live leases per session: what acquire, the reaper and every lease count read.
CREATE INDEX "leases_live_by_session" ON "leases"("session_id", "expires_at")
    WHERE "ended_at" IS NULL;

-- Every replica LISTENs on "chroma_lease" to wake long-polls and drop cached proxy
-- routes the moment a session changes status or a lease ends, whichever replica
-- (or operator's SQL) made the change. Sent at commit, so never for a rollback.
CREATE FUNCTION "chroma_lease_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'sessions' THEN
        PERFORM pg_notify('chroma_lease', json_build_object('session', NEW."id", 'status', NEW."status")::text);
    ELSE
        PERFORM pg_notify('chroma_lease', json_build_object('lease', NEW."id", 'session', NEW."session_id")::text);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER "sessions_notify_status" AFTER UPDATE OF "status" ON "sessions"
    FOR EACH ROW WHEN (OLD."status" IS DISTINCT FROM NEW."status")
    EXECUTE FUNCTION "chroma_lease_notify"();

CREATE TRIGGER "leases_notify_ended" AFTER UPDATE OF "ended_at" ON "leases"
    FOR EACH ROW WHEN (OLD."ended_at" IS NULL AND NEW."ended_at" IS NOT NULL)
    EXECUTE FUNCTION "chroma_lease_notify"();
