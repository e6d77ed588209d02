-- One shared session per snapshot: the pool key was snapshot + "#" + collection, so an
-- acquire naming no collection (or another one) started a second Chroma server for a
-- snapshot one already served. A session serves every collection of its snapshot; the
-- pool key is now the snapshot's canonical URI alone (the old key without its
-- "#collection" tail: the session's snapshot column may hold a pinned S3 version),
-- which also cannot collide.
--
-- Where one snapshot has several live shared sessions, the one most able to serve
-- (READY first, then the oldest) takes the new key; the others keep their old key, serve
-- their leases out and stop when idle, as before. Ended sessions take the new key too.
UPDATE "sessions" s SET "pool_key" = left(s."pool_key", length(s."pool_key") - length(coalesce(s."collection", '')) - 1)
WHERE s."pool_key" IS NOT NULL
  AND (
    s."status" NOT IN ('PENDING', 'STARTING', 'READY')
    OR s."id" = (
      SELECT t."id" FROM "sessions" t
      WHERE t."pool_key" IS NOT NULL AND t."status" IN ('PENDING', 'STARTING', 'READY')
        AND left(t."pool_key", length(t."pool_key") - length(coalesce(t."collection", '')) - 1)
          = left(s."pool_key", length(s."pool_key") - length(coalesce(s."collection", '')) - 1)
      ORDER BY (t."status" = 'READY') DESC, t."created_at", t."id"
      LIMIT 1
    )
  );

-- A shared session no longer belongs to one collection: the acquire checks the one it names.
UPDATE "sessions" SET "collection" = NULL WHERE "mode" = 'shared' AND "status" IN ('PENDING', 'STARTING', 'READY', 'DRAINING');
