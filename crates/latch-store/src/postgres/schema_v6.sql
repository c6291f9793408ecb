-- Version 6: a grant records the generation at which a grace use last forked it. A grace use
-- leaves the grant two unused refresh tokens (the one the first exchange returned, and the
-- grace use's); the first of them exchanged retires the other, so the grant never goes on as
-- two chains (RFC 9700 §4.14.2). Whether an exchange looked for the other was decided by the
-- client's grace period as the exchange read it, so a client whose grace period was set to 0
-- after a grace use kept both chains; the grant now says it forked, and every exchange of a
-- grant that did looks. The trigger records the fork whichever node makes the grace use, one
-- that predates this version included (a grace use is the only update that sets `grace_used`
-- on a token that was already rotated; retiring a sibling sets it on an unrotated one).
--
-- No token is written until the migration commits (a grace use in between would escape both
-- the trigger and the backfill), while reads go on: `grants` is locked against everything
-- only for the few statements after the scan of `tokens`. A node's writes wait for the scan
-- (seconds at 10M tokens); one caught in a deadlock with it is retried, as is the migration.
LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE;

-- Forks still open (two unused refresh tokens) among the grants whose grace-used token is
-- still stored. A fork whose grace-used token the clean-up already deleted is not found; an
-- exchange for a client with a grace period still looks for the other token whatever the
-- grant records (finding all such forks would group every unused token by grant).
CREATE TEMPORARY TABLE latch_open_forks ON COMMIT DROP AS
SELECT DISTINCT f.grant_id FROM tokens f
WHERE f.grace_used AND f.rotated_at IS NOT NULL
  AND (SELECT count(*) FROM tokens t
       WHERE t.grant_id = f.grant_id AND t.kind = 1
         AND t.rotated_at IS NULL AND t.revoked_at IS NULL) > 1;

ALTER TABLE grants ADD COLUMN forked_generation BIGINT;

-- The grants of the schema whose `tokens` fired it, whatever a session's search path.
CREATE FUNCTION latch_record_fork() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('UPDATE %I.grants SET forked_generation = $1 WHERE id = $2', TG_TABLE_SCHEMA)
        USING NEW.generation + 1, NEW.grant_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER grace_use_forks_its_grant AFTER UPDATE OF grace_used ON tokens
FOR EACH ROW WHEN (NEW.grace_used AND NOT OLD.grace_used AND OLD.rotated_at IS NOT NULL)
EXECUTE FUNCTION latch_record_fork();

UPDATE grants g SET forked_generation = g.refresh_generation
FROM latch_open_forks f WHERE g.id = f.grant_id;
