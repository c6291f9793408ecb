-- latch schema, version 1.
-- Tokens are stored only as SHA-256 hashes (32-byte BLOB keys); client secrets only as
-- argon2id PHC strings.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO tenants (id, created_at) VALUES ('default', CAST(strftime('%s', 'now') AS INTEGER));

CREATE TABLE clients (
    tenant_id               TEXT NOT NULL REFERENCES tenants (id),
    client_id               TEXT NOT NULL,
    secret_hash             TEXT,
    auth_method             TEXT NOT NULL,
    grant_types             TEXT NOT NULL,   -- space-separated
    scope                   TEXT NOT NULL,   -- space-separated
    redirect_uris           TEXT NOT NULL,   -- space-separated
    access_token_ttl        INTEGER NOT NULL,
    refresh_token_ttl       INTEGER NOT NULL,
    rotation_grace          INTEGER NOT NULL,
    access_token_revocation TEXT NOT NULL,
    created_at              INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, client_id)
) WITHOUT ROWID;

CREATE TABLE grants (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    client_id           TEXT NOT NULL,
    subject             TEXT NOT NULL,
    scope               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    revoked_at          INTEGER,
    refresh_generation  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- "Log out everywhere" and client removal touch only live grants.
CREATE INDEX grants_live_by_subject ON grants (tenant_id, subject) WHERE revoked_at IS NULL;
CREATE INDEX grants_live_by_client ON grants (tenant_id, client_id) WHERE revoked_at IS NULL;

CREATE TABLE tokens (
    hash        BLOB PRIMARY KEY,               -- SHA-256 of the token string
    grant_id    TEXT NOT NULL,
    kind        INTEGER NOT NULL,               -- 0 access, 1 refresh
    scope       TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    rotated_at  INTEGER,
    grace_used  INTEGER NOT NULL DEFAULT 0,
    generation  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE INDEX tokens_by_grant ON tokens (grant_id);
