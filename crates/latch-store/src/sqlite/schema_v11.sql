-- Version 11: a client's removal runs in chunks (`sqlite::clients::delete_client`). One
-- transaction revoking every grant of a large client held the database's one write lock
-- throughout (12.8 s for 1,000,000 grants), so every other write waited, and those of
-- another process on the file gave up after the busy timeout. Now the client's row goes
-- first, with a row here recording the removal under way; then chunks of its grants are
-- revoked, each in a transaction of its own, adding what died to this row; the last turns
-- it into the audit record. A removal a crash interrupted is finished when the database is
-- next opened, or by removing the client again.
CREATE TABLE client_removals (
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    route     TEXT NOT NULL,
    subject   TEXT,
    address   TEXT,
    grants    INTEGER NOT NULL DEFAULT 0,
    tokens    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, client_id)
) WITHOUT ROWID;

-- A client id is not given again while its removal runs: the chunks revoke the grants of
-- (tenant, client id), and would revoke a new client's as well.
CREATE TRIGGER clients_wait_for_their_removal BEFORE INSERT ON clients
WHEN EXISTS (SELECT 1 FROM client_removals r
             WHERE r.tenant_id = NEW.tenant_id AND r.client_id = NEW.client_id)
BEGIN
    SELECT RAISE(ABORT, 'the client id is still being removed');
END;
