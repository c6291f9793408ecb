-- Version 11: removing a client or a tenant runs in chunks (`sqlite::removals`). One
-- transaction revoking every grant of a large client held the database's one write lock
-- throughout (13-14 s for 1,000,000 grants), so every other write waited, and those of
-- another process on the file gave up after the busy timeout. Now the client's (or the
-- tenant's) rows go first, with a row here recording the removal under way; then chunks of
-- its grants are revoked, each in a transaction of its own, adding what died to this row; the
-- last turns it into the audit record. A removal a crash interrupted is finished when the
-- database is next opened, or by removing the client (the tenant) again.
CREATE TABLE removals (
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,   -- '' for the whole tenant
    reason    TEXT NOT NULL,   -- the audit record's
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    route     TEXT NOT NULL,
    subject   TEXT,
    address   TEXT,
    grants    INTEGER NOT NULL DEFAULT 0,
    tokens    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, client_id)
) WITHOUT ROWID;

-- Neither a tenant id nor a client id is given again while its removal runs: the chunks
-- revoke the grants of that tenant (and client id), and would revoke the new one's as well.
CREATE TRIGGER clients_wait_for_their_removal BEFORE INSERT ON clients
WHEN EXISTS (SELECT 1 FROM removals r
             WHERE r.tenant_id = NEW.tenant_id AND r.client_id IN (NEW.client_id, ''))
BEGIN
    SELECT RAISE(ABORT, 'the client id is still being removed');
END;

CREATE TRIGGER tenants_wait_for_their_removal BEFORE INSERT ON tenants
WHEN EXISTS (SELECT 1 FROM removals r WHERE r.tenant_id = NEW.id AND r.client_id = '')
BEGIN
    SELECT RAISE(ABORT, 'the tenant id is still being removed');
END;
