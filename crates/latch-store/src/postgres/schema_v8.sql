-- Version 8: the audit trail's index by subject is keyed by blocks of 65,536 records first
-- (`id >> 16`, `audit_query::AUDIT_BLOCK_BITS`), as SQLite's is since its version 10. Keyed
-- by subject alone, each revocation's record went into a random leaf of an index as large as
-- the whole trail (kept for ever by default), which after every checkpoint cost a full-page
-- image in the WAL and, past shared_buffers, a read: with 5M records kept, revocation fell
-- by 10-20%. A query by subject reads the blocks in order from its cursor's
-- (`postgres::reads::audit_events`). Building the index reads the whole trail once and holds
-- off the trail's writes (every revocation) while it runs: 6.4 s for 5M records on the
-- benchmark's VM. The old index is dropped last, so reads wait only for that moment (the
-- drop's exclusive lock is held to the commit, which follows at once). A node that does not
-- know this version keeps working: its queries by subject read the tenant's trail through
-- `audit_by_tenant`, more slowly.
CREATE INDEX audit_by_subject_in_block ON audit (tenant_id, (id >> 16), subject, id);
DROP INDEX IF EXISTS audit_by_subject;
