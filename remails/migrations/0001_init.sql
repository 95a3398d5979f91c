-- The first schema: tenants, their domains and secrets, messages with recipients and attempts,
-- suppressions, and the egress side (IP pools, outbound IPs, sender nodes).

CREATE TYPE api_role AS ENUM ('read_only', 'maintainer', 'admin');
CREATE TYPE block_status AS ENUM ('not_blocked', 'no_sending', 'full_freeze');
CREATE TYPE message_status AS ENUM (
    'received', 'validated', 'admitted', 'routed', 'sending',
    'deferred', 'delivered', 'bounced', 'failed', 'held', 'rejected'
);
CREATE TYPE recipient_status AS ENUM (
    'pending', 'suppressed', 'delivered', 'deferred', 'bounced', 'failed'
);

CREATE TABLE ip_pools (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sender_nodes (
    name          text PRIMARY KEY,
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per egress source. pool_id NULL means the shared pool.
CREATE TABLE outbound_ips (
    ip          inet PRIMARY KEY,
    pool_id     uuid REFERENCES ip_pools (id) ON DELETE SET NULL,
    node_name   text REFERENCES sender_nodes (name) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE organizations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    monthly_quota       integer NOT NULL DEFAULT 10000 CHECK (monthly_quota >= 0),
    quota_used          integer NOT NULL DEFAULT 0 CHECK (quota_used >= 0),
    quota_period_start  date NOT NULL DEFAULT date_trunc('month', now())::date,
    block_status        block_status NOT NULL DEFAULT 'not_blocked',
    ip_pool_id          uuid REFERENCES ip_pools (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    retention_days   integer NOT NULL DEFAULT 30 CHECK (retention_days BETWEEN 1 AND 3650),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);

CREATE TABLE domains (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name                 text NOT NULL UNIQUE CHECK (name = lower(name)),
    dkim_selector        text NOT NULL,
    dkim_private_sealed  bytea NOT NULL,  -- AES-256-GCM under the master key
    dkim_public_key      text NOT NULL,   -- base64 SubjectPublicKeyInfo (the p= tag)
    verified_at          timestamptz,     -- NULL: not verified
    verification         jsonb,           -- the last check's result per record
    last_checked_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE domain_projects (
    domain_id   uuid NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (domain_id, project_id)
);
CREATE INDEX domain_projects_project ON domain_projects (project_id);

CREATE TABLE smtp_credentials (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id     uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    username       text NOT NULL UNIQUE,
    secret_sha256  bytea NOT NULL,
    description    text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid REFERENCES organizations (id) ON DELETE CASCADE,  -- NULL: super-admin
    project_id       uuid REFERENCES projects (id) ON DELETE CASCADE,
    role             api_role NOT NULL,
    secret_sha256    bytea NOT NULL,
    description      text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz
);

CREATE TABLE messages (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id          uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    smtp_credential_id  uuid REFERENCES smtp_credentials (id) ON DELETE SET NULL,
    api_key_id          uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    mail_from           text NOT NULL,
    size                integer NOT NULL,
    raw                 bytea NOT NULL,
    message_id_header   text NOT NULL,
    status              message_status NOT NULL DEFAULT 'received',
    reason              text,
    outbound_ip         inet,
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz,
    expires_at          timestamptz NOT NULL,
    lease_owner         text,
    lease_until         timestamptz,
    label               text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE INDEX messages_org_created ON messages (organization_id, created_at DESC);
CREATE INDEX messages_project_created ON messages (project_id, created_at DESC);
-- The sweeper's view: everything not yet final, by when it last moved.
CREATE INDEX messages_unfinished ON messages (status, updated_at)
    WHERE status NOT IN ('delivered', 'bounced', 'failed', 'rejected');

CREATE TABLE recipients (
    id             bigserial PRIMARY KEY,
    message_id     uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    address        text NOT NULL,
    domain         text NOT NULL,
    status         recipient_status NOT NULL DEFAULT 'pending',
    last_code      integer,
    last_enhanced  text,
    last_text      text,
    attempts       integer NOT NULL DEFAULT 0,
    delivered_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, address)
);
CREATE INDEX recipients_address ON recipients (lower(address));

CREATE TABLE attempts (
    id           bigserial PRIMARY KEY,
    message_id   uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    domain       text NOT NULL,
    recipients   text[] NOT NULL,
    mx_host      text,
    source_ip    inet,
    tls_version  text,
    code         integer,
    enhanced     text,
    text         text,
    duration_ms  integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attempts_message ON attempts (message_id, started_at);

CREATE TABLE suppressions (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    address          text NOT NULL CHECK (address = lower(address)),
    reason           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, address)
);
