-- Notifications mailed from the system project, an append-only audit log, domain status from
-- the periodic DNS re-check, daily statistics that outlive the message rows, and the indexes
-- every retention purge reads by.

-- Organizations: where notifications go; new organizations start on the free plan (the
-- setting REMAILS_DEFAULT_MONTHLY_QUOTA is passed explicitly; this is the fallback).
ALTER TABLE organizations ADD COLUMN notification_email text
    CHECK (notification_email IS NULL OR length(notification_email) BETWEEN 3 AND 254);
ALTER TABLE organizations ALTER COLUMN monthly_quota SET DEFAULT 3000;
ALTER TABLE organizations ADD COLUMN block_reason text CHECK (length(block_reason) <= 500);

-- Notifications: details for the reader, a once-key (one quota.warning per month: the month),
-- and the mail outbox state — pending until the notify function mails it or decides not to.
ALTER TABLE notifications ADD COLUMN details jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE notifications ADD COLUMN once_key text;
ALTER TABLE notifications ADD COLUMN mail_status text NOT NULL DEFAULT 'pending'
    CHECK (mail_status IN ('pending', 'sent', 'not_sent'));
ALTER TABLE notifications ADD COLUMN mail_message_id uuid;
ALTER TABLE notifications ADD COLUMN mailed_at timestamptz;
UPDATE notifications SET mail_status = 'not_sent';  -- written before mail existed: not mailed now
UPDATE notifications SET kind = 'webhook.disabled' WHERE kind = 'webhook_endpoint_disabled';
CREATE UNIQUE INDEX notifications_once ON notifications (organization_id, kind, once_key)
    WHERE once_key IS NOT NULL;
CREATE INDEX notifications_to_mail ON notifications (created_at) WHERE mail_status = 'pending';

-- Domains: pending (never verified), verified, invalid (verified once, records no longer
-- match at the last re-check). Ownership (verified_at) is kept while invalid.
ALTER TABLE domains ADD COLUMN status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'verified', 'invalid'));
UPDATE domains SET status = 'verified' WHERE verified_at IS NOT NULL;
CREATE INDEX domains_recheck_due ON domains (last_checked_at NULLS FIRST) WHERE verified_at IS NOT NULL;

-- The audit log. No foreign keys: an entry outlives what it names.
CREATE TABLE audit_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid,                 -- NULL: an operator action on no one organization
    at               timestamptz NOT NULL DEFAULT now(),
    actor_kind       text NOT NULL CHECK (actor_kind IN ('api_key', 'user', 'operator')),
    actor_id         text,                 -- the API key's or user's id; the operator: its key or NULL (CLI)
    client_ip        inet,
    action           text NOT NULL CHECK (length(action) BETWEEN 3 AND 100),
    target           text,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_organization ON audit_log (organization_id, id DESC);
CREATE INDEX audit_log_at ON audit_log (at);

-- Append-only, enforced here: UPDATE, DELETE and TRUNCATE fail, except the retention purge
-- (purge_audit_log), which may delete only entries older than the retention it is given.
CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    purge_days text := current_setting('remails.audit_purge_days', true);
BEGIN
    IF TG_OP = 'DELETE' AND COALESCE(purge_days, '') <> ''
       AND OLD.at < now() - make_interval(days => purge_days::integer) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

CREATE FUNCTION purge_audit_log(p_days integer, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    removed integer;
BEGIN
    IF p_days < 1 THEN
        RAISE EXCEPTION 'audit retention must be at least one day';
    END IF;
    PERFORM set_config('remails.audit_purge_days', p_days::text, true);
    DELETE FROM audit_log WHERE id IN (
        SELECT id FROM audit_log WHERE at < now() - make_interval(days => p_days)
         ORDER BY at LIMIT p_limit FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('remails.audit_purge_days', '', true);
    RETURN removed;
END
$$;

-- Statistics of purged messages: per organization, project, UTC day (of acceptance) and
-- final status, added to by the purge in the statement that deletes the rows.
CREATE TABLE message_daily_stats (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id       uuid NOT NULL,
    day              date NOT NULL,
    status           text NOT NULL,
    count            bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (organization_id, day, status, project_id)
);

-- Retention purges: each reads the rows past retention through an index, oldest first.
CREATE INDEX messages_finished ON messages (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (created_at) WHERE status <> 'pending';
