-- Webhooks: endpoints per project, and a durable outbox of deliveries written in the same
-- statement as the status change they report.

CREATE TABLE webhook_endpoints (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id             uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    url                    text NOT NULL CHECK (length(url) BETWEEN 8 AND 2000),
    events                 text[] NOT NULL,
    enabled                boolean NOT NULL DEFAULT true,
    secret_sealed          bytea NOT NULL,          -- whsec_… sealed with the master key
    previous_secret_sealed bytea,                   -- still valid until previous_valid_until
    previous_valid_until   timestamptz,
    failing_since          timestamptz,             -- first failure of the current failing run
    disabled_reason        text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_project ON webhook_endpoints (project_id) WHERE enabled;

CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- the webhook-id header
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id        uuid,
    event_type        text NOT NULL,
    payload           jsonb NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_status_code  integer,
    last_error        text,
    last_latency_ms   integer,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_id) WHERE status = 'pending';

-- The outbox row of every endpoint of the message's project that wants `event_type`, with
-- the payload as the message is at this moment (never its body). Called inside the statement
-- that changes the status, so the outcome and its webhooks commit together.
CREATE FUNCTION enqueue_webhooks(p_message_id uuid, p_event_type text) RETURNS integer
LANGUAGE sql AS $$
    WITH m AS (
        SELECT m.id, m.project_id, m.message_id_header, m.status::text AS status, m.reason,
               m.attempts, host(m.outbound_ip) AS outbound_ip, m.label, m.metadata
          FROM messages m WHERE m.id = p_message_id
    ), payload AS (
        SELECT jsonb_build_object(
            'type', p_event_type,
            'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'data', jsonb_build_object(
                'message_id', m.id, 'message_id_header', m.message_id_header,
                'project_id', m.project_id, 'status', m.status, 'reason', m.reason,
                'attempts', m.attempts, 'outbound_ip', m.outbound_ip,
                'label', m.label, 'metadata', m.metadata,
                'recipients', COALESCE((
                    SELECT jsonb_agg(jsonb_build_object(
                        'address', r.address, 'status', r.status, 'code', r.last_code,
                        'enhanced_code', r.last_enhanced, 'text', r.last_text) ORDER BY r.id)
                      FROM recipients r WHERE r.message_id = m.id), '[]'::jsonb))) AS body,
               m.project_id, m.id
          FROM m
    ), inserted AS (
        INSERT INTO webhook_deliveries (endpoint_id, message_id, event_type, payload)
        SELECT e.id, payload.id, p_event_type, payload.body
          FROM payload JOIN webhook_endpoints e ON e.project_id = payload.project_id
         WHERE e.enabled AND p_event_type = ANY (e.events)
        RETURNING 1
    )
    SELECT count(*)::integer FROM inserted
$$;
