-- An index for every predicate the sweep and the retention purge look rows up by, so a tick
-- costs the rows it touches, not a scan of the whole message log.
CREATE INDEX messages_deferred_due ON messages (next_attempt_at) WHERE status = 'deferred';
CREATE INDEX messages_unfinished_expiry ON messages (expires_at)
    WHERE status NOT IN ('delivered', 'bounced', 'failed', 'rejected');
CREATE INDEX messages_sending_lease ON messages (lease_until) WHERE status = 'sending';
CREATE INDEX messages_held ON messages (created_at) WHERE status = 'held';
CREATE INDEX messages_finished_with_body ON messages (finished_at)
    WHERE finished_at IS NOT NULL AND octet_length(raw) > 0;
