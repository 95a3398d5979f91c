-- Per-site delivery shaping, shared by every sender process that uses an egress IP.

-- Connection slots: one row per open SMTP connection from an egress IP to a destination site
-- (busy or idle), held by one connection of one sender node until it closes. The expiry is
-- renewed by the node's heartbeat, so the slots of a crashed process free themselves.
CREATE TABLE IF NOT EXISTS shaping_slots (
    source_ip   inet NOT NULL,
    site        text NOT NULL,
    slot        integer NOT NULL CHECK (slot >= 0),
    node_name   text NOT NULL,
    token       uuid NOT NULL,          -- the holding connection
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (source_ip, site, slot)
);
CREATE INDEX IF NOT EXISTS shaping_slots_node ON shaping_slots (node_name);

-- The rate and suspension state of one (egress IP, site), and the deliveries taken in the
-- current window (processes take them in chunks, not one by one).
CREATE TABLE IF NOT EXISTS shaping_sites (
    source_ip        inet NOT NULL,
    site             text NOT NULL,
    rate_factor      double precision NOT NULL DEFAULT 1.0 CHECK (rate_factor > 0 AND rate_factor <= 1),
    rate_changed_at  timestamptz NOT NULL DEFAULT now(),
    suspended_until  timestamptz,
    throttled        bigint NOT NULL DEFAULT 0,   -- throttling replies seen, in all
    last_throttle    text,                        -- the last one, for operators
    window_start     timestamptz,
    taken            integer NOT NULL DEFAULT 0,
    wanted_until     timestamptz,                 -- a process found every slot held: idle ones go
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_ip, site)
);

-- The attempt log names the destination site and why the attempt waited, if it did.
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS site text;
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS waited text;
