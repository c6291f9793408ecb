-- Version 11: removing a client or a tenant runs in chunks (`sqlite::removals`). One
-- transaction revoking every grant of a large client held the database's one write lock
-- throughout (13-14 s for 1,000,000 grants), so every other write waited, and those of
-- another process on the file gave up after the busy timeout. Now a row here records the
-- removal under way; chunks of its grants are revoked, each in a transaction of its own,
-- adding what died to this row; the last removes the client's (or the tenant's) rows and
-- turns this one into the audit record. A removal a crash interrupted is finished by the next
-- server start, or by removing the client (the tenant) again.
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
