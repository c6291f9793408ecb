-- Version 4: single-token revocations are appended to a log instead of marking the token's
-- row, so that the revocations of one commit share its pages (`sqlite/marks.rs`; measured in
-- docs/benchmarks.md, round of 2026-12-02). Reads honour both a log row and
-- `tokens.revoked_at`, which earlier versions wrote and which a revocation still writes when
-- the in-memory index of the log is full. A new row's `seq` is one past the largest; the
-- clean-up never deletes the newest row, so a `seq` is never reused and a reader that has
-- seen the log up to one never misses a later row.
CREATE TABLE revocation_log (
    seq         INTEGER PRIMARY KEY,
    hash        BLOB NOT NULL,                  -- the revoked token's key in `tokens`
    revoked_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL                -- the token's, for the clean-up
);
