-- DKIM key rotation and Ed25519 keys (RFC 8463). The domains row keeps the RSA key that signs
-- now (its selector is the one domain verification checks); dkim_keys holds every other key:
-- the next one, published but not yet seen in DNS (pending), Ed25519 keys signing beside RSA
-- (active), and the previous ones, still published for a grace period (retiring), then retired
-- with the private key erased.
ALTER TABLE domains ADD COLUMN dkim_key_since timestamptz NOT NULL DEFAULT now();
UPDATE domains SET dkim_key_since = created_at;

CREATE TABLE dkim_keys (
    id              bigserial PRIMARY KEY,
    domain_id       uuid NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    selector        text NOT NULL,
    algorithm       text NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    private_sealed  bytea,
    public_key      text NOT NULL,
    state           text NOT NULL CHECK (state IN ('pending', 'active', 'retiring', 'retired')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    changed_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, selector),
    CHECK ((state = 'retired') = (private_sealed IS NULL))
);
CREATE INDEX dkim_keys_open ON dkim_keys (state, changed_at) WHERE state IN ('pending', 'retiring');
