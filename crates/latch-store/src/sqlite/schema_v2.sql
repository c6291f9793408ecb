-- Version 2: indexes for the expiry clean-up job.
CREATE INDEX tokens_by_expiry ON tokens (expires_at);
CREATE INDEX grants_by_expiry ON grants (expires_at);
