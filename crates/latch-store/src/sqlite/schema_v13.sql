-- Version 13: the index of a grant's tokens is keyed by kind and rotation time after the
-- grant (`tokens_by_grant_kind`, replacing `tokens_by_grant`), so that the search for its
-- unused refresh tokens reads those alone. An exchange of a grant that forked (or of a
-- client with a grace period) retires the grant's other unused refresh token
-- (`sqlite::tokens::retire_siblings`); through an index of the grant alone, that search read
-- every row the grant ever had, each retired refresh token and expired access token kept
-- until it expires, so a chain exchanged in a loop (any holder of a refresh token can) made
-- each exchange slower than the last, on the one writer every write waits for. A separate
-- index of unused refresh tokens did the same but cost every exchange a page more to write
-- (-16% refreshes/s); this one changes an entry an exchange's own writes already touch.
-- Building it reads the tokens table once.
CREATE INDEX tokens_by_grant_kind ON tokens (grant_id, kind, rotated_at);
DROP INDEX tokens_by_grant;
