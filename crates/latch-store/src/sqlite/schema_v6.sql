-- Version 6: an access token carries its grant's tenant, client and subject, so that reading
-- it (introspection, revocation) needs no lookup in `grants`: measured, that second random
-- B-tree search was about a sixth of an introspection at 1M grants (docs/benchmarks.md,
-- round of 2026-12-03 10:39). A revoked grant therefore also revokes each of its live
-- access tokens that carries these columns, as if alone: a row in `revocation_log` (or,
-- the index of the log full, `revoked_at` in the token's row; `revocations.rs`). Refresh
-- tokens, and access tokens written before this version (the columns NULL), are still read
-- with their grant, which holds the refresh generation and, for those rows, the grant's
-- revocation.
ALTER TABLE tokens ADD COLUMN tenant_id TEXT;
ALTER TABLE tokens ADD COLUMN client_id TEXT;
ALTER TABLE tokens ADD COLUMN subject TEXT;
