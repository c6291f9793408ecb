-- Version 9: the index of a grant's tokens is keyed by kind and rotation time after the
-- grant, as SQLite's version 13 does, so that the search for its unused refresh tokens reads
-- those alone. An exchange of a grant that forked (or of a client with a grace period)
-- retires the grant's other unused refresh token (`committer::rotate_sql`); through an index
-- of the grant alone, that search read every row the grant ever had, each retired refresh
-- token and expired access token kept until it expires, so a chain exchanged in a loop made
-- each exchange slower than the last, on the node's one writer connection. Rebuilding the
-- index (`tokens_by_grant_kind`) reads the tokens table once and holds off its writes
-- meanwhile (every issuance, exchange and token revocation of every node); the old one is
-- dropped last, so reads wait only for that moment (the drop's exclusive lock is held to
-- the commit, which follows at once). Safe for older nodes: their queries by grant read the
-- new index by its first column.
CREATE INDEX tokens_by_grant_kind ON tokens (grant_id, kind, rotated_at);
DROP INDEX tokens_by_grant;
