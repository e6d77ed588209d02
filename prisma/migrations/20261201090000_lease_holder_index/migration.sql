-- GET /v1/costs?holder=<execution ARN> (cost per workflow) finds one workflow's leases
-- without reading every lease ever written. One index only: every acquire pays for it.
CREATE INDEX "leases_holder_idx" ON "leases"("holder");
