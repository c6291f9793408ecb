-- latch schema for PostgreSQL, version 1. The same model as the SQLite schema:
-- tokens only as SHA-256 hashes, client secrets only as argon2id PHC strings.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

INSERT INTO tenants (id, created_at)
VALUES ('default', CAST(extract(epoch FROM now()) AS BIGINT))
ON CONFLICT DO NOTHING;

CREATE TABLE clients (
    tenant_id               TEXT NOT NULL REFERENCES tenants (id),
    client_id               TEXT NOT NULL,
    secret_hash             TEXT,
    auth_method             TEXT NOT NULL,
    grant_types             TEXT NOT NULL,
    scope                   TEXT NOT NULL,
    redirect_uris           TEXT NOT NULL,
    access_token_ttl        BIGINT NOT NULL,
    refresh_token_ttl       BIGINT NOT NULL,
    rotation_grace          BIGINT NOT NULL,
    access_token_revocation TEXT NOT NULL,
    created_at              BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, client_id)
);

CREATE TABLE grants (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    client_id           TEXT NOT NULL,
    subject             TEXT NOT NULL,
    scope               TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    revoked_at          BIGINT,
    refresh_generation  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX grants_live_by_subject ON grants (tenant_id, subject) WHERE revoked_at IS NULL;
CREATE INDEX grants_live_by_client ON grants (tenant_id, client_id) WHERE revoked_at IS NULL;
CREATE INDEX grants_by_expiry ON grants (expires_at);

CREATE TABLE tokens (
    hash        BYTEA PRIMARY KEY,
    grant_id    TEXT NOT NULL,
    kind        SMALLINT NOT NULL,      -- 0 access, 1 refresh
    scope       TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    rotated_at  BIGINT,
    grace_used  BOOLEAN NOT NULL DEFAULT FALSE,
    generation  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX tokens_by_grant ON tokens (grant_id);
CREATE INDEX tokens_by_expiry ON tokens (expires_at);
