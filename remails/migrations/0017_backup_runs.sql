-- One row per `remails backup` run, written by the command itself: the metrics
-- (remails_backup_last_success_timestamp_seconds) and the backup alert read it.
CREATE TABLE IF NOT EXISTS backup_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ok           boolean NOT NULL,
    destination  text NOT NULL,      -- directory or s3://bucket/prefix, never credentials
    size_bytes   bigint,
    error        text,               -- one line, never a secret
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS backup_runs_finished ON backup_runs (ok, finished_at DESC);
