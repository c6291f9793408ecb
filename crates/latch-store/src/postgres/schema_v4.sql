-- Version 4: no indexes on expiry times. The clean-up sweeps `tokens` and `grants` in key
-- order instead (`CleanupStore::purge_expired`), so that an issuance writes two index
-- entries fewer (docs/benchmarks.md, round of 2026-12-03 08:29).
DROP INDEX IF EXISTS tokens_by_expiry;
DROP INDEX IF EXISTS grants_by_expiry;
