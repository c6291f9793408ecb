-- Version 3: the audit trail. One row per revocation that killed something, written in the
-- same transaction as the revocation. No token values.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    route       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    grant_id    TEXT,
    subject     TEXT,
    grants      INTEGER NOT NULL,
    tokens      INTEGER NOT NULL,
    address     TEXT
);

CREATE INDEX audit_by_tenant ON audit (tenant_id, id);
CREATE INDEX audit_by_subject ON audit (tenant_id, subject, id);
