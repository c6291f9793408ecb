-- Version 7: a client records whether the configuration file declares it. Every start
-- writes the file's clients again, so a secret rotated or a client removed through the
-- admin API or the CLI came back at the next start; such changes to a declared client are
-- now refused, and the file alone makes them. Existing clients read as not declared until
-- a node starts and declares its file's again. A node that does not know this version
-- neither reads nor writes the column (a default, no table rewrite).
ALTER TABLE clients ADD COLUMN declared BOOLEAN NOT NULL DEFAULT FALSE;
