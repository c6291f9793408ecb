-- Version 13: the unused refresh tokens of each grant, indexed apart. An exchange of a grant
-- that forked (or of a client with a grace period) retires the grant's other unused refresh
-- token (`sqlite::tokens::retire_siblings`); found through `tokens_by_grant`, that search
-- read every row the grant ever had, each retired refresh token and expired access token
-- kept until it expires, so a chain exchanged in a loop (any holder of a refresh token can)
-- made each exchange slower than the last, on the one writer every write waits for. This
-- index holds a grant's one or two unused refresh tokens only: an exchange adds its new
-- token and removes the old one. Building it reads the tokens table once.
CREATE INDEX tokens_unused_refresh_by_grant ON tokens (grant_id)
    WHERE kind = 1 AND rotated_at IS NULL AND revoked_at IS NULL;
