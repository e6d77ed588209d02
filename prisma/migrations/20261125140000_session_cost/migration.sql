-- Session cost (issue 3 item 7).
-- cpu_units / memory_mib / cpu_architecture / capacity_provider: what the session's compute
--   runs on, as its launcher reported it when it first saw it running (a Fargate task's
--   CPU units, 1024 = 1 vCPU, its memory in MiB, x86_64 or arm64, FARGATE or FARGATE_SPOT).
--   Its cost is computed from these and its run time (launched_at to ended_at) at the
--   configured prices. Null for launchers that report no size (local processes).
ALTER TABLE "sessions" ADD COLUMN "cpu_units" INTEGER;
ALTER TABLE "sessions" ADD COLUMN "memory_mib" INTEGER;
ALTER TABLE "sessions" ADD COLUMN "cpu_architecture" TEXT;
ALTER TABLE "sessions" ADD COLUMN "capacity_provider" TEXT;
