-- Version 14: logging a subject out everywhere runs in chunks when the subject holds more
-- live grants than one chunk (`sqlite::subject_logouts`), as a removal does (version 11).
-- One transaction revoking every grant of a subject with hundreds of thousands of them (a
-- client acting for itself, whose grants are all its subject's) held the database's one
-- write lock for seconds, every other write waiting. A row here records the log-out under
-- way, from before its first chunk until its last, which turns it into the audit record;
-- each chunk adds what died to it. One a stop cut off or a crash interrupted is finished by
-- the next server start.
CREATE TABLE subject_logouts (
    id        INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    subject   TEXT NOT NULL,
    reason    TEXT NOT NULL,   -- the audit record's
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    route     TEXT NOT NULL,
    address   TEXT,
    grants    INTEGER NOT NULL DEFAULT 0,
    tokens    INTEGER NOT NULL DEFAULT 0
);
