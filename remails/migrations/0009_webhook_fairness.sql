-- Webhook deliveries: a lease per claim, so only the worker holding it records the attempt;
-- a `dropped` state for what an endpoint disabled for failing will never be sent; and the
-- index the per-endpoint claim reads (the due deliveries of one endpoint, oldest first).
ALTER TABLE webhook_deliveries ADD COLUMN lease_id uuid;

ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_status_check;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'failed', 'dropped'));

CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
