-- Version 3: identifiers compare byte by byte (the "C" collation), as SQLite's BINARY does.
-- Under a linguistic collation every comparison in these columns' indexes went through the
-- C library's strcoll, the grants' key on every token lookup among them, and the order of
-- those indexes depended on the C library's version. Identifiers are opaque: no locale has
-- anything to say about their order. The tables are not rewritten; their indexes are
-- rebuilt.
ALTER TABLE tenants ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE clients
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN client_id TYPE TEXT COLLATE "C";
ALTER TABLE grants
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN client_id TYPE TEXT COLLATE "C",
    ALTER COLUMN subject TYPE TEXT COLLATE "C";
ALTER TABLE tokens ALTER COLUMN grant_id TYPE TEXT COLLATE "C";
ALTER TABLE audit
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN grant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN subject TYPE TEXT COLLATE "C";
