-- Version 9: a client records whether the configuration file declares it. Every start
-- writes the file's clients again, so a secret rotated or a client removed through the
-- admin API or the CLI came back at the next start; such changes to a declared client are
-- now refused, and the file alone makes them. Existing clients read as not declared until
-- the next start declares the file's again.
ALTER TABLE clients ADD COLUMN declared INTEGER NOT NULL DEFAULT 0;
