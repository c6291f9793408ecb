-- Version 14: logging a subject out everywhere runs in chunks when the subject holds more
-- live grants than one chunk (`sqlite::subject_logouts`), as a removal does (version 11).
-- One transaction revoking every grant of a subject with hundreds of thousands of them (a
-- client acting for itself, whose grants are all its subject's) held the database's one
-- write lock for seconds, every other write waiting. A row here records the log-out under
-- way, from before its first chunk until its last, which turns it into the audit record;
-- each chunk adds what died to it. A log-out of a subject already under way takes it over
-- (the earlier one recorded with what its chunks revoked). One that a failure cut off is
-- finished by the next log-out of the subject, or by the next server start. It takes the
-- grants created by `issued_by`: its latest request's time, plus the allowance for clocks
-- (`latch_core::cleanup::EXPIRY_GRACE`); not those created after, however late it is
-- finished.
CREATE TABLE subject_logouts (
    tenant_id TEXT NOT NULL,
    subject   TEXT NOT NULL,
    reason    TEXT NOT NULL,   -- the audit record's
    at        INTEGER NOT NULL,
    issued_by INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    route     TEXT NOT NULL,
    address   TEXT,
    grants    INTEGER NOT NULL DEFAULT 0,
    tokens    INTEGER NOT NULL DEFAULT 0,
    -- How many times it was taken over: a request's handle drives its chunks only while
    -- this is still what it wrote (two requests may say the same in every other field).
    turn      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, subject)
) WITHOUT ROWID;
