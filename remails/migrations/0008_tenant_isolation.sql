-- Domain ownership is proven, not claimed: several organizations may hold a pending
-- (unverified) claim on one name; at most one row per name is verified, so the first to
-- verify owns it and an unverified claim blocks nobody.
ALTER TABLE domains DROP CONSTRAINT domains_name_key;
CREATE UNIQUE INDEX domains_verified_name ON domains (name) WHERE verified_at IS NOT NULL;
CREATE UNIQUE INDEX domains_organization_name ON domains (organization_id, name);

-- Moderation: every pipeline step moves a message only while its organization may send;
-- otherwise the message is held, remembering the state it resumes from when the block is
-- lifted (NULL: held for quota, resumes at 'validated').
CREATE FUNCTION organization_may_send(p_organization_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT block_status = 'not_blocked' FROM organizations WHERE id = p_organization_id),
                    false)
$$;
ALTER TABLE messages ADD COLUMN resume_status message_status;
