-- Version 7: a revoked grant is one row of `revocation_log` (`grant_id` set, `hash` empty),
-- not one row per live access token it holds. Access tokens that carry their grant's owner
-- (version 6) are read without the grant, so they learn of its revocation from this row's
-- mark, looked up by the grant id every token row holds (`sqlite/marks.rs`): one row and one
-- mark per grant however many access tokens it holds, for the same cost per row (measured:
-- docs/benchmarks.md, round of 2026-12-03 13:08). Rows written by version 6 for each such
-- token stay valid token marks.
ALTER TABLE revocation_log ADD COLUMN grant_id TEXT;
