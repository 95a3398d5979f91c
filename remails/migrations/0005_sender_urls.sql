-- Where each sender node receives its message.routed events (Knative Triggers point there).
ALTER TABLE sender_nodes ADD COLUMN IF NOT EXISTS url text;
