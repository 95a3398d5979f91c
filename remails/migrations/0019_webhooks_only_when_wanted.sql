-- enqueue_webhooks runs inside every status change of the pipeline, for every message, while
-- most projects have no endpoint for most events. As PL/pgSQL its plans are cached per
-- session (a SQL function with a data-modifying CTE is planned again on every call), and it
-- returns before building the payload when no enabled endpoint of the project wants the event.
-- Same outbox rows and count as before.
CREATE OR REPLACE FUNCTION enqueue_webhooks(p_message_id uuid, p_event_type text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM messages m JOIN webhook_endpoints e ON e.project_id = m.project_id
                    WHERE m.id = p_message_id AND e.enabled AND p_event_type = ANY (e.events)) THEN
        RETURN 0;
    END IF;
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
    SELECT count(*)::integer INTO queued FROM inserted;
    RETURN queued;
END
$$;
