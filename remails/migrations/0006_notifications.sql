-- Things an organization must be told about (an endpoint disabled, …), read through the API.
CREATE TABLE notifications (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind             text NOT NULL,
    message          text NOT NULL,
    subject_id       uuid,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_org ON notifications (organization_id, created_at DESC);
