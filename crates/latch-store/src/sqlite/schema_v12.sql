-- Version 12: a revocation of every grant of a client that stays (`sqlite::client_grants`)
-- is recorded as under way, as a removal is (version 11). It runs in chunks, each a write
-- with an audit record of its own; one that a stop cut off (a server waits for it only up to
-- its shutdown timeout) or a crash interrupted left the rest of the client's grants alive,
-- with nothing to say so but a log line. Its row here, written before its first chunk and
-- deleted by its last, lets the next server start finish it. Only the grants created by
-- `issued_by` are its: the time it was asked for, or the latest creation time among the
-- client's live grants then if later (a clock stepped back). Those issued later belong to
-- the client as it is since, however late a start finishes it.
CREATE TABLE client_grant_revocations (
    id        INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    reason    TEXT NOT NULL,   -- its audit records'
    at        INTEGER NOT NULL,
    issued_by INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    route     TEXT NOT NULL,
    subject   TEXT,
    address   TEXT
);
