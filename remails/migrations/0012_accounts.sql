-- People who use the dashboard: users, their memberships (the same roles as API keys),
-- sessions, sign-in failures (throttling), recovery codes and invitations; and a planner
-- statistic for the statistics page.

CREATE TABLE users (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash       text NOT NULL,               -- Argon2id, PHC string
    operator            boolean NOT NULL DEFAULT false,
    totp_sealed         bytea,                       -- two-factor secret under the master key
    totp_pending_sealed bytea,                       -- being set up, not yet confirmed
    totp_last_step      bigint,                      -- a code is accepted once
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email ON users (lower(email));

CREATE TABLE memberships (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role             api_role NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE user_sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_sha256    bytea NOT NULL UNIQUE,
    second_factor   boolean NOT NULL,                -- false: the password was right, a code is due
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);
CREATE INDEX user_sessions_expires ON user_sessions (expires_at);

CREATE TABLE login_failures (
    email      text NOT NULL,                        -- lower-cased, as typed (may be no user)
    client     text NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);
CREATE INDEX login_failures_client ON login_failures (client, failed_at);
CREATE INDEX login_failures_failed ON login_failures (failed_at);

CREATE TABLE recovery_codes (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_sha256  bytea NOT NULL,
    used_at      timestamptz,
    PRIMARY KEY (user_id, code_sha256)
);

CREATE TABLE invitations (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email            text NOT NULL,
    role             api_role NOT NULL,
    token_sha256     bytea NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    accepted_at      timestamptz
);
CREATE INDEX invitations_organization ON invitations (organization_id);

-- The dashboard's statistics group a month of messages by UTC day and status: tell the planner
-- how few groups that is, so it hashes them instead of sorting every row.
CREATE STATISTICS messages_day_status (ndistinct)
    ON ((created_at AT TIME ZONE 'UTC')::date), status FROM messages;

-- Statistics of closed days, counted once: per organization, UTC day of creation and status.
-- A day is counted only once it is over (before today, UTC), and forgotten again when one of
-- its messages changes status or is deleted (a retry, a late bounce, a deleted project), so
-- the counts always equal a fresh count. Messages are inserted with created_at = now(), so
-- an insert never lands in a counted day. The advisory lock pairs a forget with a count.
CREATE TABLE message_day_counts (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    day              date NOT NULL,
    status           message_status NOT NULL,
    count            bigint NOT NULL,
    PRIMARY KEY (organization_id, day, status)
);
CREATE TABLE message_days_counted (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    day              date NOT NULL,
    PRIMARY KEY (organization_id, day)
);

CREATE FUNCTION forget_counted_day() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    d date := (OLD.created_at AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(OLD.organization_id::text || d::text, 0));
    DELETE FROM message_days_counted WHERE organization_id = OLD.organization_id AND day = d;
    DELETE FROM message_day_counts WHERE organization_id = OLD.organization_id AND day = d;
    RETURN NULL;
END
$$;

-- The hot path (today's messages) only evaluates the WHEN clause.
CREATE TRIGGER messages_status_forgets_counted_day
    AFTER UPDATE OF status ON messages FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND OLD.created_at < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
    EXECUTE FUNCTION forget_counted_day();

-- Deletes come in batches (a project, the retention purge): once per statement and day.
CREATE FUNCTION forget_counted_days_of_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    gone record;
BEGIN
    FOR gone IN
        SELECT DISTINCT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day FROM deleted
         WHERE created_at < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         ORDER BY 1, 2
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(gone.organization_id::text || gone.day::text, 0));
        DELETE FROM message_days_counted WHERE organization_id = gone.organization_id AND day = gone.day;
        DELETE FROM message_day_counts WHERE organization_id = gone.organization_id AND day = gone.day;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_delete_forgets_counted_days
    AFTER DELETE ON messages REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT
    EXECUTE FUNCTION forget_counted_days_of_deleted();

-- Password reset by e-mail (when system mail is on): a link with a one-time token.
CREATE TABLE password_resets (
    token_sha256  bytea PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id, created_at);
