-- A process waiting for a slot of (egress IP, site) says how many of its slots it holds: a
-- process busy with the same site gives slots back (one a second) while it holds more than
-- that plus one, so the slots end up shared among the processes that wait, not kept by the
-- first to take them.
ALTER TABLE shaping_sites ADD COLUMN IF NOT EXISTS wanted_holding integer;
