-- Version 9: the unused refresh tokens of each grant, indexed apart, as SQLite's version 13
-- does. An exchange of a grant that forked (or of a client with a grace period) retires the
-- grant's other unused refresh token (`committer::rotate_sql`); found through
-- `tokens_by_grant`, that search read every row the grant ever had, each retired refresh
-- token and expired access token kept until it expires, so a chain exchanged in a loop made
-- each exchange slower than the last, on the node's one writer connection. This index holds
-- a grant's one or two unused refresh tokens only. Building it reads the tokens table once
-- and holds off its writes meanwhile (every issuance, exchange and token revocation of every
-- node). A node that does not know this version keeps working: PostgreSQL keeps the index
-- up to date for its writes too.
CREATE INDEX tokens_unused_refresh_by_grant ON tokens (grant_id)
    WHERE kind = 1 AND rotated_at IS NULL AND revoked_at IS NULL;
