-- Version 10: the audit trail's index by subject is split into blocks of 65,536 records by
-- id (`id >> 16`, `audit_query::AUDIT_BLOCK_BITS`). Keyed by subject alone, each revocation
-- inserted into a random leaf of an index as old as the trail, so on a long trail every
-- commit dirtied leaves scattered over the whole file, which the checkpoints then wrote
-- back at random (docs/benchmarks.md, round of 2026-12-04 19:45: 5M records kept, the
-- revocation rate fell by a third and its corrected p99 reached 0.3 s). Keyed by block
-- first, new records go to the current block's leaves only, a few hundred pages written
-- again and again. A query by subject reads the blocks one after another
-- (`sqlite::revocations::audit_events`). Building the index reads the whole trail once:
-- about 3 s per million records.
DROP INDEX IF EXISTS audit_by_subject;
CREATE INDEX audit_by_subject_in_block ON audit (tenant_id, id >> 16, subject, id);
