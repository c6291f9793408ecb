-- Version 2: the audit trail. One row per revocation that killed something, written in the
-- same transaction as the revocation. No token values.
CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    route       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    grant_id    TEXT,
    subject     TEXT,
    grants      BIGINT NOT NULL,
    tokens      BIGINT NOT NULL,
    address     TEXT
);

CREATE INDEX audit_by_tenant ON audit (tenant_id, id);
CREATE INDEX audit_by_subject ON audit (tenant_id, subject, id);
