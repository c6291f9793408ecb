-- Version 5: an access token carries its grant's tenant, client and subject, so that reading
-- it (introspection, revocation) needs no lookup in the 1-row-per-grant `grants` table:
-- measured, that second random primary-key search and heap fetch were about half of a
-- token lookup's time at 1M grants (docs/benchmarks.md, round of 2026-12-03 15:00; SQLite
-- made the same change in its version 6). Its grant's revocation still reaches it, through
-- `grants_revoked`: an index of the revoked grants alone (few, next to all of them), which
-- PostgreSQL keeps up to date on every write that revokes a grant, whatever node makes it.
-- So nodes that do not know this version stay correct: they write access tokens without
-- these columns (read with their grant, as refresh tokens are) and revoke grants as before.
-- The new columns are NULL in existing rows (no table rewrite).
ALTER TABLE tokens
    ADD COLUMN tenant_id TEXT COLLATE "C",
    ADD COLUMN client_id TEXT COLLATE "C",
    ADD COLUMN subject TEXT COLLATE "C";
CREATE INDEX grants_revoked ON grants (id) INCLUDE (revoked_at) WHERE revoked_at IS NOT NULL;
