-- A message whose attempt results are recorded, waiting for the retry function's decision.
ALTER TYPE message_status ADD VALUE IF NOT EXISTS 'attempted' AFTER 'sending';
