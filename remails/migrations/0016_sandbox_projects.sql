-- A sandbox project's messages go through the whole pipeline, DKIM signing included, but are
-- never sent to an MX: the sender records them delivered and keeps the signed bytes in `raw`.
ALTER TABLE projects ADD COLUMN IF NOT EXISTS sandbox boolean NOT NULL DEFAULT false;
