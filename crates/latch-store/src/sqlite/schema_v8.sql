-- Version 8: a grant records the generation at which a grace use last forked it. A grace use
-- leaves the grant two unused refresh tokens (the one the first exchange returned, and the
-- grace use's); the first of them exchanged retires the other, so the grant never goes on as
-- two chains (RFC 9700 §4.14.2). Whether an exchange looked for the other was decided by the
-- client's grace period as the exchange read it, so a client whose grace period was set to 0
-- after a grace use kept both chains; the grant now says it forked, and every exchange of
-- a grant that did looks.
-- The trigger records the fork whatever code makes the grace use (a grace use is the only
-- update that sets `grace_used` on a token that was already rotated; retiring a sibling
-- sets it on an unrotated one).
ALTER TABLE grants ADD COLUMN forked_generation INTEGER;

CREATE TRIGGER grace_use_forks_its_grant AFTER UPDATE OF grace_used ON tokens
WHEN NEW.grace_used = 1 AND OLD.grace_used = 0 AND OLD.rotated_at IS NOT NULL
BEGIN
    UPDATE grants SET forked_generation = NEW.generation + 1 WHERE id = NEW.grant_id;
END;

-- Forks still open (two unused refresh tokens) among the grants whose grace-used token is
-- still stored: a scan of `tokens` (about 1.5 s at 10M, read from the page cache), then a
-- few searches. A fork whose grace-used token the clean-up already deleted is not found;
-- an exchange for a client with a grace period still looks for the other token whatever the
-- grant records (finding all such forks would sort every unused token by grant: a minute at
-- 10M, before the server could start).
UPDATE grants SET forked_generation = refresh_generation
WHERE id IN (SELECT grant_id FROM tokens WHERE grace_used = 1 AND rotated_at IS NOT NULL)
  AND (SELECT count(*) FROM tokens t
       WHERE t.grant_id = grants.id AND t.kind = 1
         AND t.rotated_at IS NULL AND t.revoked_at IS NULL) > 1;
