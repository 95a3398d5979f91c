-- Receiving: mail that comes back to the inbound MX (bounces after acceptance, complaints,
-- DMARC aggregate reports), kept as it came; the return path of each domain; the reports.
ALTER TYPE recipient_status ADD VALUE IF NOT EXISTS 'complained';

-- NULL: the return-path subdomain (rp.<domain>: MX to us, SPF with our IPs) is not verified,
-- and messages keep their own envelope sender.
ALTER TABLE domains ADD COLUMN IF NOT EXISTS return_path_verified_at timestamptz;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS return_path_verification jsonb;

-- One row per message the inbound MX answered 250, written before that 250.
CREATE TABLE inbound_messages (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind             text NOT NULL CHECK (kind IN ('bounce', 'report', 'feedback', 'postmaster')),
    rcpt             text NOT NULL,
    mail_from        text NOT NULL,
    client_ip        inet,
    organization_id  uuid REFERENCES organizations (id) ON DELETE CASCADE,  -- when the address names one
    message_id       uuid REFERENCES messages (id) ON DELETE SET NULL,
    recipient_id     bigint REFERENCES recipients (id) ON DELETE SET NULL,
    domain_id        uuid REFERENCES domains (id) ON DELETE SET NULL,
    size             integer NOT NULL,
    raw              bytea NOT NULL,
    status           text NOT NULL DEFAULT 'received'
                     CHECK (status IN ('received', 'processed', 'ignored', 'refused')),
    result           text,          -- what processing found, for the operator
    created_at       timestamptz NOT NULL DEFAULT now(),
    processed_at     timestamptz
);
CREATE INDEX inbound_messages_unprocessed ON inbound_messages (created_at) WHERE status = 'received';
CREATE INDEX inbound_messages_message ON inbound_messages (message_id) WHERE message_id IS NOT NULL;

-- DMARC aggregate reports (RFC 7489 appendix C), one row per report, per domain.
CREATE TABLE dmarc_reports (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    domain_id        uuid NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    inbound_id       uuid REFERENCES inbound_messages (id) ON DELETE SET NULL,
    org_name         text NOT NULL,
    report_id        text NOT NULL,
    begin_at         timestamptz NOT NULL,
    end_at           timestamptz NOT NULL,
    policy_domain    text NOT NULL,
    records          jsonb NOT NULL,  -- [{source_ip, count, disposition, dkim, spf, header_from}]
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, org_name, report_id)
);
CREATE INDEX dmarc_reports_domain ON dmarc_reports (domain_id, begin_at DESC);
