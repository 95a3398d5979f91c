-- The HTTP API: idempotent sends, and message fields the API filters on.

CREATE TABLE idempotency_keys (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256   bytea NOT NULL,
    response         jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, key)
);

CREATE INDEX messages_org_label ON messages (organization_id, label) WHERE label IS NOT NULL;
CREATE INDEX messages_org_status_created ON messages (organization_id, status, created_at DESC);
